"""RPT (Zhu et al., MICCAI 2023, "Few-Shot Medical Image Segmentation via a
Region-Enhanced Prototypical Transformer"; code: github.com/YazhouZhu19/RPT, and the
author's maintained fork YazhouZhu19/RPT-fixed, code@e31b50e).

An ADNet-lineage method (:mod:`fsmis.models.lineage`: ResNet-101 trunk, 512-channel
stride-4 features, the threshold ``t`` per image, ``p = 1 - sigmoid(0.5 (sim - t))``
with ``sim = -20 cos``). What the reference ``models/fewshot.py`` computes, in order:

- Regional prototypes (the abstract's "subdivision strategy"; in the code a Voronoi
  partition around farthest-point-sampled centres): the support mask is resized to the feature grid (bilinear,
  ``align_corners=False``) and every cell with a non-zero value is foreground.
  ``regions`` (``fg_num`` = 100) centres are placed by farthest-point sampling on the
  cell coordinates: the first centre is a uniformly random foreground cell, each next
  one the cell farthest (squared Euclidean) from all centres so far (ties: the first
  in raster order). Every cell joins its nearest centre (ties: the lower centre), and
  a region's prototype is the mean of the raw support features of its cells: ``[k, C]``.
  No gradient through the partition; the means are differentiable.
- Global prototype: masked average pooling of the support features upsampled
  (bilinear, ``align_corners=False``) to the image-size mask (``getFeatures``;
  :func:`~fsmis.models.lineage.upsampled_masked_average`).
- Coarse query prototype: ``p0 = pred(query, global prototype, t_query)`` on the
  feature grid; ``q = MAP(query features, p0)`` (the soft probability as weights).
- Bias-alleviated transformer (BaT), ``bate_iters`` (3) times, **one module applied
  three times** (the code shares the weights; the paper speaks of stacked blocks):
  1. self-selection ("S&W"): ``A = R q`` (``[k]``, dot products of the regional
     prototypes with ``q``), ``kc = floor((min A + mean A) / 2)``, ``A - 10000`` where
     ``A < kc``, ``w = softmax_k``; ``X = LayerNorm(w q + R)`` (a LayerNorm of its own);
  2. multi-head self-attention over the ``k`` tokens (3 heads of width ``C`` each,
     ReLU after the query/key/value projections, temperature ``sqrt(C)``, dropout 0.1
     on the attention and on the output projection, ReLU after it, residual,
     LayerNorm);
  3. MLP ``LayerNorm(x + Linear(GELU(Linear(x))))``, hidden width ``2C``.
  The output replaces ``R``; the support prototype is ``mean_k(R) + global
  prototype``, the query prediction ``p = pred(query, support prototype, t_query)``
  and ``q = MAP(query features, p)`` feeds the next pass.
- Output: ``p`` upsampled bilinearly with ``align_corners=True`` (also at evaluation:
  :meth:`RPT.predict`), logits ``log(clamp(1-p)), log(clamp(p))``.
- Training losses (``train.py``: ``query + 0.1 periphery + align + 0.1 mse + qry``):
  the query's weighted NLL (background 0.1, the trainer's, ``bg_weight``);
  ``periphery`` (``periphery_weight`` 0.1): the support mask dilated by a 3 x 3
  square (cv2.dilate), ``pd`` and ``po`` the support's own predictions from the
  dilated-mask and mask prototypes (support ``t``), upsampled, target = the ring
  ``dilated - mask``, prediction ``pd - po``, unweighted NLL of the clamped
  probabilities; ``align`` (the trainer's ``align_weight``, 1 as the reference):
  the query prediction binarised (``p > 0.5``) at image size, its upsampled-MAP
  prototype predicts the support, unweighted NLL, skipped (0) when nothing is
  predicted; ``proto_mse`` (``mse_weight`` 0.1): mean squared difference between that
  query prototype and the support's global prototype (both get gradients), skipped
  likewise; ``query_self`` (``self_weight`` 1): the query's prototype from its own
  label predicts the query (query ``t``), unweighted NLL (needs ``qry_label``: skipped
  when the caller gives none).
- Training vs test: one forward for both; at test dropout is off and no loss is
  computed. The random first centre is drawn in both (below).

Randomness: the reference draws the first centre with ``np.random.RandomState(1289)``
created with the model and advanced by one ``choice`` per forward, in training (one
per episode) and at test (one per query slice: its test predictions depend on how
many slices were tested before). Ours: a ``torch.Generator`` seeded with
``region_seed`` (1289) when the model is built, advanced once per support state in
training (:meth:`RPT.reseed` restarts it); in evaluation mode the draw comes from a
generator freshly seeded with ``region_seed``, so a support slice's partition depends
on its mask only (evaluation computes it once per support slice and reuses it for
every query of the chunk, where the reference re-partitions for each query slice).
``region_seed=None`` draws from torch's global generator (``torch.manual_seed``).
The generator state is not part of the state dict.

RPT-fixed corrections (default) and the original behaviour (option):
- ``align_threshold``: the alignment loss predicts the support with the *query's*
  ``t`` in the original (``self.thresh_pred``); RPT-fixed passes the support's
  ``t``. ``"support"`` (default, RPT-fixed), ``"query"`` (original).
- Corrections that coincide with the original for one way, one shot and one support
  per episode, which is what this benchmark trains and tests (no option):
  per-sample dilation (the original dilates the first mask of the batch for all),
  BaT/prototype indexing by episode instead of by shot, averaging over shots, the
  ``/n_shots`` of the periphery and query losses, the threshold per episode, no
  hard-coded CUDA device (ours runs on the tensors' device), ``bate_iters``
  configurable (the original's ``n_iters=20`` argument is unused, 3 hard-coded).

Our corrections of defects both repositories keep (default) and the original (option):
- ``small_foreground``: with fewer foreground cells than ``regions``, the reference
  marks the first ``regions`` cells of the grid in raster order as foreground too
  ("Check if zero"), so background cells of the image's top rows become regional
  prototypes (at 256 x 256 a foreground under 100 cells of the 64 x 64 grid, about
  1600 pixels: kidneys and spleen on many slices). ``"fewer_regions"`` (default, ours):
  every foreground cell is its own region (``k`` = the cell count); no foreground cell
  at all: no regional prototype, the global prototype alone. ``"pad_raster"``:
  the reference; use it to evaluate the authors' published checkpoints as trained.
- A grid with fewer cells than ``regions`` (not at 256 x 256): the reference gives
  empty regions (NaN prototypes); ours caps ``k`` at the cell count in both modes.

Numerics (not behaviours): farthest-point sampling keeps the running minimum distance
instead of recomputing all distances per step (integer arithmetic: identical choices);
regional means by one matrix product; masked averages at image size by pulling the
mask back to the grid (:func:`~fsmis.models.lineage.upsampled_masked_average`); the
alignment and MSE losses share one query prototype (the reference computes it twice).
The periphery prediction is upsampled in two parts and then subtracted, as the
reference: the loss takes the log of a difference that is tiny near the ring, so
``up(pd - po)`` (the same in exact arithmetic) moves it by ~1e-4 relative in float32.
``benchmarks/parity/rpt.py`` compares this module with the reference on identical
weights and inputs (ResNet-101, 256 x 256; training and evaluation mode).

Paper: only the abstract could be read here (subdivision into regional prototypes,
self-selection inside the BaT block, stacked BaT blocks); everything above is the code's.

Cost: the lineage trunk dominates (layer3 at stride 4: at 256 x 256 a 64 x 64 grid,
four times the cells of SSL-ALPNet's stride-8 trunk); RPT's own part (partition,
three BaT passes, eight predictions, the losses) is about a tenth of a training step
on a CPU, mostly elementwise passes over the ``[B, 512, 64, 64]`` features.

Parameters keep the reference's names below the BaT (``w_qs``, ``fc``, ``mlp.0`` ...):
:func:`convert_reference_state` maps a reference (RPT or RPT-fixed) checkpoint to ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fsmis.models import prototypes as P
from fsmis.models.lineage import (
    LineageParams,
    LineageSegmenter,
    lineage_nll,
    lineage_prediction,
    probability_logits,
    similarity,
    upsample_probability,
    upsampled_masked_average,
)
from fsmis.models.params import cosine_scale, param

__all__ = ["RPT", "RPTParams", "BiasAlleviatedTransformer", "MultiHeadAttention", "MultiLayerPerceptron",
           "partition_cells", "farthest_point_centres", "voronoi_labels", "regional_prototypes",
           "self_selection", "convert_reference_state"]

REFERENCE_SEED = 1289  # np.random.RandomState(1289) in the reference
MASK_VALUE = -10000.0  # the self-selection's additive mask


# -- regional prototypes -------------------------------------------------------------------------------------------

def partition_cells(mask: torch.Tensor, regions: int, pad_raster: bool) -> torch.Tensor:
    """The cells to partition: ``mask [h,w]`` (bool); with ``pad_raster`` and fewer than
    ``regions`` of them, the first ``regions`` cells in raster order are added (the
    reference)."""
    if pad_raster and int(mask.sum()) < regions:
        mask = mask.clone()
        mask.view(-1)[:regions] = True
    return mask


def farthest_point_centres(pts: torch.Tensor, k: int, first: int) -> torch.Tensor:
    """Farthest-point sampling: indices ``[k]`` into ``pts [n,2]`` (integer coordinates),
    starting at ``first``; each next index maximises the squared distance to the
    nearest chosen point (ties: the lowest index, ``argmax``'s first). In numpy on
    the CPU: a hundred steps of tiny operations cost a tenth of torch's."""
    xy = pts.cpu().numpy().astype(np.int64)
    chosen = [first]
    nearest = ((xy - xy[first]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        np.minimum(nearest, ((xy - xy[i]) ** 2).sum(1), out=nearest)
    return torch.tensor(chosen, dtype=torch.long)


def voronoi_labels(pts: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of ``centres [k,2]`` for every point of ``pts [n,2]``
    (squared Euclidean, integer arithmetic; ties: the lower centre)."""
    xy, c = pts.cpu().numpy().astype(np.int64), centres.cpu().numpy().astype(np.int64)
    return torch.from_numpy(((xy[:, None, :] - c[None, :, :]) ** 2).sum(-1).argmin(1))


def regional_prototypes(feats: torch.Tensor, cells: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Mean feature of each region: ``feats [C,h,w]``, ``cells [h,w]`` (bool, raster
    order of ``labels``), ``labels [n]`` in ``[0, k)`` -> ``[k, C]``."""
    flat = feats.flatten(1)[:, cells.flatten().to(feats.device)]  # [C, n]
    onehot = F.one_hot(labels.to(feats.device), k).to(feats.dtype)  # [n, k]
    return (flat @ onehot / onehot.sum(0)).t()


# -- the bias-alleviated transformer -------------------------------------------------------------------------------

def self_selection(regions: torch.Tensor, query_proto: torch.Tensor) -> torch.Tensor:
    """The S&W weights ``[B, k]``: ``softmax_k(A + M)``, ``A = regions . q`` and ``M =
    -10000`` where ``A < floor((min A + mean A) / 2)``. ``regions [B,k,C]``,
    ``query_proto [B,C]``."""
    a = torch.einsum("bkc,bc->bk", regions, query_proto)
    with torch.no_grad():  # floor has no gradient; the cut only selects
        cut = torch.floor((a.min(1, keepdim=True).values + a.mean(1, keepdim=True)) / 2)
    return torch.softmax(a + torch.where(a < cut, MASK_VALUE, 0.0), dim=1)


class MultiHeadAttention(nn.Module):
    """The reference's ``MultiHeadAttention`` (``models/attention.py``) with ``d_k = d_v``:
    ReLU after the q/k/v projections, per-head scaled dot product (temperature
    ``sqrt(d_k)``), dropout on the attention, output projection, dropout, ReLU,
    ``LayerNorm(out + x)``. Self-attention only (RPT's use)."""

    def __init__(self, heads: int, d_model: int, d_k: int, dropout: float):
        super().__init__()
        self.heads, self.d_k = heads, d_k
        self.w_qs = nn.Linear(d_model, heads * d_k)
        self.w_ks = nn.Linear(d_model, heads * d_k)
        self.w_vs = nn.Linear(d_model, heads * d_k)
        for lin in (self.w_qs, self.w_ks, self.w_vs):
            nn.init.normal_(lin.weight, mean=0.0, std=math.sqrt(2.0 / (d_model + d_k)))
        self.fc = nn.Linear(heads * d_k, d_model)
        nn.init.xavier_normal_(self.fc.weight)
        self.layer_norm = nn.LayerNorm(d_model)
        self.attn_dropout = nn.Dropout(dropout)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [B, L, H*d] -> [H*B, L, d], heads outermost as the reference (dropout masks line up)
        b, n, _ = x.shape
        return F.relu(x).view(b, n, self.heads, self.d_k).permute(2, 0, 1, 3).reshape(-1, n, self.d_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self._heads(self.w_qs(x)), self._heads(self.w_ks(x)), self._heads(self.w_vs(x))
        attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.d_k), dim=-1)
        out = torch.bmm(self.attn_dropout(attn), v)  # [H*B, L, d]
        out = out.view(self.heads, b, n, self.d_k).permute(1, 2, 0, 3).reshape(b, n, -1)
        return self.layer_norm(F.relu(self.dropout(self.fc(out))) + x)


class MultiLayerPerceptron(nn.Module):
    """``LayerNorm(x + Linear(GELU(Linear(x))))`` (the reference's ``MultiLayerPerceptron``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(x) + x)


class BiasAlleviatedTransformer(nn.Module):
    """One BaT pass: ``regions [B,k,C]``, coarse query prototype ``[B,C]`` ->
    refined regions ``[B,k,C]`` (self-selection, LayerNorm, attention, MLP)."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(heads, dim, dim, dropout)
        self.mlp = MultiLayerPerceptron(dim, hidden)

    def forward(self, regions: torch.Tensor, query_proto: torch.Tensor) -> torch.Tensor:
        w = self_selection(regions, query_proto)
        x = self.norm(w[..., None] * query_proto[:, None, :] + regions)
        return self.mlp(self.attention(x))


def convert_reference_state(state: dict) -> dict:
    """A reference ``FewShotSeg`` state dict (RPT or RPT-fixed; ``module.`` prefixes
    dropped) -> this module's keys: ``encoder.`` -> ``backbone.``, ``layer_norm.`` ->
    ``bat.norm.``, ``MHA.`` -> ``bat.attention.`` (``attention.*`` has no parameters),
    ``MLP.`` -> ``bat.mlp.``."""
    rename = (("encoder.", "backbone."), ("layer_norm.", "bat.norm."), ("MHA.", "bat.attention."),
              ("MLP.", "bat.mlp."))
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for old, new in rename:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


# -- the method ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RPTParams(LineageParams):
    """RPT (Zhu et al., MICCAI 2023): regional prototypes refined by a bias-alleviated transformer."""

    scale: float = cosine_scale("Multiplier of the cosine similarity in the lineage head (the reference's scaler).")
    regions: int = param(100, "Number of regional prototypes (the reference's fg_num).", ge=1)
    bate_iters: int = param(3, "Passes of the (weight-shared) bias-alleviated transformer.", ge=1)
    heads: int = param(3, "Attention heads, each as wide as the features (the reference: 3 x 512).", ge=1)
    mlp_dim: int | None = param(None, "Hidden width of the transformer's MLP; null = twice the feature channels "
                                      "(1024, the reference).", ge=1)
    dropout: float = param(0.1, "Dropout on the attention weights and on the attention's output projection.",
                           ge=0, lt=1)
    region_seed: int | None = param(REFERENCE_SEED, """Seed of the model's generator for the first region centre
                                    (the reference's RandomState(1289)); null = torch's global generator.""", ge=0)
    small_foreground: Literal["fewer_regions", "pad_raster"] = param(
        "fewer_regions", """With fewer foreground cells than regions: "fewer_regions" makes every cell a region
        (ours); "pad_raster" adds the grid's first cells in raster order to the foreground (the reference and
        RPT-fixed).""")
    align_threshold: Literal["support", "query"] = param(
        "support", """Threshold t of the alignment loss's support prediction: "support" the support image's
        (RPT-fixed), "query" the query image's (original RPT).""")
    periphery_weight: float = param(0.1, "Weight of the support periphery loss.", ge=0)
    mse_weight: float = param(0.1, "Weight of the prototype MSE loss (query-predicted vs support prototype).", ge=0)
    self_weight: float = param(1.0, "Weight of the query self-prototype loss (needs the query label).", ge=0)


class RPT(LineageSegmenter):
    Params = RPTParams
    takes_query_label = True

    def __init__(self, backbone: nn.Module, params: RPTParams | None = None, *, align: bool = True):
        super().__init__(backbone, params, align=align)
        p, dim = self.params, backbone.out_channels
        self.bat = BiasAlleviatedTransformer(dim, p.heads, p.mlp_dim or 2 * dim, p.dropout)
        self.reseed()

    def reseed(self, seed: int | None = None) -> None:
        """Restart the region generator at ``seed`` (default ``region_seed``)."""
        seed = self.params.region_seed if seed is None else seed
        self.region_generator = None if seed is None else torch.Generator().manual_seed(seed)

    def first_centre(self, n: int) -> int:
        """The random first centre among ``n`` cells (see the module docstring)."""
        if self.params.region_seed is None:
            return int(torch.randint(n, (1,)))
        gen = self.region_generator if self.training else torch.Generator().manual_seed(self.params.region_seed)
        return int(torch.randint(n, (1,), generator=gen))

    # -- support ---------------------------------------------------------------------------------
    def partition(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Regional prototypes ``[k, C]`` of ``feats [1,C,h,w]`` under ``mask [1,1,H,W]``
        (any size: resized bilinearly to the grid, non-zero = foreground)."""
        p = self.params
        grid = F.interpolate(mask.float(), size=feats.shape[-2:], mode="bilinear", align_corners=False)
        cells = partition_cells(grid[0, 0].detach().cpu() > 0, p.regions, p.small_foreground == "pad_raster")
        pts = cells.nonzero()
        k = min(p.regions, pts.shape[0])
        if k == 0:
            return feats.new_zeros(0, feats.shape[1])
        centres = farthest_point_centres(pts, k, self.first_centre(pts.shape[0]))
        labels = voronoi_labels(pts, pts[centres])
        return regional_prototypes(feats[0], cells, labels, k)

    def _support(self, packed: torch.Tensor, mask: torch.Tensor) -> dict:
        feats, t = self.split(packed)
        mask = (mask if mask.dim() == 4 else mask[:, None]).to(feats.dtype)
        return {"feats": feats, "t": t, "mask": mask, "proto": upsampled_masked_average(feats, mask),
                "regions": self.partition(feats, mask)}

    def support_from_mask(self, feats, mask):
        """Support state from the image-size mask ``[1,H,W]`` (the reference pools at
        image size and resizes the mask itself for the partition)."""
        return self._support(feats, mask)

    def support_state(self, feats, fg):
        """The same from a mask on the feature grid ``[1,1,h,w]`` (the reference's
        computation with a grid-size mask)."""
        return self._support(feats, fg)

    # -- query -----------------------------------------------------------------------------------
    def pred(self, feats: torch.Tensor, proto: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The lineage head: ``[B,C,h,w]``, ``[B|1,C]``, ``[B|1,1]`` -> ``p [B,1,h,w]``."""
        return lineage_prediction(similarity(feats, proto, self.params.scale), t)[:, None]

    def refine(self, query: torch.Tensor, t: torch.Tensor, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p [B,1,h,w], support prototype [B,C])`` for query features ``[B,C,h,w]``."""
        b = query.shape[0]
        proto = state["proto"].expand(b, -1)
        p = self.pred(query, proto, t)
        regions = state["regions"]
        if regions.shape[0] == 0:  # no foreground cell ("fewer_regions"): the global prototype alone
            return p, proto
        regions = regions[None].expand(b, -1, -1)
        for _ in range(self.params.bate_iters):
            regions = self.bat(regions, P.masked_average(query, p))
            proto_i = regions.mean(1) + proto
            p = self.pred(query, proto_i, t)
        return p, proto_i

    def probability(self, query_feats: torch.Tensor, state: dict) -> torch.Tensor:
        """Foreground probability on the feature grid, ``[B,1,h,w]``."""
        feats, t = self.split(query_feats)
        return self.refine(feats, t, state)[0]

    def score(self, query_feats, state):
        return probability_logits(self.probability(query_feats, state))

    def predict(self, query_feats, state, size):
        """The probability upsampled as the reference does (bilinear, ``align_corners=True``), as logits."""
        return probability_logits(upsample_probability(self.probability(query_feats, state), size))

    # -- training --------------------------------------------------------------------------------
    def forward(self, sup_img, sup_fg, qry_img, qry_label=None):
        """One episode (one support, ``B`` queries): ``(logits [B,2,H,W], losses)``;
        in training ``align`` (unweighted: the trainer applies ``align_weight``),
        ``periphery``, ``proto_mse`` and ``query_self`` (weighted)."""
        size = qry_img.shape[-2:]
        packed = self.encode(torch.cat([sup_img, qry_img]))
        state = self.support_from_mask(packed[:1], sup_fg)
        qf, tq = self.split(packed[1:])
        p_up = upsample_probability(self.refine(qf, tq, state)[0], size)
        losses = self.training_losses(state, qf, tq, p_up, qry_label) if self.training else {}
        return probability_logits(p_up), losses

    def training_losses(self, st: dict, qf, tq, p_up, qry_label=None) -> dict:
        """The reference's auxiliary losses (module docstring) for one support state
        ``st``, query features ``qf [B,C,h,w]``, thresholds ``tq [B,1]``, the upsampled
        prediction ``p_up [B,1,H,W]`` and the query label ``[B,H,W]``."""
        pr, out = self.params, {}
        sf, ts, mask = st["feats"], st["t"], st["mask"]
        size, b = mask.shape[-2:], qf.shape[0]
        if pr.periphery_weight:
            dilated = F.max_pool2d(mask, 3, stride=1, padding=1)
            ring = (dilated - mask).clamp(0, 1)[:, 0]
            dil_proto = upsampled_masked_average(sf, dilated)
            # upsampled apart, then subtracted, as the reference: near the ring the difference is tiny and
            # its log ill-conditioned, so the order of rounding shows (up(a - b) differs by ~1e-4 relative)
            pp = (upsample_probability(self.pred(sf, dil_proto, ts), size)
                  - upsample_probability(self.pred(sf, st["proto"], ts), size))
            out["periphery"] = pr.periphery_weight * lineage_nll(pp, ring)
        if self.align or pr.mse_weight:
            fg = (p_up > 0.5).to(qf.dtype)  # argmax of (1-p, p): a tie is background
            has_fg = fg.flatten(1).sum(1) > 0  # the reference skips a query predicted empty
            q_proto = upsampled_masked_average(qf, fg)  # [B, C]
            if self.align:
                t = ts.expand(b, -1) if pr.align_threshold == "support" else tq
                back = upsample_probability(self.pred(sf.expand(b, -1, -1, -1), q_proto, t), size)
                target = mask[:, 0].long().expand(b, -1, -1)
                per_query = torch.stack([lineage_nll(back[i:i + 1], target[i:i + 1]) for i in range(b)])
                out["align"] = (per_query * has_fg).sum() / b
            if pr.mse_weight:
                per_query = ((q_proto - st["proto"]) ** 2).mean(1)
                out["proto_mse"] = pr.mse_weight * (per_query * has_fg).sum() / b
        if pr.self_weight and qry_label is not None:
            own = upsampled_masked_average(qf, (qry_label == 1).to(qf.dtype))
            own_p = upsample_probability(self.pred(qf, own, tq), size)
            out["query_self"] = pr.self_weight * lineage_nll(own_p, qry_label)
        return out
