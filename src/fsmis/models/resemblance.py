"""DSPNet's resemblance attention (RAN), the first part of its detail self-refining block.

:class:`ResemblanceKernel` applies the softmax-normalised attention to a few vectors
without forming the normalised matrix or any dense per-use gradient (the cost of RAN is
one ``n x n x C`` product forward and two backward, shared by the main and the
alignment pass); :func:`resemblance_attention` is the full operator, for reference and
tests. ``fsmis.models.dspnet`` documents what the paper and the public code compute.

Shapes: feature maps are flattened to ``[B, C, n]`` (``n = h*w``, row-major);
attention kernels are ``[B, n_support, n_query]``.
"""

from __future__ import annotations

import torch

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
