"""The rest of DSPNet's detail self-refining (DSR) block, beside RAN
(``fsmis.models.resemblance``):

- foreground seed placement (:func:`strided_mask`, :func:`cluster_count`,
  :func:`place_seeds`), the feature + position soft clustering
  (:func:`cluster_centres`) and FSPA's fusion of the cluster prototypes as the code
  (:func:`fspa_code`) and the paper (:func:`fspa_paper`) compute it;
- the channel-structural attention of BCMA (:class:`ChannelAttention`), whose
  learnable channel weights live in a ``[C, C]`` parameter built once.

``fsmis.models.dspnet`` documents what the paper and the public code compute and where
they differ. Shapes: feature maps ``[B, C, h, w]`` or flattened ``[B, C, n]``.
"""

from __future__ import annotations

import torch
from torch import nn

from fsmis.models.prototypes import MAP_EPS
from fsmis.models.prototypes import safe_normalize as normalize

# --------------------------------------------------------------------------------------
# FSPA: seeds and clustering
# --------------------------------------------------------------------------------------


def cluster_count(area: int, avg_area: float, max_clusters: int) -> int:
    """Number of foreground clusters: ``min(round(area / avg_area), max_clusters)``
    with half-to-even rounding, as numpy's ``round`` in the reference."""
    return int(min(round(area / avg_area), max_clusters))


def strided_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """One image-resolution mask (``[H, W]`` with any leading 1s) sampled on an
    ``h x w`` grid by nearest neighbour: cell ``(i, j)`` takes pixel
    ``(floor(i H / h), floor(j W / w))``, integer arithmetic. When ``H = s h`` that is
    ``mask[::s, ::s]``: the reference's ``cv2.resize(..., INTER_NEAREST)`` of the image
    mask to the feature grid (its ``down_stride`` 8 is its trunk's output stride).
    Returns ``[h, w]`` in the mask's dtype."""
    full_h, full_w = mask.shape[-2:]
    plane = mask.reshape(full_h, full_w)
    h, w = int(size[0]), int(size[1])
    rows = torch.arange(h, device=mask.device) * full_h // h
    cols = torch.arange(w, device=mask.device) * full_w // w
    return plane[rows[:, None], cols[None, :]]


def place_seeds(mask: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` cluster seeds in a binary ``[h, w]`` mask -> ``[n, 2]`` (row, column).

    The reference's placement (ASGNet's): within the mask's bounding box, take the
    cell farthest from any background cell of the box (exact Euclidean distance
    transform; the first maximum in row-major order), make it background, repeat.
    Cells outside the box do not count as background. A box without background is
    measured from a virtual cell just above its top-left corner, which is what
    ``scipy.ndimage.distance_transform_edt`` (the reference's transform) returns
    there. The reference's Gaussian smoothing (sigma 0.1) has a zero-radius kernel
    and is omitted.
    """
    mask = mask.bool()
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if n <= 0 or rows.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=mask.device)
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    roi = mask[r0:r1 + 1, c0:c1 + 1]
    hh, ww = roi.shape
    rr, cc = torch.meshgrid(torch.arange(hh, device=mask.device), torch.arange(ww, device=mask.device), indexing="ij")
    coords = torch.stack([rr.flatten(), cc.flatten()], 1)
    bg = coords[~roi.flatten()]
    if bg.shape[0]:  # exact squared distances in integers, in chunks of background cells
        d2 = torch.stack([((coords[:, None, :] - part[None]) ** 2).sum(-1).min(1).values
                          for part in bg.split(256)]).min(0).values
    else:
        d2 = (coords[:, 0] + 1) ** 2 + coords[:, 1] ** 2
    seeds = []
    for i in range(n):
        k = int(torch.argmax(d2))
        seeds.append(coords[k])
        to_seed = ((coords - coords[k]) ** 2).sum(-1)
        d2 = to_seed if (i == 0 and bg.shape[0] == 0) else torch.minimum(d2, to_seed)
    return torch.stack(seeds) + torch.tensor([r0, c0], device=mask.device)


def cluster_centres(feats: torch.Tensor, pos: torch.Tensor, init: torch.Tensor, iters: int,
                    feat_scale: float, pos_scale: float, grad: bool = False) -> torch.Tensor:
    """Feature + position soft clustering of region pixels (ASGNet's ``sp_center_iter``
    as DSPNet uses it).

    ``feats [B, C, n]`` (the region's pixels), ``pos [n, 2]`` (their row, column),
    ``init [B, C+2, k]`` (seed features and coordinates). Each iteration computes
    ``d = sqrt(|f - c_f|^2 / feat_scale + |xy - c_xy|^2 / pos_scale)``, associations
    ``exp(-d)`` normalised over the pixels (per centre), and moves every centre to
    the association-weighted mean. The iterations run without gradient (as the
    reference); with ``grad`` the last update is repeated with the final
    associations held fixed, so the centres are differentiable in the features.
    Returns the feature part ``[B, C, k]``.
    """
    c = feats.shape[1]
    xy = pos.to(feats.dtype).t().expand(feats.shape[0], 2, -1)
    x = torch.cat([feats, xy], 1)
    centres = init
    assoc = None
    with torch.no_grad():
        xd = x.detach()
        weight = torch.full((c + 2, 1), 1.0 / feat_scale, dtype=x.dtype, device=x.device)
        weight[c:] = 1.0 / pos_scale
        xwt = (xd * weight).transpose(1, 2)  # [B, n, C+2]
        xw2 = (xwt * xd.transpose(1, 2)).sum(-1, keepdim=True)  # [B, n, 1]
        for _ in range(iters):
            # weighted |x - c|^2 expanded as |x|^2 + |c|^2 - 2 x.c
            cw2 = torch.matmul(weight.t(), centres * centres)  # [B, 1, k]
            d2 = torch.baddbmm(xw2 + cw2, xwt, centres, alpha=-2.0)  # [B, n, k]
            assoc = torch.softmax(d2.clamp_min_(0.0).sqrt_().neg_(), dim=1)  # exp(-d) / sum over pixels
            centres = torch.matmul(xd, assoc)
    if grad and assoc is not None:
        centres = torch.matmul(x, assoc)
    return centres[:, :c]


def fspa_code(logits: torch.Tensor, mask: torch.Tensor, protos: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """FSPA fusion as the code computes it, without its residual:
    ``MAP(P softmax_positions(logits))``.

    ``logits [B, n, k]``: raw dot products of the (RAN-refined) support feature at all
    ``n`` positions with the ``k`` prototypes; ``mask [1|B, n]`` the support
    foreground; ``protos [1|B, k, C]``. The softmax runs over the positions, so each
    prototype contributes its attention mass inside the mask: ``[B, C]``.
    """
    att = torch.softmax(temperature * logits, dim=1)
    weights = (att * mask[..., None]).sum(1)  # [B, k]
    return torch.matmul(weights[:, None], protos)[:, 0] / (mask.sum(-1, keepdim=True) + MAP_EPS)


def fspa_paper(feats: torch.Tensor, mask: torch.Tensor, centres: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """FSPA fusion as published (Fig. 4): ``MAP(P_c softmax_clusters(cos(F, P_c)))``.

    ``feats [B, C, n]``: the (RAN-refined) support feature at the foreground positions,
    ``mask [1|B, n]`` their mask values, ``centres [B, C, k]`` the cluster prototypes.
    Every position takes a convex combination of the centres: ``[B, C]``.
    """
    sim = torch.matmul(normalize(feats, 1).transpose(1, 2), normalize(centres, 1))  # [B, n, k]
    phi = torch.softmax(temperature * sim, dim=-1)
    weights = (phi * mask[..., None]).sum(1)  # [B, k]
    return torch.matmul(centres, weights[..., None])[..., 0] / (mask.sum(-1, keepdim=True) + MAP_EPS)


# --------------------------------------------------------------------------------------
# BCMA: channel-structural multi-head attention
# --------------------------------------------------------------------------------------


def banded(channels: int, taps) -> torch.Tensor:
    """``[C, C]`` matrix with ``taps`` (odd length ``2r+1``) on the diagonals ``-r..r``;
    the first and last ``r`` rows are identity rows (the reference's rows 0 and C-1)."""
    taps = [float(t) for t in taps]
    if len(taps) % 2 != 1:
        raise ValueError(f"bcma_taps needs an odd number of taps, got {len(taps)}")
    r = len(taps) // 2
    idx = torch.arange(channels)
    offset = idx[None, :] - idx[:, None]
    out = torch.zeros(channels, channels)
    for o, t in zip(range(-r, r + 1), taps):
        out[offset == o] = t
    edge = (idx < r) | (idx >= channels - r)
    out[edge] = torch.eye(channels)[edge]
    return out


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


class ChannelAttention(nn.Module):
    """BCMA's channel-structural multi-head attention on a set of prototypes.

    ``protos [B, C, N]`` (``N`` prototypes) -> refined ``[B, C, N]``. Head ``j``
    produces channel ``j`` of every prototype::

        S   = softmax_k(temperature * sim(Q_j, Q_k))      # Q_j: channel j across the N prototypes
        A   = 1 + alpha * (band ⊙ S)                       # sparse neighbour regularisation
        out = (A ⊙ cal) @ Q                                # cal: learnable channel weights

    ``sim`` is the dot product (code) or the cosine (paper). ``band`` is the 0/1
    neighbour mask (tridiagonal for three taps); ``cal`` is a ``[C, C]`` parameter
    initialised to the banded ``taps`` (identity rows at the edges). Its gradient is
    multiplied by ``lr_scale`` (the reference trains it at 1e-4 x the learning rate).
    With ``restore=False`` a loaded state dict leaves ``cal`` at its initial value,
    as the reference (which builds this module after loading its checkpoint) does.
    """

    def __init__(self, channels: int, taps=(0.3, 0.8, 0.3), lr_scale: float = 1e-4, restore: bool = True):
        super().__init__()
        self.taps = tuple(float(t) for t in taps)
        self.lr_scale = float(lr_scale)
        self.restore = bool(restore)
        self.cal = nn.Parameter(banded(channels, self.taps))
        self.register_buffer("band", banded(channels, [1.0] * len(self.taps)), persistent=False)

    def weights(self) -> torch.Tensor:
        return self.cal if self.lr_scale == 1.0 else _ScaleGrad.apply(self.cal, self.lr_scale)

    def forward(self, protos: torch.Tensor, alpha: float, similarity: str = "dot", temperature: float = 1.0):
        q = protos
        if similarity == "cosine":
            qn = normalize(q, -1)
            gram = torch.matmul(qn, qn.transpose(-1, -2))
        elif similarity == "dot":
            gram = torch.matmul(q, q.transpose(-1, -2))
        else:
            raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
        s = torch.softmax(temperature * gram, dim=-1)
        a = 1.0 + alpha * (self.band * s)
        return torch.matmul(a * self.weights(), q)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "cal"
        if not self.restore and key in state_dict:
            state_dict = dict(state_dict)
            state_dict[key] = banded(self.cal.shape[0], self.taps)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
