"""Self-supervised superpixel episodes (SSL-ALPNet ``SuperpixelDataset``).

One episode = one axial training slice, one of its superpixels as a binary
pseudo-label, and two independent augmentations of (slice, pseudo-label): the first
is the support, the second the query.

Differences from the reference, each deliberate:
- slices excluded by setting 2/2all are removed from the pool up front; the
  reference re-draws a random slice when it hits one, which gives the same uniform
  distribution over the remaining slices;
- ``sampling="uniform"`` draws a superpixel id uniformly from 1..K of the slice;
  ``sampling="reference"`` reproduces the reference's exclusive upper bound
  (1..K-1, the last superpixel is never chosen);
- episode ``i`` (the one step ``i + 1`` trains on) is a function of ``(seed, i)``
  alone (:meth:`SuperpixelEpisodes.episode`): its superpixel and augmentations come
  from a random stream of its own (:func:`episode_generator`), the slice from the
  shuffled order of its epoch (``i // len(self)``), itself drawn from a stream of
  ``(seed, epoch)``. So the same seed gives the same episodes whichever process
  produces them, in any order (``fsmis.data.prefetch``), and a resumed run needs
  only its step. The sampling law is unchanged (epochs of shuffled slices, then a
  superpixel, then two augmentations); only the source of randomness moved from one
  sequential generator to these streams, which changed every drawn episode, and so
  the demo's numbers, once.
"""

from __future__ import annotations

import numpy as np
import torch

from fsmis.data.augment import augment

# what a stream is for: episodes and epoch orders never share a stream
EPISODE_STREAM, ORDER_STREAM = 1, 2


def _stream_base(seed: int, purpose: int) -> int:
    """A 32-bit offset hashed from ``(seed, purpose)`` (negative seeds allowed)."""
    return int(np.random.SeedSequence([int(seed) % 2**64, purpose]).generate_state(1, np.uint32)[0])


def episode_generator(seed: int, index: int, purpose: int = EPISODE_STREAM) -> torch.Generator:
    """The ``torch.Generator`` of stream ``index`` of ``(seed, purpose)``.

    torch seeds its CPU generator from the low 32 bits of the seed only, so hashing
    ``(seed, purpose, index)`` to one seed would give two of a 100k-step run's
    episodes the same stream about once per run. Instead the index is added to a
    hashed offset: within one run the streams of the first 2**32 indices are all
    distinct, and two runs (other seed or fold) share streams only where their
    hashed offsets fall within a run's length of each other."""
    if index < 0:
        raise ValueError(f"episode index must be >= 0, got {index}")
    return torch.Generator().manual_seed((_stream_base(seed, purpose) + int(index)) % 2**32)


def tile3(image: torch.Tensor) -> torch.Tensor:
    """``[H,W]`` -> ``[1,3,H,W]``: the grey slice repeated on 3 channels (reference ``tile_z_dim``)."""
    return image[None, None].expand(1, 3, *image.shape).contiguous()


class SuperpixelEpisodes:
    def __init__(self, images, superpixels, augment_cfg: dict, seed: int,
                 excluded=None, sampling: str = "uniform"):
        """``images``/``superpixels``: lists of ``(z,y,x)`` arrays (normalised images,
        int superpixel maps). ``excluded``: set of ``(volume index, z)`` to leave out."""
        if sampling not in ("uniform", "reference"):
            raise ValueError(f"sampling must be 'uniform' or 'reference', got {sampling!r}")
        excluded = excluded or set()
        self.images = [torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32) for v in images]
        self.superpixels = [np.asarray(s) for s in superpixels]
        self.sampling = sampling
        self.cfg = augment_cfg
        min_ids = 2 if sampling == "reference" else 1
        self.slices = []
        self.n_ids = []
        for vi, sp in enumerate(self.superpixels):
            maxima = sp.reshape(sp.shape[0], -1).max(axis=1)
            for z, k in enumerate(maxima):
                if k >= min_ids and (vi, z) not in excluded:
                    self.slices.append((vi, z))
                    self.n_ids.append(int(k))
        if not self.slices:
            raise ValueError("no training slice with superpixels left (all excluded or empty)")
        self.seed = int(seed)
        self.position = 0  # the next episode sample() returns
        self._epoch: tuple[int, list[int]] = (-1, [])  # the last epoch order drawn (a cache)

    def __len__(self) -> int:
        return len(self.slices)

    def _slice_of(self, index: int) -> int:
        # epochs of shuffled slice indices, as a DataLoader with shuffle=True
        epoch, pos = divmod(index, len(self.slices))
        if self._epoch[0] != epoch:
            gen = episode_generator(self.seed, epoch, ORDER_STREAM)
            self._epoch = (epoch, torch.randperm(len(self.slices), generator=gen).tolist())
        return self._epoch[1][pos]

    def sample(self) -> dict:
        """The next episode: :meth:`episode` of 0, 1, 2, ... in turn."""
        self.position += 1
        return self.episode(self.position - 1)

    def episode(self, index: int) -> dict:
        """Episode ``index`` (>= 0) of this seed: the same whoever asks and when."""
        gen = episode_generator(self.seed, index)
        i = self._slice_of(index)
        vi, z = self.slices[i]
        hi = self.n_ids[i] - 1 if self.sampling == "reference" else self.n_ids[i]
        k = int(torch.randint(1, hi + 1, (), generator=gen))
        image = self.images[vi][z]
        label = torch.from_numpy(self.superpixels[vi][z] == k)
        s_img, s_fg = augment(image, label, self.cfg, gen)
        q_img, q_fg = augment(image, label, self.cfg, gen)
        return {
            "sup_img": tile3(s_img),
            "sup_fg": s_fg[None].float(),
            "qry_img": tile3(q_img),
            "qry_label": q_fg[None].long(),
            "slice": (vi, z),
            "superpixel": k,
        }
