"""Episode augmentation of the SSL-ALPNet reference (``sabs_aug``), in torch.

Geometry (same map for image and mask): rotation U(-5, 5) deg about the centre,
translation U(-5, 5) px, shear U(-5, 5) deg with matrix [[1, -sin s], [0, cos s]]
about the centre (``shear_about: centre``; the reference's cv2 matrix shears about
the top-left corner, which adds an x shift of -sin(s) (H - 1) / 2, up to 11 px at
256, to every shear: ``shear_about: corner`` reproduces it), isotropic zoom
U(0.9, 1.2); composed rotate -> translate -> shear -> zoom; then an
elastic field (uniform noise in [-1, 1], Gaussian-blurred with sigma 5, times
alpha 10 px). Intensity: gamma U(0.5, 1.5) on the slice rescaled to [0, 1] by its own
min/max. Pixel quantities are defined for the papers' 256x256 slices and scaled by
``size / 256`` so the demo's smaller slices get the same relative deformation.

The mask is warped bilinearly and foreground is kept where the warped value exceeds
0.5, which is what the reference's one-hot warp + rint + argmax amounts to. All
randomness comes from a seeded ``torch.Generator`` (the reference draws from an
unseeded NumPy state, so its episodes are not reproducible).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

REFERENCE_SIZE = 256


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


@functools.lru_cache(maxsize=8)
def _blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """``[size, size]`` matrix of a 1-D Gaussian blur with kernel size int(4 sigma) | 1
    and reflect padding (the edge sample not repeated, as ``F.pad(mode="reflect")``)."""
    k = int(4 * sigma) | 1
    r = torch.arange(k, dtype=torch.float64) - k // 2
    w = torch.exp(-(r**2) / (2 * sigma**2))
    w = w / w.sum()
    rows = torch.arange(size)[:, None].expand(size, k)
    cols = rows + r.long()[None]
    cols = cols.abs()  # reflect below 0
    cols = torch.where(cols > size - 1, 2 * (size - 1) - cols, cols)  # reflect above size - 1
    m = torch.zeros(size, size, dtype=torch.float64)
    m.index_put_((rows.reshape(-1), cols.reshape(-1)), w.expand(size, k).reshape(-1), accumulate=True)
    return m.float()


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N,1,H,W]`` (square) with kernel size int(4 sigma) | 1
    and reflect padding, as two products with a banded matrix: a single-channel
    ``conv2d`` took ~20x longer on a CPU (1.2 ms for the 2 x 128 x 128 elastic field)."""
    size = x.shape[-1]
    if x.shape[-2] != size or int(4 * sigma) // 2 >= size:
        raise ValueError(f"blur needs a square input wider than the kernel radius, got {tuple(x.shape)}, sigma {sigma}")
    m = _blur_matrix(size, float(sigma)).to(x.dtype)
    return torch.matmul(torch.matmul(m, x), m.t())


SHEAR_CENTRES = ("centre", "corner")


def affine_matrix(rot_deg: float, tx: float, ty: float, shear_deg: float, zoom: float, size: int | None = None,
                  shear_about: str = "centre") -> torch.Tensor:
    """3x3 forward map in centred pixel coordinates (x, y): Z @ S @ T @ R.

    ``shear_about="corner"`` (needs ``size``) moves the shear's fixed point to the
    top-left pixel ``o = -(size - 1) / 2``, where the reference's cv2 matrix has it:
    S(p - o) + o = S p + (o - S o), a translation that the later zoom scales."""
    a, s = math.radians(rot_deg), math.radians(shear_deg)
    R = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0, 0, 1]])
    T = torch.tensor([[1.0, 0, tx], [0, 1, ty], [0, 0, 1]])
    S = torch.tensor([[1.0, -math.sin(s), 0], [0, math.cos(s), 0], [0, 0, 1]])
    Z = torch.tensor([[zoom, 0, 0], [0, zoom, 0], [0, 0, 1.0]])
    m = Z @ S @ T @ R
    if shear_about == "corner":
        if size is None:
            raise ValueError("shear_about='corner' needs the slice size")
        o = -(size - 1) / 2
        m[0, 2] += zoom * math.sin(s) * o
        m[1, 2] += zoom * (1 - math.cos(s)) * o
    elif shear_about != "centre":
        raise ValueError(f"shear_about must be one of {SHEAR_CENTRES}, got {shear_about!r}")
    return m


@functools.lru_cache(maxsize=8)
def _centred_grid(size: int) -> torch.Tensor:
    """``[2,H,W]`` pixel-centre coordinates (x, y) relative to the image centre."""
    r = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    ys, xs = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([xs, ys])


def warp(image: torch.Tensor, mask: torch.Tensor, forward: torch.Tensor, displacement: torch.Tensor | None):
    """Warp ``image``/``mask`` ``[H,W]`` (square) by the forward affine map, after which
    ``displacement [2,H,W]`` (pixels, x then y) is applied: output p samples the input
    at A^-1 (p + d(p))."""
    h, w = image.shape
    assert h == w, "augmentation expects square slices"
    p = _centred_grid(h)
    if displacement is not None:
        p = p + displacement
    inv = torch.linalg.inv(forward)[:2]
    src = torch.einsum("ij,jhw->hwi", inv[:, :2], p) + inv[:, 2]
    grid = (src * (2 / w))[None]  # align_corners=False units
    stack = torch.stack([image, mask.float()])[None]
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0, 0], out[0, 1] > 0.5


def gamma(image: torch.Tensor, g: float) -> torch.Tensor:
    lo, hi = image.min(), image.max()
    span = hi - lo + 1e-5
    return ((image - lo) / span).clamp_min(0) ** g * span + lo


def augment(image: torch.Tensor, mask: torch.Tensor, cfg: dict, gen: torch.Generator):
    """One random view of a slice ``[H,W]`` and its binary mask ``[H,W]``."""
    size = image.shape[-1]
    px = size / REFERENCE_SIZE
    rot = _uniform(gen, -cfg["rotate_deg"], cfg["rotate_deg"])
    tx = _uniform(gen, -cfg["translate_px"], cfg["translate_px"]) * px
    ty = _uniform(gen, -cfg["translate_px"], cfg["translate_px"]) * px
    sh = _uniform(gen, -cfg["shear_deg"], cfg["shear_deg"])
    zm = _uniform(gen, *cfg["zoom"])
    disp = None
    if cfg.get("elastic_alpha", 0) > 0:
        noise = torch.rand((2, 1, size, size), generator=gen) * 2 - 1
        disp = _gaussian_blur(noise, cfg["elastic_sigma"] * px)[:, 0] * cfg["elastic_alpha"] * px
    forward = affine_matrix(rot, tx, ty, sh, zm, size, cfg.get("shear_about", "centre"))
    img, msk = warp(image, mask, forward, disp)
    g = _uniform(gen, *cfg["gamma"])
    return gamma(img, g), msk
