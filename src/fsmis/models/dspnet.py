"""DSPNet (Tang et al., Medical Image Analysis 2025, "Few-Shot Medical Image
Segmentation with High-Fidelity Prototypes"; code: github.com/tntek/DSPNet).

DSPNet is SSL-ALPNet plus a detail self-refining (DSR) block that refines the
support prototypes before the cosine head:

- RAN, resemblance attention: ``F^_s = F_s + F_s softmax_query(cos(F_s, F_q))^T``
  (paper Eq. 1, the same in the code). No parameters; output has the support's shape.
- FSPA, foreground semantic prototype attention: cluster the support foreground
  (seeds from its distance transform, feature + position soft clustering), attend
  from the support feature to the cluster prototypes and pool the result into the
  foreground prototype ``P_f``.
- BCMA, background channel-structural multi-head attention: local (grid) prototypes
  refined by a per-channel attention over channels, restricted to neighbouring
  channels (``band``) and weighted by learnable channel weights ``cal``.
- Head: 20 x cosine, several prototypes of a class merged by soft-max pooling;
  query loss (weighted CE) by the trainer, support alignment loss below.

The facts relied on are stated in ``docs/methods.md`` (its 'DSPNet: ...' sections).
Two variants (``variant``) because the code does not compute what the paper says:

``variant="code"`` -- what the public code computes ('DSPNet: code vs paper'):
  * RAN feeds only FSPA's attention logits; clustering, BCMA and local prototypes
    use the raw support feature ``F_s``.
  * FSPA: centres from clustering raw ``F_s`` (no gradient); logits are raw dot
    products ``P_c^T F^_s``; softmax over the spatial positions; residual before
    pooling: ``P_f = MAP(P_c softmax_space(P_c^T F^_s) + F_s)``. With fewer than
    ``min_clusters`` clusters (a foreground under ~150 cells): the same with the
    single prototype ``p0 = MAP(F^_s)`` ("MAP-attention").
  * BCMA on the raw pooled ``F_s``, raw dot-product channel Gram, ``alpha_bg`` for
    the background prototypes; ALPNet's foreground local prototypes are kept (with
    BCMA at ``alpha_fg``) next to ``P_f`` whenever a ``fg_switch_window`` cell is
    covered >= ``threshold`` (ALPNet's 'gridconv+' / 'mask' switch).
  * The alignment pass (query prediction -> prototypes -> support) always uses the
    MAP-attention form of FSPA (the reference's ``alignLoss`` branch), hence
    the ``alignment_loss`` override below.
``variant="paper"`` -- the equations as published (Figs. 2, 4, 5, Eq. 1-2):
  * RAN output ``F^_s`` feeds FSPA (clustered, attended, pooled) and BCMA.
  * FSPA: cosine similarity of ``F^_s`` to the cluster prototypes, softmax over the
    clusters, ``P_f = MAP(P_c softmax_clusters(cos(F^_s, P_c)))``; no residual.
  * BCMA: cosine channel similarity; background prototypes only.
  * A single foreground prototype ``P_f``.
  * The alignment pass uses the same modules as the main pass (Eq. 12).

Guessed where both are silent (paper text for Eqs. 3-10 was not retrievable):
  * paper: the cluster algorithm, seed rule and constants are the code's; with
    fewer than ``min_clusters`` clusters the single cluster is ``MAP(F^_s)`` (as
    ASGNet treats one cluster), so FSPA then returns the masked average; the last
    clustering update is differentiable in the features (associations fixed);
    softmax temperatures (``fspa_temperature``, ``bcma_temperature``) are 1, as
    RAN's; BCMA background selection uses the code's threshold.
  * both: clustering uses the interior cells (mask == 1), as the reference; the
    foreground switch window is 4 also at test time (as the reference).

Cluster seeds (``seed_mask``): the seeds and their number come from the support mask
on the feature grid, the bilinear one every prototype uses, binarised at 0.5
(``"bilinear"``, ours: seeds, clustered cells and prototypes see one mask). The
reference nearest-downsamples the image-resolution mask instead (``cv2.resize`` with
``INTER_NEAREST`` to ``(H-1)//8 + 1`` cells: pixel ``8i`` of every row and column,
``mask[::8, ::8]``), whose samples sit at the top-left pixel of each 8 x 8 cell, 3.5
pixels off the centres the bilinear mask samples; ``"strided"`` reproduces it with
the stride of the feature grid (cell ``i`` takes pixel ``floor(i H / h)``: 8 for the
papers' trunk, as the reference's constant, 4 for the demo's ``small_cnn``). The
count differs on about 1 % of phantom organ masks, the seeds on nearly every clustered
one (docs/methods.md). It needs the image mask, so the support state is then built
with ``support_from_mask`` (``support_state`` refuses to guess); in the alignment pass
(clustered in the paper variant only) the seeds come from the query's prediction
upsampled to the image (bilinear, argmax), as the reference's ``alignLoss``.

Numerical details (ours, not behaviours): RAN clamps each feature norm at
``ran_eps`` (the reference adds it to the product of the norms); the clustering
distance is expanded as ``|x|^2 + |c|^2 - 2 x.c``; gradients below 1e-30 behind
RAN's softmax are flushed to zero (subnormal numbers slow CPU products ~10x).

What to expect: in the code variant RAN shifts FSPA's logits by a nearly constant
amount, which the spatial softmax ignores, and the FSPA term is a few percent of
``P_f`` (docs/methods.md, 'DSPNet: what the code computes in effect'):
code-DSPNet is SSL-ALPNet plus a channel filter on the local prototypes.
RAN costs ``O((hw)^2 C)``: one ``hw x hw x C`` product forward and
two backward, shared by the main and the alignment pass. With the CPU demo backbone
(32 x 32 x 64 features) that is about 70% of the backbone's arithmetic, so a
training step costs well above an SSL-ALPNet step (``benchmarks/train_step.py``);
``ran_grad=False`` (ours) treats RAN's attention weights as constants in the
backward (the reference differentiates through them) and saves about a third of the
difference. With ResNet-101 features the backbone dominates.

Reference defects (docs/methods.md, 'DSPNet: known defects') and what we do:
  * ``cal`` is not restored from a checkpoint at test time (the
    module is created after ``load_state_dict(strict=False)``). Ours: ``cal`` is
    in the state dict and restored (``restore_cal=True``: a saved and reloaded
    model gives identical logits); ``restore_cal=False`` reproduces the reference
    (loading resets ``cal`` to its banded initialisation).
  * ``cal`` is trained at 1e-4 x the learning rate through an optimiser parameter
    group. Ours: its gradient is multiplied by ``cal_lr_scale`` (1e-4), so the
    shared trainer needs no method-specific groups. Difference: SGD's weight decay
    shrinks ``cal`` at the full rate, a uniform rescaling of the refined prototypes
    that the cosine head does not see.
  * background alpha hard-coded 0.2 while the README's alpha only reaches the
    foreground: both are named (``alpha_bg``, ``alpha_fg``).
  * seeds counted with ``nonzero`` on each coordinate (a seed on row 0 or column 0
    is lost): ``seed_count="exact"`` (default) counts the seeds
    placed; ``"nonzero"`` reproduces the reference.
  * GPU-only construction, ``cal`` fixed at 256 x 256, batch 1: ours
    runs on the input's device, ``cal`` is ``C x C``, several queries per call.
  * no background window above the threshold: ``empty_bg`` as in SSL-ALPNet.

Evaluation builds the support state once per support slice (``support_from_mask``
from the image mask, which ``seed_mask="strided"`` needs; ``support_state`` from the
feature-grid mask otherwise): seed placement,
clustering (code), pooled local prototypes and BCMA (code) happen there; ``score``
does RAN and what it feeds. The RAN kernel is computed once per training step and
shared by the alignment pass (the similarity of query to support is its transpose).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from fsmis.models import prototypes as P
from fsmis.models.dsr_blocks import (
    ChannelAttention,
    cluster_centres,
    cluster_count,
    fspa_code,
    fspa_paper,
    place_seeds,
    strided_mask,
)
from fsmis.models.fewshot import EmptyPrototypeSet, FewShotSegmenter
from fsmis.models.params import EmptyBg, LocalPooling, MethodParams, cosine_scale, empty_bg, group, param
from fsmis.models.resemblance import ResemblanceKernel

SEED_LEVEL = 0.5  # feature-grid mask value from which a cell counts for seed placement
INTERIOR_LEVEL = 1.0 - 1e-6  # cells clustered: the reference's "mask == 1"


@dataclass(frozen=True)
class DSPNetParams(MethodParams):
    """DSPNet (Tang et al., MedIA 2025): SSL-ALPNet plus a detail self-refining block (RAN, FSPA, BCMA) on the
    support prototypes; fsmis.models.dspnet says where the code and the paper differ."""

    variant: Literal["code", "paper"] = param("code", """
        "code": what the public code computes (RAN only in FSPA's attention logits; raw dot products; FSPA softmax
        over positions with a residual before pooling; ALPNet's foreground local prototypes kept); "paper": the
        published equations (cosine similarities, FSPA softmax over clusters, RAN output feeding FSPA and BCMA, one
        foreground prototype). See fsmis.models.dspnet.""")
    ran: bool = param(True, "Resemblance attention of the support feature against the query (off, the support "
                            "feature is used as it is).")
    fspa: bool = param(True, "Foreground semantic prototype attention (off, the foreground prototype is the masked "
                             "average).")
    bcma: bool = param(True, "Background channel-structural attention on the local prototypes (off, plain pooled "
                             "local prototypes).")
    scale: float = cosine_scale("Temperature multiplying the cosine similarity of the segmentation head.")
    pooling: LocalPooling = group(LocalPooling, notes={"fg_switch_window": "Code variant only."})
    avg_cluster_area: float = param(100.0, """Foreground feature cells per FSPA cluster; the cluster count is
        min(round(area / avg_cluster_area), max_clusters) (the reference's avg_sp_area).""", gt=0)
    max_clusters: int = param(5, "Largest number of foreground clusters (the reference's max_num_sp).", ge=1)
    min_clusters: int = param(2, """Fewer clusters than this and FSPA does not cluster: the code variant attends
        with the single prototype MAP(RAN output), the paper variant's one cluster is the foreground's masked
        average (the reference falls back below 2).""", ge=1)
    cluster_iters: int = param(10, "Iterations of the feature + position soft clustering.", ge=0)
    cluster_feat_scale: float = param(100.0, "Divisor of the squared feature distance in the clustering "
                                             "distance.", gt=0)
    cluster_pos_scale: float = param(100.0, "Divisor of the squared position distance (feature cells) in the "
                                            "clustering distance.", gt=0)
    seed_count: Literal["exact", "nonzero"] = param("exact", """"exact" counts the cluster seeds placed (ours);
        "nonzero" counts them as the reference does, from the nonzero coordinates, which loses seeds on row or
        column 0.""")
    seed_mask: Literal["bilinear", "strided"] = param("bilinear", """Mask the cluster seeds and their number come
        from: "bilinear", the support mask on the feature grid (bilinear, as the prototypes use it) binarised at 0.5
        (ours); "strided", the image-resolution mask sampled at every s-th pixel of each row and column (nearest
        neighbour, s = image size / feature grid size: 8 for the papers' trunk), as the reference.""")
    fspa_temperature: float = param(1.0, "Multiplier of FSPA's attention logits before the softmax (1 in the code; "
                                         "the paper gives none).", gt=0)
    alpha_fg: float = param(0.2, """BCMA strength (the paper's beta) for the code variant's foreground local
        prototypes (the reference's self.a; README: 0.3 for Setting 1 abdomen, 0.2 for Setting 2).""", ge=0)
    alpha_bg: float = param(0.2, "BCMA strength for the background prototypes (hard-coded 0.2 in the reference).",
                            ge=0)
    bcma_taps: tuple[float, ...] = param((0.3, 0.8, 0.3), """Initial channel weights (w1, w2, w3) on the channel
        diagonals -1, 0, +1; an odd number of taps sets the neighbour band (reference default; its README lists
        (0.2, 0.8, 0.2) for Setting 1 abdomen, (0.1, 0.9, 0.1) cardiac, (0.3, 0.6, 0.3) Setting 2).""", min_items=1)
    bcma_temperature: float = param(1.0, "Multiplier of BCMA's channel-similarity logits before the softmax (1 in "
                                         "the code).", gt=0)
    cal_lr_scale: float = param(1e-4, "Factor on the gradient of BCMA's learnable channel weights (the reference "
                                      "trains them at 1e-4 x the learning rate).", ge=0)
    restore_cal: bool = param(True, """Load BCMA's learnable channel weights from a checkpoint (ours); false resets
        them to their initial values on loading, as the reference does at test time.""")
    ran_eps: float = param(1e-5, "Lower bound of the feature norms in RAN's cosine similarity.", gt=0)
    ran_grad: bool = param(True, """Back-propagate through RAN's attention weights (as the reference); false treats
        them as constants, which saves about a third of DSPNet's extra cost on a CPU.""")
    empty_bg: EmptyBg = empty_bg()


class DSPNet(FewShotSegmenter):
    Params = DSPNetParams

    def __init__(self, backbone, params: DSPNetParams | None = None, *, align=True):
        super().__init__(backbone, params, align=align)
        p = self.params
        if p.bcma:
            self.channel_attention = ChannelAttention(backbone.out_channels, taps=p.bcma_taps,
                                                      lr_scale=p.cal_lr_scale, restore=p.restore_cal)

    @property
    def window(self) -> int:
        return self.params.pooling.window(self.training)

    # -- support-only work ------------------------------------------------------------
    def support_from_mask(self, feats, mask):
        """As the base class; with ``seed_mask="strided"`` the seeds come from the
        image-resolution ``mask [1,H,W]`` sampled on the feature grid."""
        return self.support_state(feats, P.resize_mask(mask, feats.shape[-2:]),
                                  seeds_from=self._strided_seeds(mask, feats.shape[-2:]))

    def _strided_seeds(self, mask, grid):
        """The cells seeds may take, from an image-resolution mask: ``[h, w]`` bool, or
        ``None`` when the seeds come from the feature-grid mask (``seed_mask="bilinear"``)."""
        if self.params.seed_mask != "strided" or not self.params.fspa:
            return None
        return strided_mask(mask, grid) >= SEED_LEVEL

    def support_state(self, feats, fg, cluster=True, seeds_from=None):
        """``feats [1,C,h,w]``, ``fg [1,1,h,w]``; ``cluster=False`` skips FSPA's
        clustering (the code variant's alignment pass). ``seeds_from [h, w]`` (bool):
        the cells the cluster seeds are placed in (``None``: ``fg >= 0.5``); required
        with ``seed_mask="strided"``, where ``support_from_mask`` makes it."""
        clustered = self.params.fspa and cluster
        if clustered and seeds_from is None and self.params.seed_mask == "strided":
            raise ValueError('seed_mask="strided" needs the image-resolution support mask: build the support '
                             "state with support_from_mask(feats, mask)")
        state = {"feats": feats, "mask": fg, "mask_sum": fg.sum(), "window": self.window,
                 "plan": self._cluster_plan(fg, seeds_from) if clustered else None}
        if self.params.variant == "code":
            self._code_support(state)
        else:
            state["bg_cells"] = F.avg_pool2d(1.0 - fg, state["window"]).flatten() > self.params.pooling.threshold
            state["fg_idx"] = torch.nonzero(fg.flatten() > 0).flatten()
            if not self.params.ran:  # nothing depends on the query
                state["protos"] = self._paper_prototypes(feats, state)
        return state

    def _cluster_plan(self, fg, seeds_from=None):
        """Seeds and clustered cells, or ``None`` (fewer than ``min_clusters``).
        ``seeds_from``: the binary mask seeds are counted and placed in (default
        ``fg >= 0.5``); the clustered cells are ``fg``'s interior either way."""
        binary = fg[0, 0] >= SEED_LEVEL if seeds_from is None else seeds_from.bool()
        n = cluster_count(int(binary.sum()), self.params.avg_cluster_area, self.params.max_clusters)
        if n < self.params.min_clusters:
            return None
        seeds = place_seeds(binary, n)
        if self.params.seed_count == "nonzero":
            kept = max(int(torch.count_nonzero(seeds[:, 0])), int(torch.count_nonzero(seeds[:, 1])))
            seeds = seeds[:kept]
        roi = torch.nonzero(fg.flatten() >= INTERIOR_LEVEL).flatten()
        if seeds.shape[0] == 0 or roi.numel() == 0:
            return None
        w = fg.shape[-1]
        return {"seeds": seeds, "seed_idx": seeds[:, 0] * w + seeds[:, 1], "roi": roi,
                "roi_pos": torch.stack([roi // w, roi % w], 1)}

    def _clusters(self, flat, plan, grad):
        """Cluster centres ``[B, C, k]`` of ``flat [B, C, n]`` following ``plan``."""
        seeds = plan["seeds"].t().to(flat.dtype).expand(flat.shape[0], -1, -1)
        init = torch.cat([flat[:, :, plan["seed_idx"]], seeds], 1).detach()
        return cluster_centres(flat[:, :, plan["roi"]], plan["roi_pos"], init, self.params.cluster_iters,
                               self.params.cluster_feat_scale, self.params.cluster_pos_scale, grad=grad)

    def _select(self, refined, cells, feats, mask):
        """Prototypes ``[B, K, C]`` of the kept cells; the empty-set policy if none."""
        protos = refined[:, :, cells].transpose(1, 2)
        if protos.shape[1] == 0:
            if self.params.empty_bg == "raise":
                raise EmptyPrototypeSet("no background window above threshold")
            protos = P.masked_average(feats, mask)[:, None]
        return protos

    def _code_support(self, st):
        p, f, m, win = self.params, st["feats"], st["mask"], st["window"]
        threshold = p.pooling.threshold
        pooled = F.avg_pool2d(f, win).flatten(2)  # [1, C, N]
        refined_bg = self.channel_attention(pooled, p.alpha_bg, "dot", p.bcma_temperature) if p.bcma else pooled
        st["bg"] = self._select(refined_bg, F.avg_pool2d(1.0 - m, win).flatten() > threshold, f, 1.0 - m)[0]
        if P.max_window_coverage(m, p.pooling.fg_switch_window) >= threshold:
            refined_fg = refined_bg
            if p.bcma and p.alpha_fg != p.alpha_bg:
                refined_fg = self.channel_attention(pooled, p.alpha_fg, "dot", p.bcma_temperature)
            st["fg_local"] = refined_fg[0][:, F.avg_pool2d(m, win).flatten() > threshold].t()
        else:
            st["fg_local"] = f.new_zeros(0, f.shape[1])
        st["map"] = P.masked_average(f, m)  # [1, C]
        if p.fspa and st["plan"] is not None:
            flat = f.flatten(2)
            centres = self._clusters(flat, st["plan"], grad=False)[0]  # [C, k], no gradient (reference)
            st["centres"] = centres
            st["values"] = torch.matmul(flat[0].t(), centres)[None]  # F_s^T P_c: [1, n, k]

    # -- query-dependent work -----------------------------------------------------------
    def _kernel(self, sup_f, qry_f):
        """RAN kernel ``[B, n_sup, n_qry]``, or ``None`` when nothing consumes RAN."""
        if not self.params.ran or (self.params.variant == "code" and not self.params.fspa):
            return None
        if sup_f.shape[-2:] != qry_f.shape[-2:]:
            raise ValueError("RAN needs support and query features on the same grid")
        return ResemblanceKernel(sup_f.flatten(2), qry_f.flatten(2), self.params.ran_eps, grad=self.params.ran_grad)

    def score(self, query_feats, state):
        return self._score(query_feats, state, self._kernel(state["feats"], query_feats))

    def prototypes(self, query_feats, state, kernel=None):
        """The refined prototypes for these queries: ``{"fg": [B|1, K, C], "bg": [B|1, K, C]}``."""
        if kernel is None:
            kernel = self._kernel(state["feats"], query_feats)
        b = query_feats.shape[0]
        if self.params.variant == "code":
            p_f = state["map"].expand(b, -1)
            if self.params.fspa:
                p_f = p_f + self._code_fspa(state, kernel)  # the code's residual: MAP(F_s) + FSPA
            return {"fg": torch.cat([state["fg_local"].expand(b, -1, -1), p_f[:, None]], 1), "bg": state["bg"][None]}
        if kernel is None:  # paper variant without RAN: computed in support_state
            return state["protos"]
        return self._paper_prototypes(self._refined_support(state["feats"], kernel), state)

    def _score(self, q, st, kernel):
        protos = self.prototypes(q, st, kernel)
        return torch.cat([P.pooled_cosine(q, protos["bg"], self.params.scale),
                          P.pooled_cosine(q, protos["fg"], self.params.scale)], dim=1)

    def _code_fspa(self, st, kernel):
        """FSPA term of the code's ``P_f = MAP(F_s) + FSPA``: ``[B, C]``."""
        flat = st["feats"].flatten(2)  # [1, C, n]
        m = st["mask"].flatten(1)  # [1, n]
        if "centres" in st:
            protos, logits = st["centres"].t()[None], st["values"]  # [1, k, C], F_s^T P_c
        else:  # MAP-attention with p0 = MAP(F^_s)
            p0 = st["map"]
            if kernel is not None:  # MAP(F_s W^T) = F_s W^T m / sum(m)
                attended = kernel.attend(masks=m[..., None])[1]
                p0 = p0 + torch.matmul(flat, attended)[..., 0] / (st["mask_sum"] + P.MAP_EPS)
            protos, logits = p0[:, None], torch.matmul(flat.transpose(1, 2), p0[..., None])  # [B, 1, C], [B, n, 1]
        if kernel is not None:  # P^T F^_s = P^T F_s + W (F_s^T P)
            logits = logits + kernel.attend(values=logits)[0]
        return fspa_code(logits, m, protos, self.params.fspa_temperature)

    def _refined_support(self, feats, kernel):
        """RAN output ``F^_s [B, C, h, w]`` from the support ``[1, C, h, w]``."""
        flat = feats.flatten(2)
        mixed, _ = kernel.attend(values=flat.transpose(1, 2))
        return feats + mixed.transpose(1, 2).reshape(-1, *feats.shape[1:])

    def _paper_prototypes(self, fh, st):
        """Paper FSPA and BCMA on the (RAN-refined) support ``fh [B, C, h, w]``:
        ``{"fg": [B, 1, C], "bg": [B, K, C]}``."""
        m = st["mask"]
        if self.params.fspa:
            flat = fh.flatten(2)
            if st["plan"] is not None:
                centres = self._clusters(flat, st["plan"], grad=True)  # [B, C, k]
            else:  # a single cluster: the foreground mean
                centres = P.masked_average(fh, m)[..., None]
            idx = st["fg_idx"]
            p_f = fspa_paper(flat[:, :, idx], m.flatten(1)[:, idx], centres, self.params.fspa_temperature)
        else:
            p_f = P.masked_average(fh, m)
        pooled = F.avg_pool2d(fh, st["window"]).flatten(2)
        if self.params.bcma:
            pooled = self.channel_attention(pooled, self.params.alpha_bg, "cosine", self.params.bcma_temperature)
        return {"fg": p_f[:, None], "bg": self._select(pooled, st["bg_cells"], fh, 1.0 - m)}

    # -- training ------------------------------------------------------------------------
    def forward(self, sup_img, sup_fg, qry_img):
        """As ``FewShotSegmenter.forward``; the RAN kernel is shared with the alignment pass."""
        size = qry_img.shape[-2:]
        feats = self.encode(torch.cat([sup_img, qry_img]))
        sup_f, qry_f = feats[:1], feats[1:]
        state = self.support_from_mask(sup_f, sup_fg)
        kernel = self._kernel(sup_f, qry_f)
        scores = self._score(qry_f, state, kernel)
        logits = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        losses = {}
        if self.training and self.align:
            losses["align"] = self.alignment_loss(scores, qry_f, sup_f, sup_fg, kernel=kernel)
        return logits, losses

    def alignment_loss(self, scores, qry_f, sup_f, sup_fg, kernel=None):
        """PANet alignment as the base class, except: the code variant's FSPA uses
        MAP-attention here (no clustering, as the reference's ``alignLoss``), and the
        RAN kernel of the main pass is reused transposed (query as support). With
        ``seed_mask="strided"`` the seeds come from the prediction at the image size
        (bilinear upsampling, argmax), as the reference's ``alignLoss``."""
        pred_fg = P.foreground(scores[:1]).float()
        cluster = self.params.variant == "paper"
        seeds_from = None
        if cluster and self.params.seed_mask == "strided":
            full = F.interpolate(scores[:1], size=sup_fg.shape[-2:], mode="bilinear", align_corners=False)
            seeds_from = self._strided_seeds(P.foreground(full).float(), scores.shape[-2:])
        state = self.support_state(qry_f[:1], pred_fg, cluster=cluster, seeds_from=seeds_from)
        if kernel is None or kernel.batch != 1:
            kernel = self._kernel(qry_f[:1], sup_f)
        else:  # cos(query_j, support_i) is the main kernel transposed
            kernel = kernel.t()
        back = self._score(sup_f, state, kernel)
        back = F.interpolate(back, size=sup_fg.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(back, sup_fg.long())
