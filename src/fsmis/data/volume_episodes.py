"""Self-supervised supervoxel episodes of the ADNet lineage (``TrainDataset``).

One episode = one 3D supervoxel of a training scan and two neighbouring axial slices
through it: one is the support, the other the query, each with the supervoxel's cross
section as its binary label. ``episode(i)`` (and ``sample()``, the next one) returns what
:class:`fsmis.data.episodes.SuperpixelEpisodes` returns (``sup_img``, ``sup_fg``,
``qry_img``, ``qry_label``) and, as provenance, ``slice``/``query_slice`` ((volume
index, z) of support and query), ``supervoxel`` and ``gamma_on``/``geometry_on``
(``"support"`` or ``"query"``).

Reference (ZJLAB-AMMI/Q-Net ``dataloaders/datasets.py``; identical in RPT, CAT-Net
and GMRD), ``sampling="reference"``:

1. a training scan, uniformly;
2. a supervoxel id, uniformly among the non-zero ids of the whole scan, drawn again
   until at least two of its slices are not excluded (setting 2);
3. its non-excluded slices cut into runs of consecutive slices; runs shorter than two
   dropped; none left: start again at 1 (the reference recurses);
4. a run, uniformly; a start slice z, uniformly among the run's slices but its last:
   the pair (z, z + 1);
5. accepted when the larger of the supervoxel's two cross sections has at least
   ``min_size`` pixels (200), else back to 2 in the same scan;
6. the pair reversed with probability 1/2; the first slice is the support, the second
   the query;
7. gamma on the query, else (probability 1/2) on the support: g ~ U(0.5, 1.5),
   ``r ((x - min + 1e-5) / r)^g + min`` with ``r = max - min + 1e-5`` over the slice
   (:func:`lineage_gamma`; not ``fsmis.data.augment.gamma``, which omits the 1e-5);
8. geometry on the query, else on the support (a second coin): the affine of
   ``image_transforms.RandomAffine`` (rotation U(-5, 5) deg, translation U(-5, 5) px,
   shear U(-5, 5) deg, one isotropic zoom U(0.9, 1.2); rotate -> translate -> shear ->
   zoom; interpolation flag 3 = ``cv2.INTER_AREA``, which ``warpAffine`` runs as
   bilinear) then the elastic field (alpha 10, sigma 5, bilinear) on image and label
   together, the label rounded: ``fsmis.data.augment.warp`` with the same
   ``train.augment`` parameters. The images are the scans z-scored each by its own
   mean and std, CT included (:func:`standardize`).

So, unlike SSL-ALPNet, support and query are different slices through one 3D region,
and each augmentation touches one of the two images only.

ADNet (sha168/ADNet ``dataloading/datasets.py``, the lineage's origin),
``sampling="adnet"``: no exclusion and no runs in the original (excluded slices are
left out here): the pair is two neighbours in the list of the supervoxel's slices,
the start uniform; accepted when the first (lower) slice holds ``min_size`` pixels;
a rejected pair draws a new id in the same scan; steps 6-8 as above.

RPT-fixed, ``sampling="candidates"`` (the default, the fix): every (scan, id, pair of
adjacent non-excluded slices) whose larger cross section has ``min_size`` pixels is
listed once; then a scan uniformly among scans with a candidate, an id uniformly
among its ids with one, a pair uniformly among the id's pairs. No rejection loop.

Deliberate differences from every reference:
- runs are cut from the sorted slice list; the reference builds them from
  ``list(set(...))``, whose order follows the hash table (indices beyond the table
  size come first), which can split one run into two;
- ``reference``/``adnet``: a scan on which the reference loops forever (no id with two
  usable slices, or no pair that passes the size test and, for ``reference``, no id
  whose slices form no run, which would move it to another scan) is left out;
  ValueError when no scan is left;
- ``min_size`` is in pixels of a 256 x 256 slice, scaled by the slice's area (as
  ``fsmis.data.augment`` scales its pixel quantities);
- ``shear_about="centre"`` shears about the slice centre, as ``fsmis.data.augment``
  does; the reference's shear matrix acts in cv2 pixel coordinates, about the
  top-left corner, which adds a translation of ``-sin(s) (H - 1) / 2`` px in x (up to
  11 px at 256) to every shear: ``shear_about="corner"`` reproduces it. (SSL-ALPNet's
  ``RandomAffine`` is the same code, so this applies to its augmentation too.)
- the rotation and zoom centre is the slice centre ((H - 1) / 2), cv2's is H / 2;
  cv2's angle turns the other way (the range is symmetric, so the law is the same);
- affine and elastic field in one resampling; the reference resamples twice (cv2 with
  a zero border, then ``map_coordinates`` with reflection), which differs at the
  border and by one extra bilinear smoothing;
- every draw of episode ``i`` (the one step ``i + 1`` trains on) comes from a
  ``torch.Generator`` of its own, derived from ``(seed, i)``
  (:func:`fsmis.data.episodes.episode_generator`): the same seed gives the same
  episodes whichever process produces them and in any order
  (``fsmis.data.prefetch``), and a resumed run needs only its step (the reference
  seeds Python's ``random`` but not NumPy's, and draws each elastic field from a
  fresh unseeded ``RandomState``, so its augmentations differ between runs). The
  sampling law is the one above; only the source of randomness moved from one
  sequential generator to per-episode streams, which changed every drawn episode,
  and so the demo's numbers, once.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fsmis.data.augment import REFERENCE_SIZE, SHEAR_CENTRES, _gaussian_blur, affine_matrix, warp
from fsmis.data.episodes import episode_generator, tile3

SAMPLINGS = ("candidates", "reference", "adnet")
_MAX_DRAWS = 1_000_000  # rejection draws before a sampler gives up (never reached on real scans)


def standardize(volume) -> np.ndarray:
    """The lineage's normalisation: the scan z-scored by its own mean and std (float32)."""
    volume = np.asarray(volume, dtype=np.float32)
    std = float(volume.std())
    if not math.isfinite(std) or std < np.finfo(np.float32).eps:
        raise ValueError("cannot standardise a constant or non-finite volume")
    return (volume - float(volume.mean())) / std


def lineage_gamma(image: torch.Tensor, g: float) -> torch.Tensor:
    """``gamma_tansform`` of the reference: ``r ((x - min + 1e-5) / r)^g + min``."""
    lo = image.min()
    r = image.max() - lo + 1e-5
    return r * ((image - lo + 1e-5) / r) ** g + lo


def lineage_affine(rot: float, tx: float, ty: float, shear: float, zoom: float, size: int,
                   shear_about: str = "centre") -> torch.Tensor:
    """Forward 3x3 map in centred pixel coordinates: ``augment.affine_matrix``, whose
    ``shear_about="corner"`` puts the shear's fixed point at the top-left pixel, as the
    reference's cv2 matrix does."""
    return affine_matrix(rot, tx, ty, shear, zoom, size, shear_about)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def draw_geometry(cfg: dict, gen: torch.Generator, size: int) -> dict:
    """Random parameters of one ``geom_transform`` for a ``size`` x ``size`` slice
    (pixel quantities scaled by ``size / 256``): ``rot``, ``tx``, ``ty``, ``shear``,
    ``zoom`` and the elastic displacement ``disp [2,H,W]`` in pixels (or None)."""
    px = size / REFERENCE_SIZE
    p = {"rot": _uniform(gen, -cfg["rotate_deg"], cfg["rotate_deg"]),
         "tx": _uniform(gen, -cfg["translate_px"], cfg["translate_px"]) * px,
         "ty": _uniform(gen, -cfg["translate_px"], cfg["translate_px"]) * px,
         "shear": _uniform(gen, -cfg["shear_deg"], cfg["shear_deg"]),
         "zoom": _uniform(gen, *cfg["zoom"]),  # one factor: RandomAffine(..., zoom_keep_aspect=True)
         "disp": None}
    if cfg.get("elastic_alpha", 0) > 0:
        noise = torch.rand((2, 1, size, size), generator=gen) * 2 - 1
        p["disp"] = _gaussian_blur(noise, cfg["elastic_sigma"] * px)[:, 0] * cfg["elastic_alpha"] * px
    return p


def geometry(image: torch.Tensor, mask: torch.Tensor, cfg: dict, gen: torch.Generator, shear_about: str = "centre"):
    """The reference's ``geom_transform`` on one slice ``[H,W]`` and its mask: random
    affine, then the elastic field, in one resampling (``augment.warp``)."""
    size = image.shape[-1]
    p = draw_geometry(cfg, gen, size)
    m = lineage_affine(p["rot"], p["tx"], p["ty"], p["shear"], p["zoom"], size, shear_about)
    return warp(image, mask, m, p["disp"])


def _slice_counts(volume: np.ndarray):
    """``(ids, z, pixels)`` of every non-zero id on every slice, ids ascending, then z."""
    flat = volume.reshape(volume.shape[0], -1)
    if flat.size and flat.min() < 0:
        raise ValueError("supervoxel ids must be non-negative")
    small = flat.size == 0 or int(flat.max()) <= 1 << 20
    ids, zs, ns = [], [], []
    for z, row in enumerate(flat):
        if small:
            c = np.bincount(row.astype(np.intp, copy=False))
            k = np.flatnonzero(c)
            n = c[k]
        else:
            k, n = np.unique(row, return_counts=True)
        keep = k > 0
        ids.append(k[keep])
        zs.append(np.full(int(keep.sum()), z))
        ns.append(n[keep])
    ids, zs, ns = (np.concatenate(a) if a else np.zeros(0, np.int64) for a in (ids, zs, ns))
    order = np.argsort(ids, kind="stable")  # z stays ascending within an id
    return ids[order], zs[order], ns[order]


def _candidate_pairs(z, n, min_px):
    """RPT-fixed: the first slices of the adjacent pairs that pass (None if none)."""
    adj = np.flatnonzero(np.diff(z) == 1)
    first = z[adj[np.maximum(n[adj], n[adj + 1]) >= min_px]]
    return (first if len(first) else None), first, first + 1


def _runs(z, n, min_px):
    """Q-Net: runs of consecutive slices as ``[(start slices, passes), ...]`` (empty
    when no two slices are adjacent: the reference then moves to another scan)."""
    adj = np.flatnonzero(np.diff(z) == 1)
    ok = np.maximum(n[adj], n[adj + 1]) >= min_px
    cuts = np.flatnonzero(np.diff(adj) != 1) + 1
    runs = [(z[r], ok[i]) for r, i in zip(np.split(adj, cuts), np.split(np.arange(len(adj)), cuts))] if len(adj) else []
    return runs, z[adj[ok]], z[adj[ok]] + 1


def _neighbours(z, n, min_px):
    """ADNet: neighbours in the slice list; the first slice's size decides."""
    ok = n[:-1] >= min_px
    return (z[:-1], z[1:], ok), z[:-1][ok], z[1:][ok]


class SupervoxelEpisodes:
    def __init__(self, images, supervoxels, augment_cfg: dict, seed: int, excluded=None,
                 sampling: str = "candidates", min_size: float = 200, shear_about: str = "centre"):
        """``images``: list of ``(z,y,x)`` normalised scans (:func:`standardize`);
        ``supervoxels``: matching int maps, 0 = no supervoxel; ``excluded``: set of
        ``(volume index, z)`` never used as support or query; ``min_size``: pixels of
        a 256 x 256 slice."""
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if shear_about not in SHEAR_CENTRES:
            raise ValueError(f"shear_about must be one of {SHEAR_CENTRES}, got {shear_about!r}")
        excluded = excluded or set()
        self.images = [torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32) for v in images]
        self.supervoxels = [np.asarray(s) for s in supervoxels]
        if len(self.images) != len(self.supervoxels):
            raise ValueError(f"{len(self.images)} images but {len(self.supervoxels)} supervoxel maps")
        for i, (img, sv) in enumerate(zip(self.images, self.supervoxels)):
            if tuple(img.shape) != sv.shape:
                raise ValueError(f"volume {i}: image {tuple(img.shape)} and supervoxels {sv.shape} differ")
        self.sampling, self.cfg, self.shear_about = sampling, augment_cfg, shear_about
        self.seed = int(seed)
        self.position = 0  # the next episode sample() returns
        self.pools = []  # per usable scan: see _pool
        windows: set[tuple[int, int]] = set()  # (volume, z) of every slice an accepted pair can use
        for vi, sv in enumerate(self.supervoxels):
            area = sv.shape[1] * sv.shape[2]
            pool = self._pool(vi, sv, {z for v, z in excluded if v == vi}, min_size * area / REFERENCE_SIZE**2)
            if pool is not None:
                self.pools.append(pool)
                windows |= pool[3]
        if not windows:  # no scan has an accepted pair: every sampler would loop forever
            raise ValueError(f"no training scan has a supervoxel pair that passes min_size={min_size} "
                             f"with sampling={sampling!r} (all excluded, empty or too small)")
        self.n_slices = len(windows)

    def _pool(self, vi, sv, excluded_z, min_px):
        """``(volume index, ids to draw from, {id: table}, slices of accepted pairs)``,
        or None for a scan the sampler cannot use."""
        ids, zs, ns = _slice_counts(sv)
        all_ids = np.unique(ids)  # the reference draws from every id of the scan
        keep = ~np.isin(zs, sorted(excluded_z))
        ids, zs, ns = ids[keep], zs[keep], ns[keep]
        bounds = np.flatnonzero(np.diff(ids)) + 1
        build = {"candidates": _candidate_pairs, "reference": _runs, "adnet": _neighbours}[self.sampling]
        table, used = {}, set()
        for k, z, n in zip(np.split(ids, bounds), np.split(zs, bounds), np.split(ns, bounds)):
            if len(z) < 2:
                continue  # the reference draws another id
            entry, first, second = build(z, n, min_px)
            if entry is not None:
                table[int(k[0])] = entry
            used |= {(vi, int(a)) for a in first} | {(vi, int(b)) for b in second}
        if self.sampling == "candidates":
            return (vi, np.array(sorted(table), dtype=np.int64), table, used) if table else None
        escape = self.sampling == "reference" and any(not runs for runs in table.values())
        if not used and not escape:
            return None  # the reference would loop forever on this scan
        return vi, all_ids, table, used

    def __len__(self) -> int:
        """Distinct training slices an episode can use."""
        return self.n_slices

    def _draw(self, gen: torch.Generator) -> tuple[int, int, int, int]:
        """(volume, id, first slice, second slice) of an accepted pair, drawn from ``gen``."""

        def randint(n: int) -> int:
            return int(torch.randint(n, (), generator=gen))

        if self.sampling == "candidates":
            vi, ids, table, _ = self.pools[randint(len(self.pools))]
            k = int(ids[randint(len(ids))])
            z = int(table[k][randint(len(table[k]))])
            return vi, k, z, z + 1
        draws = 0
        while True:  # a new scan: the reference's recursion
            vi, ids, table, _ = self.pools[randint(len(self.pools))]
            while True:
                draws += 1
                if draws > _MAX_DRAWS:
                    raise RuntimeError(f"no accepted supervoxel pair in {_MAX_DRAWS} draws")
                k = int(ids[randint(len(ids))])
                if k not in table:
                    continue  # fewer than two usable slices: draw another id
                if self.sampling == "adnet":
                    first, second, ok = table[k]
                    i = randint(len(first))
                    if ok[i]:
                        return vi, k, int(first[i]), int(second[i])
                    continue
                if not table[k]:
                    break  # no run of two slices: another scan
                starts, ok = table[k][randint(len(table[k]))]
                i = randint(len(starts))
                if ok[i]:
                    return vi, k, int(starts[i]), int(starts[i]) + 1

    def sample(self) -> dict:
        """The next episode: :meth:`episode` of 0, 1, 2, ... in turn."""
        self.position += 1
        return self.episode(self.position - 1)

    def episode(self, index: int) -> dict:
        """Episode ``index`` (>= 0) of this seed: the same whoever asks and when."""
        gen = episode_generator(self.seed, index)

        def coin() -> bool:
            return float(torch.rand((), generator=gen)) > 0.5  # np.random.random(1) > 0.5

        vi, k, z0, z1 = self._draw(gen)
        zs, zq = (z1, z0) if coin() else (z0, z1)
        image, sv = self.images[vi], self.supervoxels[vi]
        s_img, q_img = image[zs], image[zq]
        s_fg, q_fg = torch.from_numpy(sv[zs] == k), torch.from_numpy(sv[zq] == k)
        gamma_on = "query" if coin() else "support"
        g = _uniform(gen, *self.cfg["gamma"])
        if gamma_on == "query":
            q_img = lineage_gamma(q_img, g)
        else:
            s_img = lineage_gamma(s_img, g)
        geometry_on = "query" if coin() else "support"
        if geometry_on == "query":
            q_img, q_fg = geometry(q_img, q_fg, self.cfg, gen, self.shear_about)
        else:
            s_img, s_fg = geometry(s_img, s_fg, self.cfg, gen, self.shear_about)
        return {
            "sup_img": tile3(s_img),
            "sup_fg": s_fg[None].float(),
            "qry_img": tile3(q_img),
            "qry_label": q_fg[None].long(),
            "slice": (vi, zs),
            "query_slice": (vi, zq),
            "supervoxel": k,
            "gamma_on": gamma_on,
            "geometry_on": geometry_on,
        }
