"""Building blocks of DSPNet's detail self-refining (DSR) block.

Method-agnostic pieces used by ``fsmis.models.dspnet`` (which documents what the
paper and the public code compute and where they differ):

- resemblance attention (RAN): :class:`ResemblanceKernel`, whose ``attend`` applies
  the softmax-normalised attention to a few vectors without forming the normalised
  matrix or any dense per-use gradient (the cost of RAN is one ``n x n x C`` product
  forward and two backward, shared by the main and the alignment pass), and
  :func:`resemblance_attention`, the full operator;
- foreground seed placement (:func:`cluster_count`, :func:`place_seeds`), the
  feature + position soft clustering (:func:`cluster_centres`) and FSPA's fusion of
  the cluster prototypes as the code (:func:`fspa_code`) and the paper
  (:func:`fspa_paper`) compute it;
- the channel-structural attention of BCMA (:class:`ChannelAttention`), whose
  learnable channel weights live in a ``[C, C]`` parameter built once.

Shapes: feature maps are flattened to ``[B, C, n]`` (``n = h*w``, row-major);
attention kernels are ``[B, n_support, n_query]``.
"""

from __future__ import annotations

import torch
from torch import nn

from fsmis.models.prototypes import MAP_EPS
from fsmis.models.prototypes import safe_normalize as normalize

# --------------------------------------------------------------------------------------
# RAN: resemblance attention
# --------------------------------------------------------------------------------------


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``; for a ``b`` of a few columns computed as ``(b^T a^T)^T`` with ``b^T``
    made contiguous. Measured at 1024 x 1024 with 2-3 columns (1 thread): 0.24-0.27 ms
    for ``a`` contiguous or a transposed view, against 0.5 ms (``a``) and 0.75-0.8 ms
    (transposed ``a``) for ``a @ b``, and 2.5-4 ms when ``b^T`` is left a strided view."""
    if b.shape[-1] <= 4:
        return torch.matmul(b.transpose(-1, -2).contiguous(), a.transpose(-1, -2)).transpose(-1, -2)
    return torch.matmul(a, b)


ROW_BLOCK = 256  # kernel rows per block in the backward: a block stays in cache between the steps


class _KernelFn(torch.autograd.Function):
    """``exp(s^T q)`` with its row and column sums. The kernel's gradient is assembled
    from the low-rank factors its consumers (:class:`_AttendFn`) leave in ``store``,
    instead of one dense gradient per consumer that autograd would add up: per block
    of rows, one product of the concatenated factors, one multiplication by the
    kernel, then the two products that give the gradients of ``s`` and ``q``."""

    @staticmethod
    def forward(ctx, s, q, store):
        ctx.set_materialize_grads(False)
        # One product over all rows: in blocks of 128-512 rows (exponential and sums
        # while a block is in cache) it measured 0.3-0.4 ms slower at 1024 x 64 x 1024.
        kernel = torch.matmul(s.transpose(1, 2), q).exp_()
        ctx.save_for_backward(s, q, kernel)
        ctx.store = store
        rsum, csum = kernel.sum(-1), kernel.sum(-2)
        ctx.mark_non_differentiable(rsum, csum)
        return kernel, rsum, csum

    @staticmethod
    def backward(ctx, g_kernel, _g_rsum, _g_csum):
        s, q, kernel = ctx.saved_tensors
        factors, ctx.store.factors = ctx.store.factors, []
        if not factors and g_kernel is None:
            return None, None, None
        b, n, m = kernel.shape
        if factors:
            lhs = torch.cat([f[0].expand(b, n, f[0].shape[-1]) for f in factors], -1)  # [B, n, r]
            # rhs^T as a contiguous [B, r, m]: the [256, r] @ [r, m] block product takes
            # 0.1-0.15 ms, 0.4-0.67 ms from the transposed view of rhs
            rhs_t = torch.cat([f[1].expand(b, m, f[1].shape[-1]).transpose(1, 2) for f in factors], 1)
        # row-major q^T: the [256, m] @ [m, C] block product takes 0.33 ms, 0.5 ms from
        # the transposed view of q
        sb, qt = s.expand(b, -1, -1), q.transpose(1, 2).contiguous()
        grad_st = q.new_empty(b, n, q.shape[1])
        grad_q = torch.zeros_like(q)
        buf = kernel.new_empty(b, min(ROW_BLOCK, n), m)  # the gradient of one block of rows
        for j in range(0, n, ROW_BLOCK):
            rows = slice(j, min(j + ROW_BLOCK, n))
            g = buf[:, :rows.stop - j]
            if not factors:
                torch.mul(g_kernel[:, rows], kernel[:, rows], out=g)
            else:
                torch.matmul(lhs[:, rows], rhs_t, out=g)
                if g_kernel is not None:
                    g += g_kernel[:, rows]
                g.mul_(kernel[:, rows])  # derivative of exp
            torch.matmul(g, qt, out=grad_st[:, rows])
            grad_q.baddbmm_(sb[:, :, rows], g)
        return grad_st.transpose(1, 2).sum_to_size(s.shape), grad_q, None


class _GradStore:
    """Low-rank factors ``(lhs, rhs)`` of the kernel's gradient (``sum lhs @ rhs^T``),
    left by the consumers' backward for the kernel's backward, which autograd runs
    after all of them (it depends on their outputs)."""

    def __init__(self):
        self.factors: list = []


class ResemblanceKernel:
    """RAN's kernel ``K[b, j, i] = exp(cos(sup_j, qry_i))`` (support position ``j``,
    query position ``i``) with its row sums, applied through :meth:`attend`.

    ``sup [1|B, C, n]``, ``qry [B, C, m]``. RAN's attention is the kernel normalised
    over ``i`` (softmax at temperature 1). Cosine values lie in [-1, 1], so the
    exponential needs no max-subtraction. Each norm is clamped at ``eps`` (the
    reference adds ``eps`` to the product of the two norms; the two agree to a
    relative ``eps / (|s| |q|)``). :meth:`t` gives the kernel of the swapped roles
    (query as support), which shares the computation and the gradient. With
    ``grad=False`` the attention weights are constants for autograd (gradients still
    reach the attended ``values``).
    """

    def __init__(self, sup: torch.Tensor, qry: torch.Tensor, eps: float, grad: bool = True):
        self.store = _GradStore()
        s, q = normalize(sup, 1, eps), normalize(qry, 1, eps)
        if not grad:
            s, q = s.detach(), q.detach()
        self.kernel, self.rsum, self.csum = _KernelFn.apply(s, q, self.store)
        self.transposed = False

    def t(self) -> ResemblanceKernel:
        other = object.__new__(ResemblanceKernel)
        other.__dict__.update(self.__dict__)
        other.transposed = not self.transposed
        return other

    @property
    def batch(self) -> int:
        return self.kernel.shape[0]

    def dense(self) -> torch.Tensor:
        """The normalised attention ``[B, rows, cols]`` (for tests and inspection)."""
        k = self.kernel.transpose(1, 2) if self.transposed else self.kernel
        return k / (self.csum if self.transposed else self.rsum)[..., None]

    def attend(self, values: torch.Tensor | None = None, masks: torch.Tensor | None = None):
        """With ``W`` the normalised attention (rows: the support side):
        ``values [1|B, cols, k]`` -> ``W @ values [B, rows, k]``;
        ``masks [1|B, rows, k2]`` -> ``W^T @ masks [B, cols, k2]``. Either may be
        ``None`` (its output is then ``None``)."""
        return _AttendFn.apply(self.kernel, self.csum if self.transposed else self.rsum, values, masks, self)


TINY = 1e-30


def _flush_tiny(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.masked_fill(x.abs() < TINY, 0.0)


class _AttendFn(torch.autograd.Function):
    """Products with the normalised kernel; the softmax-normalisation backward is
    folded into low-rank factors of the kernel's gradient (left in the holder)."""

    @staticmethod
    def forward(ctx, kernel, rsum, values, masks, holder):
        ctx.set_materialize_grads(False)
        k = kernel.transpose(1, 2) if holder.transposed else kernel
        r = rsum[..., None]
        out_v = _matmul(k, values) / r if values is not None else None
        out_m = _matmul(k.transpose(1, 2), masks / r) if masks is not None else None
        ctx.save_for_backward(kernel, rsum, values, masks, out_v)
        ctx.holder = holder
        return out_v, out_m

    @staticmethod
    def backward(ctx, g_v, g_m):
        kernel, rsum, values, masks, out_v = ctx.saved_tensors
        holder = ctx.holder
        # Gradients behind a sharp softmax are full of subnormal numbers, which run
        # the CPU's products over the whole kernel at a fraction of their speed; below
        # 1e-30 they cannot change any sum they enter, so they become zeros.
        g_v = _flush_tiny(g_v)
        g_m = _flush_tiny(g_m)
        k = kernel.transpose(1, 2) if holder.transposed else kernel
        rinv = 1.0 / rsum[..., None]
        left, right = [], []
        corr = None
        grad_values = grad_masks = None
        if values is not None and g_v is not None:
            gr = g_v * rinv
            left.append(gr)
            right.append(values.expand(k.shape[0], -1, -1))
            corr = (g_v * out_v).sum(-1, keepdim=True)
            if ctx.needs_input_grad[2]:
                grad_values = _matmul(k.transpose(1, 2), gr).sum_to_size(values.shape)
        if masks is not None and g_m is not None:
            wg = _matmul(k, g_m) * rinv  # W @ g
            left.append((masks * rinv).expand(k.shape[0], -1, -1))
            right.append(g_m)
            c = (masks * wg).sum(-1, keepdim=True)
            corr = c if corr is None else corr + c
            if ctx.needs_input_grad[3]:
                grad_masks = wg.sum_to_size(masks.shape)
        if left and ctx.needs_input_grad[0]:
            left.append(-corr * rinv)
            right.append(kernel.new_ones(k.shape[0], k.shape[2], 1))
            lhs, rhs = torch.cat(left, -1), torch.cat(right, -1)
            # gradient of k = lhs @ rhs^T; stored in the orientation of the kernel tensor
            holder.store.factors.append((rhs, lhs) if holder.transposed else (lhs, rhs))
        return None, None, grad_values, grad_masks, None


def resemblance_attention(sup: torch.Tensor, qry: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RAN (paper Eq. 1, as the code computes it): ``sup``, ``qry`` ``[B, C, h, w]`` ->
    the refined support feature ``[B, C, h, w]`` (the support's shape, no parameters):

        F^_s[:, j] = F_s[:, j] + sum_i softmax_i(cos(F_s[:, j], F_q[:, i])) F_s[:, i]

    The weights of support position ``j`` come from its resemblance to every query
    position ``i`` and mix the support features at those same positions (both grids
    are the same size)."""
    if sup.shape[-2:] != qry.shape[-2:]:
        raise ValueError(f"RAN needs support and query on the same grid, got {tuple(sup.shape)} and {tuple(qry.shape)}")
    b, c, h, w = sup.shape
    s = sup.reshape(b, c, h * w)
    mixed, _ = ResemblanceKernel(s, qry.reshape(qry.shape[0], c, h * w), eps).attend(values=s.transpose(1, 2))
    return sup + mixed.transpose(1, 2).reshape(-1, c, h, w)


# --------------------------------------------------------------------------------------
# FSPA: seeds and clustering
# --------------------------------------------------------------------------------------


def cluster_count(area: int, avg_area: float, max_clusters: int) -> int:
    """Number of foreground clusters: ``min(round(area / avg_area), max_clusters)``
    with half-to-even rounding, as numpy's ``round`` in the reference."""
    return int(min(round(area / avg_area), max_clusters))


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
