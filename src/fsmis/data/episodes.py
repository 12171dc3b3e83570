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
- all randomness comes from one seeded generator, so the same seed gives the same
  episodes.
"""

from __future__ import annotations

import numpy as np
import torch

from fsmis.data.augment import augment


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
        self.gen = torch.Generator().manual_seed(int(seed))
        self._order: list[int] = []

    def __len__(self) -> int:
        return len(self.slices)

    def _next_slice(self) -> int:
        # epochs of shuffled slice indices, as a DataLoader with shuffle=True
        if not self._order:
            self._order = torch.randperm(len(self.slices), generator=self.gen).tolist()
        return self._order.pop()

    def sample(self) -> dict:
        i = self._next_slice()
        vi, z = self.slices[i]
        hi = self.n_ids[i] - 1 if self.sampling == "reference" else self.n_ids[i]
        k = int(torch.randint(1, hi + 1, (), generator=self.gen))
        image = self.images[vi][z]
        label = torch.from_numpy(self.superpixels[vi][z] == k)
        s_img, s_fg = augment(image, label, self.cfg, self.gen)
        q_img, q_fg = augment(image, label, self.cfg, self.gen)
        return {
            "sup_img": tile3(s_img),
            "sup_fg": s_fg[None].float(),
            "qry_img": tile3(q_img),
            "qry_label": q_fg[None].long(),
            "slice": (vi, z),
            "superpixel": k,
        }
