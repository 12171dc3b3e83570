"""GMRD (Cheng et al., IEEE TMI 2024, "Few-Shot Medical Image Segmentation via Generating
Multiple Representative Descriptors"; code: github.com/zmcheng9/GMRD, ``models/fewshot_GMRD.py``
and ``models/moudles.py`` at 3334d87, the Dec-2024 snapshot).

An ADNet-lineage method on the lineage trunk (``fsmis.models.lineage``): only the layer3
features ('down2', ``reduce1``) are used. The reference encoder also computes 'down3'
(``reduce2`` on layer4) and throws it away, so ``reduce2`` gets no gradient there; layer4
feeds only the threshold ``t`` of the empty-support fallback. Nothing beyond the trunk's
``encode`` packing is needed; ``encode`` is overridden only to detach ``t`` in a training
step whose support mask is not empty (no zero gradient back through layer4 and ``fc``).

What the code computes, operator by operator:

- Descriptors of one region (foreground, or background = 1 - mask), from the support
  features bilinearly upsampled (``align_corners=True``) to the mask's resolution
  (the image, 256 x 256 in the reference):

  * learned descriptors: the region's features are kept, every pixel outside the region
    gets the feature of a randomly drawn region pixel (drawn without replacement while the
    region has enough pixels; otherwise the region tiled ``n // |region|`` times after
    ``n % |region|`` drawn ones; all zeros when the region is empty), and a two-layer MLP
    over the *pixels* (``Linear(H*W, K)``, dropout 0.2, ``Linear(K, K)``, applied to every
    channel) turns that ``[C, H*W]`` map into ``K`` descriptors of ``C`` channels:
    ``K = 100`` foreground, ``600`` background (``fg_descriptors``, ``bg_descriptors``);
  * the region's masked average (MAP);
  * the MAP of an edge band: foreground, ``mask - erode(mask)`` (inner band); background,
    see ``outer_edge`` below. Erosion and dilation are 3 x 3 square, ``edge_iterations`` =
    2 times, pixels outside the image not counted (OpenCV's default border).

  Together ``K + 2`` descriptors per region. The MLP's input size fixes the image size:
  ``image_size`` (256) must equal the preprocessing's.
- Matching (the paper's MAMP): cosine similarity of every query feature to every
  descriptor gives ``K + 2`` affinity maps; a decoder per region (1 x 1 conv to ``K``,
  ReLU; two 3 x 3 convs with ReLU plus a residual; 3 x 3 conv to 100, ReLU, 2D dropout
  0.1, 1 x 1 conv to 1; no biases) maps them to one logit. The background and foreground
  logits, upsampled to the image (bilinear, ``align_corners=True``), go through a softmax:
  the prediction. No temperature, no threshold.
- Empty support mask: the ADNet head instead (one masked-average prototype, ``sim =
  -20 cos``, ``p = 1 - sigmoid(0.5 (sim - t))`` with the query's threshold ``t``), and
  ADNet's alignment loss.
- Losses: query NLL on ``log(clamp(p, eps, 1 - eps))`` with class weights 0.1 / 1
  (``bg_weight``, the lineage's); alignment (weight 1): the query's argmax prediction at
  the image resolution generates query descriptors with the same MLPs, which must segment
  the support through the same decoders, unweighted NLL, skipped when the query
  prediction has no foreground. Returned here as ``log(clamp(p))`` logits, whose
  cross-entropy equals that NLL.
- Training vs test: the reference's ``train`` flag only adds the alignment loss; dropout
  follows ``train()``/``eval()``; the random filling happens at test time too. Schedule
  (``scripts/train.sh``, the trainer's concern): 36000 steps, SGD lr 1e-3, momentum 0.9,
  weight decay 5e-4, x0.98 every 3000 steps, one episode per step, seed 2025.

Snapshots (GMRD issue #1 reports 79.63 against the paper's 82.90 on CHAOS Setting 1 with
the Nov-2023 code). The Nov-2023 snapshot (45ba5c2 / 7ff7193) had a ReLU after the MLP's
dropout and the paper's two descriptor losses (``get_aux_loss``, weight 0.5 in
``train.py``): intra-class, ``2 -`` for foreground and background the mean of
``max_j cos(s_i, q_j)`` over the learned support descriptors ``s_i`` and of ``cos(s, q)``
for the MAP and for the edge descriptor (support ``s``, query ``q``); inter-class,
``relu(mean cos(fg, bg))`` of the support and of the query descriptors. The Dec-2024
commits removed both. Default: the current code (``mlp_relu=False``, ``aux_weight=0``);
``mlp_relu=True, aux_weight=0.5`` is the Nov-2023 code and the paper's losses.

Reference defects and what we do:
  * background edge band: the code's ``dilate(1 - mask) - mask`` is 1 on the whole
    background, 0 on a two-pixel band inside the foreground and -1 on the rest of the
    foreground, so the "edge" descriptor is a signed average over most of the image (its
    inner-edge twin is ``mask - erode(mask)``). ``outer_edge="band"`` (default) uses the
    symmetric band ``dilate(mask) - mask`` (the background pixels next to the foreground);
    ``"reference"`` reproduces the code.
  * ``test.py`` unpacks three outputs from the two-output Dec-2024 model (it fails as
    published); hard-coded CUDA device, 512 channels and 256 x 256 images. Ours runs on the
    input's device with any channel count; the image side is ``image_size``.

Ours, not behaviours: the random pixel draw uses torch's CPU generator (reproducible
from ``torch.manual_seed`` and restored with the trainer's checkpoint; the reference uses
Python's ``random``); cosine similarities use the shared operator (norms clamped at 1e-4,
the reference's ``F.normalize`` at 1e-12; different only for near-zero vectors); masks are
binarised at 0.5. The upsampled ``[C, H, W]`` features are never built (:class:`Upsampled`):
the MLP's first layer and the masked averages are computed on the feature grid with the
pixel weights pulled back through the separable upsampling, the same sums in another order
(relative differences ~1e-6; 3x faster than the reference's ``[C, H*W] x [H*W, K]`` product
on a CPU, forward plus backward, with no ``[C, H*W]`` tensor kept for the backward).

The support descriptors are built once per support slice (``support_from_mask``, from the
image-resolution mask); the reference redraws them for every query slice. One support per
episode, as the framework; the alignment pass uses the first query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fsmis.models import prototypes as P
from fsmis.models.lineage import PROB_EPS, LineageParams, LineageSegmenter, similarity
from fsmis.models.params import cosine_scale, param

DECODER_HIDDEN = 100  # width of the decoder's last 3 x 3 conv, fixed in the reference


# -- operators ----------------------------------------------------------------------------


def erode(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """3 x 3 erosion of ``mask [B,1,H,W]``, ``iterations`` times; pixels outside the image
    do not count (OpenCV's default border for ``cv2.erode``)."""
    for _ in range(iterations):
        mask = -F.max_pool2d(-mask, 3, stride=1, padding=1)  # max_pool2d pads with -inf
    return mask


def dilate(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """3 x 3 dilation of ``mask [B,1,H,W]``, ``iterations`` times (outside pixels do not count)."""
    for _ in range(iterations):
        mask = F.max_pool2d(mask, 3, stride=1, padding=1)
    return mask


def inner_edge(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """Foreground band ``mask - erode(mask)`` (the reference's ``ie_mask``)."""
    return mask - erode(mask, iterations)


def outer_edge(mask: torch.Tensor, iterations: int, mode: str = "band") -> torch.Tensor:
    """Background edge weights for a foreground ``mask``: ``"band"`` the background band
    ``dilate(mask) - mask``; ``"reference"`` the code's ``dilate(1 - mask) - mask``."""
    if mode == "band":
        return dilate(mask, iterations) - mask
    if mode == "reference":
        return dilate(1.0 - mask, iterations) - mask
    raise ValueError(f"outer_edge: unknown mode {mode!r}")


def fill_index(region: torch.Tensor, sample) -> torch.Tensor | None:
    """Which pixel each pixel's feature is taken from when the outside of ``region`` is
    filled with region features: ``region [N]`` bool -> ``src [N]`` long (``src[i] = i``
    inside the region), or ``None`` for an empty region (the reference fills zeros).

    The ``n`` outside pixels, in raster order, get: ``n`` distinct region pixels drawn by
    ``sample(m, n)`` (m = region size) when ``m >= n``; otherwise ``n % m`` drawn ones
    followed by the region tiled ``n // m`` times (the reference's ``get_random_pts``).
    ``sample(m, k)`` returns ``k`` distinct indices in ``[0, m)`` (CPU long tensor)."""
    inside = torch.nonzero(region).flatten().cpu()
    m = inside.numel()
    if m == 0:
        return None
    holes = torch.nonzero(~region).flatten().cpu()
    n = holes.numel()
    if m >= n:
        pick = sample(m, n)
    else:
        pick = torch.cat([sample(m, n % m), torch.arange(m).repeat(n // m)])
    src = torch.arange(region.numel())
    src[holes] = inside[pick]
    return src.to(region.device)


def interp_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``[n_in, n_out]``: row ``i`` = the weights of input ``i`` at every output of a
    linear upsampling with ``align_corners=True`` (the reference's)."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device)[None]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=True)[0]


class Upsampled:
    """Features ``f [1,C,h,w]`` as if bilinearly upsampled (``align_corners=True``) to
    ``H x W``, without building the ``[C, H*W]`` tensor: upsampling is separable,
    ``up = R_h^T f R_w``, so a weighted sum over the upsampled pixels is a sum over the
    feature grid with the weights pulled back (``R_h w R_w^T``). The same values as the
    reference's, summed in another order."""

    def __init__(self, f: torch.Tensor, size):
        self.f = f
        self.rows = interp_matrix(f.shape[-2], size[0], f)
        self.cols = interp_matrix(f.shape[-1], size[1], f)
        self.size = tuple(size)

    def pull(self, weights: torch.Tensor) -> torch.Tensor:
        """``weights [..., H, W]`` -> ``[..., h, w]``."""
        return self.rows @ weights @ self.cols.t()

    def masked_average(self, mask: torch.Tensor) -> torch.Tensor:
        """Masked average pooling of the upsampled features: ``mask [1,1,H,W]`` -> ``[1,C]``."""
        return (self.f * self.pull(mask)).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + P.MAP_EPS)

    def linear(self, layer: nn.Linear, src: torch.Tensor | None) -> torch.Tensor:
        """``layer`` (``Linear(H*W, K)``) applied to every channel of the upsampled
        features with pixel ``src[i]`` read at pixel ``i`` (all zeros for ``None``): ``[C, K]``.

        ``sum_i up[src[i]] W[:, i] = sum_p up[p] G[:, p]`` with ``G`` the columns of ``W``
        added up at ``src``; ``G`` is pulled back to the feature grid (5x fewer operations
        than the reference's product at 256 x 256, K = 600)."""
        c, h, w = self.f.shape[1:]
        if src is None:
            return layer.bias.expand(c, -1)
        k = layer.out_features
        g = layer.weight.new_zeros(k, self.size[0] * self.size[1]).index_add(1, src, layer.weight)
        pulled = self.pull(g.view(k, *self.size))  # [K, h, w]
        return self.f.reshape(c, h * w) @ pulled.reshape(k, h * w).t() + layer.bias


def descriptor_losses(sup_fg, qry_fg, sup_bg, qry_bg) -> torch.Tensor:
    """The paper's two descriptor losses (Nov-2023 ``get_aux_loss``) on ``[K+2, C]`` sets
    whose last two rows are the MAP and the edge descriptor:
    ``intra = 2 - Intra(fg) - Intra(bg)``, ``Intra = mean over support descriptors of the
    best cosine to a query descriptor (learned ones) and of cos(s, q) (the last two)``;
    ``inter = relu(mean cos(sup_fg, sup_bg)) + relu(mean cos(qry_fg, qry_bg))``."""
    d1, d2, b1, b2 = (P.safe_normalize(x, dim=-1) for x in (sup_fg, qry_fg, sup_bg, qry_bg))

    def intra(s, q):
        best = (s[:-2] @ q[:-2].t()).max(dim=1).values
        return torch.cat([best, (s[-2:] * q[-2:]).sum(-1)]).mean()

    inter = F.relu((d1 @ b1.t()).mean()) + F.relu((d2 @ b2.t()).mean())
    return 2 - intra(d1, d2) - intra(b1, b2) + inter


class DescriptorMLP(nn.Module):
    """``[C, H*W]`` region-filled features -> ``[C, K]``: a linear map over the pixels,
    dropout, (ReLU: Nov-2023 snapshot), a ``K x K`` linear map (reference ``MLP``)."""

    def __init__(self, n_pixels: int, n_descriptors: int, dropout: float, relu: bool):
        super().__init__()
        layers = [nn.Linear(n_pixels, n_descriptors), nn.Dropout(dropout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        self.reduce = nn.Sequential(*layers, nn.Linear(n_descriptors, n_descriptors))

    def forward(self, x):
        return self.reduce(x)

    def after_first(self, x):
        """The layers after the first linear map."""
        return self.reduce[1:](x)


class AffinityDecoder(nn.Module):
    """``K + 2`` affinity maps -> one logit map (reference ``Decoder``; the paper's MAMP)."""

    def __init__(self, n_descriptors: int, dropout: float):
        super().__init__()
        k = n_descriptors
        self.res1 = nn.Sequential(nn.Conv2d(k + 2, k, 1, bias=False), nn.ReLU(inplace=True))
        self.res2 = nn.Sequential(nn.Conv2d(k, k, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                                  nn.Conv2d(k, k, 3, padding=1, bias=False), nn.ReLU(inplace=True))
        self.down = nn.Sequential(nn.Conv2d(k, DECODER_HIDDEN, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                                  nn.Dropout2d(dropout), nn.Conv2d(DECODER_HIDDEN, 1, 1, bias=False))

    def forward(self, x):
        x = self.res1(x)
        return self.down(self.res2(x) + x)


# -- the method ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GMRDParams(LineageParams):
    """GMRD (Cheng et al., TMI 2024): learned foreground and background descriptors matched by per-class
    affinity decoders; fsmis.models.gmrd says what the code computes and where we deviate."""

    fg_descriptors: int = param(100, "Learned foreground descriptors (the reference's fg_num).", ge=1)
    bg_descriptors: int = param(600, "Learned background descriptors (the reference's bg_num).", ge=1)
    image_size: int = param(256, """Side of the square image (and support mask) the descriptor MLPs read one
        input per pixel of (256, fixed in the reference); must equal preprocess.image_size.""", ge=1)
    edge_iterations: int = param(2, "3 x 3 erosions/dilations that make the edge bands of the edge descriptors.",
                                 ge=1)
    outer_edge: Literal["band", "reference"] = param("band", """Background edge descriptor: "band", the masked
        average over dilate(mask) - mask, the background next to the foreground (ours; the inner band's twin);
        "reference", the code's dilate(1 - mask) - mask, a signed average over most of the image.""")
    mlp_relu: bool = param(False, "ReLU after the descriptor MLP's dropout (the Nov-2023 snapshot; removed in "
                                  "Dec 2024).")
    mlp_dropout: float = param(0.2, "Dropout inside the descriptor MLPs.", ge=0, lt=1)
    decoder_dropout: float = param(0.1, "2D dropout inside the affinity decoders.", ge=0, lt=1)
    aux_weight: float = param(0.0, """Weight of the paper's intra- plus inter-class descriptor losses (0.5 in the
        Nov-2023 snapshot; the current code has none).""", ge=0)
    scale: float = cosine_scale("Temperature of the cosine similarity in the empty-support fallback (ADNet's head).")


class GMRD(LineageSegmenter):
    Params = GMRDParams

    def __init__(self, backbone: nn.Module, params: GMRDParams | None = None, *, align: bool = True):
        super().__init__(backbone, params, align=align)
        p = self.params
        n_pixels = p.image_size * p.image_size
        self.fg_mlp = DescriptorMLP(n_pixels, p.fg_descriptors, p.mlp_dropout, p.mlp_relu)
        self.bg_mlp = DescriptorMLP(n_pixels, p.bg_descriptors, p.mlp_dropout, p.mlp_relu)
        self.fg_decoder = AffinityDecoder(p.fg_descriptors, p.decoder_dropout)
        self.bg_decoder = AffinityDecoder(p.bg_descriptors, p.decoder_dropout)
        self._threshold_grad = True

    @staticmethod
    def sample_indices(m: int, k: int) -> torch.Tensor:
        """``k`` distinct indices in ``[0, m)`` in random order (torch's CPU generator)."""
        return torch.randperm(m)[:k]

    # -- support-only work ------------------------------------------------------------
    def support_from_mask(self, feats, mask):
        """Descriptors need the image-resolution mask ``[1,H,W]``."""
        return self.support_state(feats, mask[:, None] if mask.dim() == 3 else mask)

    def support_state(self, feats, fg):
        """``feats`` packed ``[1,C+1,h,w]``, ``fg [1,1,H,W]`` at the image resolution ->
        ``{"fg": [K_fg+2, C], "bg": [K_bg+2, C]}``, or ``{"fallback": [1, C]}`` (the masked
        average) for an empty mask."""
        side = self.params.image_size
        if fg.shape[-2:] != (side, side):
            raise ValueError(f"GMRD reads the support mask at the image resolution {side}x{side} (image_size), got "
                             f"{tuple(fg.shape[-2:])}: build the state with support_from_mask, or set image_size")
        f, _ = self.split(feats)
        up = Upsampled(f, fg.shape[-2:])
        mask = (fg > 0.5).to(f.dtype)
        if not bool(mask.any()):
            return {"fallback": up.masked_average(mask)}
        it = self.params.edge_iterations
        return {"fg": self._descriptors(up, mask, inner_edge(mask, it), self.fg_mlp),
                "bg": self._descriptors(up, 1.0 - mask, outer_edge(mask, it, self.params.outer_edge), self.bg_mlp)}

    def _descriptors(self, up: Upsampled, region, edge, mlp):
        """``region``/``edge [1,1,H,W]`` -> ``[K+2, C]``: learned, MAP, edge MAP. The learned
        ones are ``mlp`` over the pixels of the region-filled upsampled features."""
        src = fill_index(region.flatten() > 0.5, self.sample_indices)
        learned = mlp.after_first(up.linear(mlp.reduce[0], src))
        return torch.cat([learned.t(), up.masked_average(region), up.masked_average(edge)])

    # -- query-dependent work -----------------------------------------------------------
    def _head(self, feats, t, state):
        """Grid-level output: ``("logits", [B,2,h,w])`` (background, foreground decoder
        logits) or, for the empty-support fallback, ``("p", [B,1,h,w])``."""
        if "fallback" in state:
            return "p", self.lineage_prediction(similarity(feats, state["fallback"], self.params.scale), t)[:, None]
        fg = self.fg_decoder(P.cosine_scores(feats, state["fg"], 1.0))  # the reference's order: fg, then bg
        bg = self.bg_decoder(P.cosine_scores(feats, state["bg"], 1.0))
        return "logits", torch.cat([bg, fg], dim=1)

    def _to_logits(self, head, size=None):
        kind, x = head
        if size is not None:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        if kind == "p":
            return self.probability_logits(x)
        return torch.log(torch.softmax(x, dim=1).clamp(PROB_EPS, 1 - PROB_EPS)) if size is not None else x

    def score(self, query_feats, state):
        feats, t = self.split(query_feats)
        return self._to_logits(self._head(feats, t, state))

    def predict(self, query_feats, state, size):
        """Upsampled as the reference (``align_corners=True``), then ``log(clamp(p))``."""
        feats, t = self.split(query_feats)
        return self._to_logits(self._head(feats, t, state), size)

    # -- training ------------------------------------------------------------------------
    def encode(self, images):
        """As the lineage's, with ``t`` detached while ``_threshold_grad`` is false."""
        feats, t = self.backbone(images)
        return self.pack(feats, t if self._threshold_grad else t.detach())

    def forward(self, sup_img, sup_fg, qry_img):
        # t feeds only the empty-support head: detached otherwise, so that no zero gradient runs back through
        # layer4 and fc (the reference gives them none; the packed channel would carry zeros back)
        self._threshold_grad = not bool((sup_fg > 0.5).any())
        try:
            packed = self.encode(torch.cat([sup_img, qry_img]))
        finally:
            self._threshold_grad = True
        sup_p, qry_p = packed[:1], packed[1:]
        state = self.support_from_mask(sup_p, sup_fg)
        logits = self.predict(qry_p, state, qry_img.shape[-2:])
        losses = {}
        want_aux = self.params.aux_weight > 0 and "fallback" not in state
        if self.training and (self.align or want_aux):
            align, aux = self.alignment_terms(logits, qry_p, sup_p, sup_fg, state, with_aux=want_aux)
            if self.align:
                losses["align"] = align
            if want_aux:
                losses["aux"] = self.params.aux_weight * aux
        return logits, losses

    def alignment_loss(self, scores, qry_f, sup_f, sup_fg):
        """The alignment loss alone (``scores``: the query's ``[B,2,H,W]`` logits at the
        image resolution, as ``predict`` returns them)."""
        return self.alignment_terms(scores, qry_f, sup_f, sup_fg, self.support_from_mask(sup_f, sup_fg))[0]

    def alignment_terms(self, logits, qry_f, sup_f, sup_fg, state, with_aux=False):
        """The query's argmax prediction at the image resolution (``logits [B,2,H,W]``)
        generates query descriptors (or, after an empty support, ADNet's prototype) that
        segment the support; unweighted NLL. Returns ``(align, aux)``; both zero when the
        prediction has no foreground (the reference skips the episode's term)."""
        zero = logits.new_zeros(())
        pred_fg = P.foreground(logits[:1]).to(logits.dtype)
        if not bool(pred_fg.any()):
            return zero, zero
        s_f, _ = self.split(sup_f)
        q_f, t_q = self.split(qry_f[:1])
        if "fallback" in state:  # ADNet's alignment: one prototype, the query's threshold
            q_state = {"fallback": Upsampled(q_f, pred_fg.shape[-2:]).masked_average(pred_fg)}
        else:
            q_state = self.support_state(qry_f[:1], pred_fg)
        back = self._to_logits(self._head(s_f, t_q, q_state), sup_fg.shape[-2:])
        target = (sup_fg > 0.5).long().reshape(1, *sup_fg.shape[-2:])
        align = F.nll_loss(back, target)
        aux = descriptor_losses(state["fg"], q_state["fg"], state["bg"], q_state["bg"]) if with_aux else zero
        return align, aux
