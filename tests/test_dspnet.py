"""DSPNet: each module's defining behaviour on hand-made inputs, the code/paper
differences (fsmis.models.dspnet docstring; docs/methods.md, 'DSPNet: code vs paper' and
'DSPNet: known defects'), the off switches,
persistence and a training step."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.ndimage import distance_transform_edt, gaussian_filter
from torch import nn

from fsmis.models import prototypes as P
from fsmis.models import registry
from fsmis.models.dspnet import DSPNet, DSPNetParams
from fsmis.models.dsr_blocks import (
    ChannelAttention,
    banded,
    cluster_centres,
    cluster_count,
    fspa_code,
    fspa_paper,
    place_seeds,
    strided_mask,
)
from fsmis.models.fewshot import EmptyPrototypeSet
from fsmis.models.resemblance import ResemblanceKernel, resemblance_attention
from fsmis.models.ssl_alpnet import SSLALPNet

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


class Identity(nn.Module):
    """A 'backbone' that returns its input: features are set by hand."""

    def __init__(self, channels):
        super().__init__()
        self.out_channels, self.stride = channels, 1

    def forward(self, x):
        return x


def _mask(h, w, y0, y1, x0, x1):
    m = torch.zeros(1, 1, h, w)
    m[..., y0:y1, x0:x1] = 1
    return m


def _dense_ran(sup, qry):
    """Eq. 1 written out: F + F softmax_i(cos(F_j, Q_i))^T."""
    b, c, h, w = qry.shape
    s, q = sup.reshape(1, c, -1), qry.reshape(b, c, -1)
    cos = torch.einsum("bcj,bci->bji", s / s.norm(dim=1, keepdim=True), q / q.norm(dim=1, keepdim=True))
    att = torch.softmax(cos, dim=-1)
    return (s + torch.einsum("bci,bji->bcj", s.expand(b, -1, -1), att)).reshape(b, c, h, w)


# -- RAN ----------------------------------------------------------------------------------


def test_ran_has_no_parameters_and_returns_the_support_shape():
    torch.manual_seed(0)
    sup, qry = torch.randn(1, 4, 5, 6), torch.randn(2, 4, 5, 6)
    out = resemblance_attention(sup, qry)
    assert out.shape == (2, 4, 5, 6)  # one refined support per query, the support's shape
    assert torch.allclose(out, _dense_ran(sup, qry), atol=1e-5)
    assert list(DSPNet.from_keywords(Identity(4), bcma=False).parameters()) == []  # RAN and FSPA learn nothing
    # a query identical in every position: uniform attention, F^ = F + mean(F)
    flat = torch.ones(1, 4, 5, 6)
    assert torch.allclose(resemblance_attention(sup, flat), sup + sup.mean(dim=(2, 3), keepdim=True), atol=1e-6)


def test_ran_kernel_gradients_match_dense_autograd():
    """The kernel's low-rank gradient assembly (main pass and transposed alignment
    pass sharing one kernel) equals autograd through the dense softmax."""
    torch.manual_seed(1)
    s0, q0 = torch.randn(1, 3, 7, dtype=torch.float64), torch.randn(1, 3, 7, dtype=torch.float64)
    vals, vals_t = torch.randn(1, 7, 2, dtype=torch.float64), torch.randn(1, 7, 1, dtype=torch.float64)
    masks, masks_t = torch.rand(1, 7, 1, dtype=torch.float64), torch.rand(1, 7, 2, dtype=torch.float64)
    w = [torch.randn(1, 7, k, dtype=torch.float64) for k in (2, 1, 1, 2)]

    def run(fast):
        s, q, v, vt = (t.clone().requires_grad_() for t in (s0, q0, vals, vals_t))
        if fast:
            kernel = ResemblanceKernel(s, q, 1e-5)
            a, b = kernel.attend(values=v, masks=masks)
            c, d = kernel.t().attend(values=vt, masks=masks_t)
        else:
            cos = torch.einsum("bcj,bci->bji", s / s.norm(dim=1, keepdim=True), q / q.norm(dim=1, keepdim=True))
            wr, wc = torch.softmax(cos, -1), torch.softmax(cos.transpose(1, 2), -1)
            a, b = wr @ v, wr.transpose(1, 2) @ masks
            c, d = wc @ vt, wc.transpose(1, 2) @ masks_t
        loss = sum((o * wt).sum() for o, wt in zip((a, b, c, d), w))
        loss.backward()
        return [t.grad for t in (s, q, v, vt)]

    for fast, ref in zip(run(True), run(False)):
        assert torch.allclose(fast, ref, atol=1e-10)


@pytest.mark.parametrize("sup_batch,qry_batch", [(1, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("consumers", ["attend", "attend+dense", "dense"])
def test_ran_kernel_outputs_and_gradients_match_dense_softmax(sup_batch, qry_batch, consumers):
    """Every output and every gradient (support, query, values, masks; the kernel and
    its transpose; 1 to 5 value columns) equals autograd through the dense softmax of
    the cosine similarities, with more support positions than one block of rows of
    the kernel's backward (ROW_BLOCK) and a partial last block. ``dense()`` (for
    inspection) takes its row sums as constants for autograd; with it the kernel's
    backward also receives a dense gradient."""
    from fsmis.models.resemblance import ROW_BLOCK

    torch.manual_seed(2)
    c, n, m = 5, ROW_BLOCK + 44, 70
    f64 = dict(dtype=torch.float64)
    inputs = {
        "s": torch.randn(sup_batch, c, n, **f64), "q": torch.randn(qry_batch, c, m, **f64),
        "v": torch.randn(1, m, 2, **f64), "m": torch.rand(1, n, 1, **f64),  # W @ v, W^T @ m
        "vt": torch.randn(sup_batch, n, 5, **f64), "mt": torch.rand(qry_batch, m, 3, **f64),  # transposed kernel
        "vt1": torch.randn(1, n, 1, **f64),
    }
    weights = [torch.randn(qry_batch, *shape, **f64) for shape in ((n, 2), (m, 1), (m, 5), (n, 3), (m, 1), (n, m))]

    def run(fast):
        x = {k: t.clone().requires_grad_() for k, t in inputs.items()}
        if fast:
            kernel = ResemblanceKernel(x["s"], x["q"], 1e-5)
            attended = [*kernel.attend(values=x["v"], masks=x["m"]), *kernel.t().attend(values=x["vt"], masks=x["mt"]),
                        kernel.t().attend(values=x["vt1"])[0]]
            dense = kernel.dense()
        else:
            s, q = x["s"] / x["s"].norm(dim=1, keepdim=True), x["q"] / x["q"].norm(dim=1, keepdim=True)
            cos = torch.matmul(s.transpose(1, 2), q)  # [B, n, m]
            w_row, w_col = torch.softmax(cos, -1), torch.softmax(cos.transpose(1, 2), -1)
            attended = [w_row @ x["v"], w_row.transpose(1, 2) @ x["m"],
                        w_col @ x["vt"], w_col.transpose(1, 2) @ x["mt"], w_col @ x["vt1"]]
            dense = cos.exp() / cos.exp().sum(-1, keepdim=True).detach()  # dense(): row sums are constants
        outs = (attended if consumers != "dense" else []) + ([dense] if consumers != "attend" else [])
        ws = (weights[:5] if consumers != "dense" else []) + (weights[5:] if consumers != "attend" else [])
        sum((o * w).sum() for o, w in zip(outs, ws)).backward()
        return outs, {k: t.grad for k, t in x.items()}

    fast_outs, fast_grads = run(True)
    ref_outs, ref_grads = run(False)
    for fast, ref in zip(fast_outs, ref_outs):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    for key, ref in ref_grads.items():
        if ref is None:  # inputs of consumers this case does not use
            assert fast_grads[key] is None, key
        else:
            assert ref.abs().max() > 0, key
            torch.testing.assert_close(fast_grads[key], ref, rtol=1e-10, atol=1e-12, msg=key)


# -- BCMA ---------------------------------------------------------------------------------


def test_bcma_with_alpha_0_and_identity_channel_weights_returns_its_input():
    torch.manual_seed(2)
    q = torch.randn(1, 6, 5)
    mixer = ChannelAttention(6, taps=(0.0, 1.0, 0.0))
    assert torch.allclose(mixer(q, alpha=0.0), q)
    # alpha 0, reference taps: the fixed 3-tap channel filter (identity at the edge channels)
    out = ChannelAttention(6)(q, alpha=0.0)
    assert torch.allclose(out[:, 0], q[:, 0]) and torch.allclose(out[:, 5], q[:, 5])
    for j in range(1, 5):
        assert torch.allclose(out[:, j], 0.3 * q[:, j - 1] + 0.8 * q[:, j] + 0.3 * q[:, j + 1], atol=1e-6)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_bcma_heads_follow_the_per_channel_definition(similarity):
    """Head j: w_c = softmax(sim(Q_j, Q_k)), r = 1 + alpha (m_w ⊙ w_c), a'_j = r ⊙ a_j,
    P_a[j, k] = a'_j . P_n[:, k] (Fig. 5), against the vectorised module."""
    torch.manual_seed(3)
    c, n, alpha = 5, 4, 0.7
    q = torch.randn(1, c, n)
    mixer = ChannelAttention(c)
    with torch.no_grad():
        mixer.cal.add_(0.1 * torch.randn(c, c))  # a learnt, dense channel-weight matrix
    expected = torch.zeros(c, n)
    for j in range(c):
        if similarity == "dot":
            sims = torch.stack([q[0, j] @ q[0, k] for k in range(c)])
        else:
            sims = torch.stack([torch.cosine_similarity(q[0, j], q[0, k], dim=0) for k in range(c)])
        w_c = torch.softmax(sims, 0)
        m_w = torch.tensor([1.0 if (abs(k - j) <= 1 and 0 < j < c - 1) or k == j else 0.0 for k in range(c)])
        a_j = (1 + alpha * m_w * w_c) * mixer.cal[j]
        for k in range(n):
            expected[j, k] = a_j @ q[0, :, k]
    assert torch.allclose(mixer(q, alpha, similarity)[0], expected.detach(), atol=1e-5)


def test_bcma_similarity_cosine_is_scale_free_dot_is_not():
    """Variant difference: the paper's cosine channel attention does not depend on the
    feature scale (the output scales with the input); the code's dot product does."""
    torch.manual_seed(4)
    q = torch.randn(1, 8, 6)
    mixer = ChannelAttention(8)
    assert torch.allclose(mixer(3 * q, 0.2, "cosine"), 3 * mixer(q, 0.2, "cosine"), atol=1e-5)
    assert not torch.allclose(mixer(3 * q, 0.2, "dot"), 3 * mixer(q, 0.2, "dot"), atol=1e-3)


def test_bcma_channel_weights_are_one_parameter_with_scaled_gradient():
    q = torch.randn(1, 6, 4)
    grads = {}
    for scale in (1.0, 1e-4):
        mixer = ChannelAttention(6, lr_scale=scale)
        mixer(q, 0.2).sum().backward()
        grads[scale] = mixer.cal.grad
        assert [name for name, _ in mixer.named_parameters()] == ["cal"]
        assert list(mixer.state_dict()) == ["cal"]  # the neighbour band is rebuilt, not saved
    assert torch.allclose(grads[1e-4], 1e-4 * grads[1.0])
    assert torch.equal(banded(4, (0.3, 0.8, 0.3)), torch.tensor(
        [[1.0, 0, 0, 0], [0.3, 0.8, 0.3, 0], [0, 0.3, 0.8, 0.3], [0, 0, 0, 1.0]]))


# -- FSPA ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "cols", "clusters"),
                         [(12, 12, 1), (15, 10, 2), (25, 10, 2), (16, 16, 3), (30, 30, 5)])
def test_cluster_count_follows_the_area_rule(rows, cols, clusters):
    """min(round(area / 100), 5), half to even (150 -> 2, 250 -> 2); below 2 no clustering."""
    assert cluster_count(rows * cols, 100.0, 5) == clusters
    net = DSPNet.from_keywords(Identity(3), variant="paper")
    plan = net._cluster_plan(_mask(32, 32, 1, 1 + rows, 1, 1 + cols))
    assert (plan is None) if clusters < 2 else (plan["seeds"].shape == (clusters, 2))


def _reference_seeds(mask: np.ndarray, n: int) -> np.ndarray:
    """ASGNet/DSPNet seed placement, written after the reference with scipy."""
    ys, xs = np.nonzero(mask)
    roi = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(float)
    out = []
    for _ in range(n):
        d = gaussian_filter(distance_transform_edt(roi), sigma=0.1)
        r, c = np.nonzero(d == d.max())
        out.append((r[0] + ys.min(), c[0] + xs.min()))
        roi[r[0], c[0]] = 0
    return np.array(out)


def test_seed_placement_matches_the_scipy_reference():
    rng = np.random.default_rng(5)
    masks = [np.ones((6, 9), bool), np.pad(np.ones((8, 5), bool), 3)]  # no background in the box; a box
    l_shape = np.zeros((20, 20), bool)
    l_shape[2:18, 2:7] = l_shape[12:18, 2:18] = True
    masks.append(l_shape)
    for _ in range(6):  # smoothed random blobs
        noise = gaussian_filter(rng.random((24, 24)), 2.5)
        masks.append(noise > np.quantile(noise, 0.6))
    for m in masks:
        ours = place_seeds(torch.from_numpy(m), 5).numpy()
        assert np.array_equal(ours, _reference_seeds(m, 5)), m.astype(int)


def test_seed_count_exact_keeps_seeds_the_reference_loses_on_row_or_column_0():
    strip = _mask(32, 32, 0, 2, 0, 32)  # 64 cells, 20 per cluster -> 3 seeds
    seeds = place_seeds(strip[0, 0].bool(), 3)
    assert seeds.tolist() == [[1, 31], [0, 0], [0, 16]]
    for count, kept in (("exact", 3), ("nonzero", 2)):  # nonzero rows: 1, columns: 2
        net = DSPNet.from_keywords(Identity(3), avg_cluster_area=20.0, seed_count=count)
        assert net._cluster_plan(strip)["seeds"].shape[0] == kept


def test_strided_mask_takes_every_sth_pixel_as_the_references_nearest_resize():
    mask = torch.from_numpy(np.random.default_rng(7).random((1, 256, 256)) > 0.5)
    assert torch.equal(strided_mask(mask, (32, 32)), mask[0, ::8, ::8])  # the papers' trunk: stride 8
    assert torch.equal(strided_mask(mask[:, :128, :128], (32, 32)), mask[0, :128:4, :128:4])  # small_cnn: 4
    # not a multiple (cv2 INTER_NEAREST): cell i takes pixel floor(i * 100 / 32)
    ramp = torch.arange(100.0)[:, None] * 1000 + torch.arange(100.0)[None]
    picked = [0, 3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 34, 37, 40, 43, 46,
              50, 53, 56, 59, 62, 65, 68, 71, 75, 78, 81, 84, 87, 90, 93, 96]
    assert torch.equal(strided_mask(ramp, (32, 32)), ramp[picked][:, picked])


def _notched_square():
    """256 x 256 image mask: pixels 40..160 squared, without the 16 x 16 corner 40..55."""
    m = torch.zeros(1, 256, 256)
    m[:, 40:161, 40:161] = 1
    m[:, 40:56, 40:56] = 0
    return m


def test_seed_mask_bilinear_and_strided_give_other_cluster_counts_and_seeds():
    """At stride 8 the bilinear mask samples pixels 8i+3, 8i+4 (cells 5..19 of the square),
    the strided one pixel 8i (cells 5..20): 15^2 - 4 = 221 cells (2 clusters) against
    16^2 - 4 = 252 (3 clusters); the notch is 2 x 2 cells in both."""
    m = _notched_square()
    feats = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bilinear = P.resize_mask(m, (32, 32))[0, 0] >= 0.5
    strided = strided_mask(m, (32, 32)).bool()
    assert int(bilinear.sum()) == 221 and int(strided.sum()) == 252
    expected = {"bilinear": [[19, 19], [5, 19]], "strided": [[20, 20], [5, 20], [20, 5]]}
    for rule, cells in (("bilinear", bilinear), ("strided", strided)):
        net = DSPNet.from_keywords(Identity(3), seed_mask=rule)
        plan = net.support_from_mask(feats, m)["plan"]
        assert plan["seeds"].tolist() == expected[rule]
        assert np.array_equal(_reference_seeds(cells.numpy(), len(expected[rule])), expected[rule])
        # the clustered cells are the bilinear mask's interior under both rules
        assert torch.equal(plan["roi"], torch.nonzero(bilinear.flatten()).flatten())


def _record_seed_masks(net, monkeypatch):
    """The ``seeds_from`` of every clustering plan ``net`` makes from now on."""
    seen, orig = [], net._cluster_plan

    def plan(fg, seeds_from=None):
        seen.append(seeds_from)
        return orig(fg, seeds_from)

    monkeypatch.setattr(net, "_cluster_plan", plan)
    return seen


def test_seed_mask_strided_needs_the_image_mask_and_reaches_evaluation_and_training(monkeypatch):
    m = _notched_square()[:, ::2, ::2]  # 128 x 128: stride 4 on the 32 x 32 grid
    feats = torch.randn(1, 3, 32, 32)
    net = DSPNet.from_keywords(Identity(3), seed_mask="strided")
    with pytest.raises(ValueError, match="support_from_mask"):
        net.support_state(feats, P.resize_mask(m, (32, 32)))
    assert net.support_from_mask(feats, m)["plan"]["seeds"].tolist() == [[20, 20], [5, 20], [20, 5]]
    no_fspa = DSPNet.from_keywords(Identity(3), seed_mask="strided", fspa=False)
    assert no_fspa.support_state(feats, P.resize_mask(m, (32, 32)))["plan"] is None  # nothing to seed
    for variant, plans in (("code", 1), ("paper", 2)):
        torch.manual_seed(20)
        net = registry.build("dspnet", {"backbone": "small_cnn", "feature_dim": 16},
                             {"variant": variant, "seed_mask": "strided"})
        sup, fg, qry = _episode(128)  # 24 x 16 cells: 4 clusters
        with torch.no_grad():
            net.eval()
            cached = net.predict(net.encode(qry), net.prepare_support(sup, fg), (128, 128))
            assert torch.allclose(net(sup, fg, qry)[0], cached, atol=1e-5)
        seen = _record_seed_masks(net, monkeypatch)
        _, losses = net.train()(sup, fg, qry)
        assert torch.isfinite(losses["align"])
        # main pass and (paper) alignment pass: seeds from image-resolution masks sampled on the grid
        assert len(seen) == plans and all(s is not None and s.shape == (32, 32) for s in seen)
        assert torch.equal(seen[0], strided_mask(fg, (32, 32)).bool())


def test_ran_grad_false_keeps_the_output_and_drops_the_attention_gradient():
    torch.manual_seed(19)
    feats, fg = torch.randn(1, 4, 16, 16), _mask(16, 16, 2, 14, 2, 14)
    grads, outs = [], []
    for flag in (True, False):
        sup, qry = feats.clone().requires_grad_(), torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        net = DSPNet.from_keywords(Identity(4), variant="paper", ran_grad=flag, bcma=False).eval()
        out = net.score(qry, net.support_state(sup, fg))
        out.sum().backward()
        outs.append(out.detach())
        grads.append(sup.grad)
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(grads[0], grads[1])


def test_fspa_with_one_cluster_is_the_masked_average_prototype():
    torch.manual_seed(6)
    feats, qry = torch.randn(1, 5, 16, 16), torch.randn(1, 5, 16, 16)
    small = _mask(16, 16, 3, 11, 4, 12)  # 64 cells -> round(0.64) = 1 cluster
    net = DSPNet.from_keywords(Identity(5), variant="paper", ran=False, bcma=False).eval()
    st = net.support_state(feats, small)
    assert st["plan"] is None
    assert torch.allclose(net.prototypes(qry, st)["fg"][:, 0], P.masked_average(feats, small), atol=1e-6)
    # with RAN: the masked average of the RAN output
    net = DSPNet.from_keywords(Identity(5), variant="paper", bcma=False).eval()
    fg = net.prototypes(qry, net.support_state(feats, small))["fg"][:, 0]
    assert torch.allclose(fg, P.masked_average(resemblance_attention(feats, qry), small), atol=1e-5)


def test_fspa_softmax_axis_positions_in_code_clusters_in_paper():
    """Variant difference: with k identical prototypes c and a mask over all n cells,
    the code's spatial softmax gives each prototype a full unit of attention
    (P = k c / n), the paper's softmax over clusters a convex mix per cell (P = c)."""
    torch.manual_seed(7)
    n, k = 12, 3
    c = torch.randn(1, 4)
    mask = torch.ones(1, n)
    feats = torch.randn(1, 4, n)
    code = fspa_code(torch.randn(1, n, k), mask, c[:, None].expand(1, k, 4))
    paper = fspa_paper(feats, mask, c[..., None].expand(1, 4, k))
    assert torch.allclose(code, k * c / n, atol=1e-5)
    assert torch.allclose(paper, c, atol=1e-5)


def test_fspa_similarity_dot_in_code_cosine_in_paper():
    """Variant difference: the paper's cosine attention is scale-free (scaling the
    features and centres scales P_f), the code's raw dot-product logits sharpen."""
    torch.manual_seed(8)
    feats, centres, mask = torch.randn(1, 4, 10), torch.randn(1, 4, 3), torch.rand(1, 10)
    assert torch.allclose(fspa_paper(5 * feats, mask, 5 * centres), 5 * fspa_paper(feats, mask, centres), atol=1e-5)
    logits = torch.einsum("bcn,bck->bnk", feats, centres)
    protos = centres.transpose(1, 2)
    assert not torch.allclose(fspa_code(25 * logits, mask, 5 * protos), 5 * fspa_code(logits, mask, protos), atol=1e-3)


def test_code_residual_and_one_prototype_fallback_vs_paper():
    """Variant difference (FSPA residual, fallback under min_clusters): with one
    cluster the code attends with p0 = MAP(F^) and adds MAP(F_s) back
    (P_f = MAP + fspa_code(F^T p0, m, p0)); the paper's P_f is the masked average."""
    torch.manual_seed(9)
    feats, qry = torch.randn(1, 5, 16, 16), torch.randn(1, 5, 16, 16)
    small = _mask(16, 16, 2, 10, 2, 9)
    for variant in ("code", "paper"):
        net = DSPNet.from_keywords(Identity(5), variant=variant, ran=False, bcma=False).eval()
        p_f = net.prototypes(qry, net.support_state(feats, small))["fg"][:, -1]
        p0 = P.masked_average(feats, small)
        if variant == "code":
            logits = torch.einsum("bcn,bc->bn", feats.flatten(2), p0)[..., None]
            expected = p0 + fspa_code(logits, small.flatten(1), p0[:, None])
            assert not torch.allclose(p_f, p0, atol=1e-4)
        else:
            expected = p0
        assert torch.allclose(p_f, expected, atol=1e-5)


def test_clustering_and_bcma_see_the_raw_support_in_code_the_ran_output_in_paper():
    """Variant difference (FSPA and BCMA inputs): the code clusters the raw support
    once per support (its prototypes do not depend on the query); the paper clusters
    and pools the RAN output, so both prototypes change with the query."""
    torch.manual_seed(10)
    feats = torch.randn(1, 6, 32, 32)
    big = _mask(32, 32, 4, 24, 6, 22)  # 320 cells -> 3 clusters
    q1, q2 = torch.randn(1, 6, 32, 32), torch.randn(1, 6, 32, 32)
    code = DSPNet.from_keywords(Identity(6), variant="code").eval()
    st = code.support_state(feats, big)
    plan = st["plan"]
    init = torch.cat([feats.flatten(2)[:, :, plan["seed_idx"]], plan["seeds"].t()[None].float()], 1)
    raw = cluster_centres(feats.flatten(2)[:, :, plan["roi"]], plan["roi_pos"], init, 10, 100.0, 100.0)
    assert torch.allclose(st["centres"], raw[0])
    c1, c2 = code.prototypes(q1, st), code.prototypes(q2, st)
    assert torch.equal(c1["bg"], c2["bg"]) and torch.equal(c1["fg"][:, :-1], c2["fg"][:, :-1])
    paper = DSPNet.from_keywords(Identity(6), variant="paper").eval()
    st = paper.support_state(feats, big)
    p1, p2 = paper.prototypes(q1, st), paper.prototypes(q2, st)
    assert not torch.allclose(p1["bg"], p2["bg"]) and not torch.allclose(p1["fg"], p2["fg"])
    # RAN feeds nothing but FSPA in the code: without FSPA the output ignores RAN
    nofspa = [DSPNet.from_keywords(Identity(6), variant="code", fspa=False, ran=r).eval() for r in (True, False)]
    s0, s1 = (n.score(q1, n.support_state(feats, big)) for n in nofspa)
    assert torch.equal(s0, s1)


def test_foreground_prototypes_local_plus_global_in_code_one_in_paper():
    torch.manual_seed(11)
    feats, qry = torch.randn(1, 4, 32, 32), torch.randn(1, 4, 32, 32)
    big = _mask(32, 32, 0, 16, 0, 16)
    code = DSPNet.from_keywords(Identity(4), variant="code").eval()  # test window 2: 64 local cells + P_f
    assert code.prototypes(qry, code.support_state(feats, big))["fg"].shape == (1, 65, 4)
    paper = DSPNet.from_keywords(Identity(4), variant="paper").eval()
    assert paper.prototypes(qry, paper.support_state(feats, big))["fg"].shape == (1, 1, 4)


@pytest.mark.parametrize(("variant", "plans"), [("code", 1), ("paper", 2)])
def test_alignment_pass_clusters_only_in_the_paper_variant(variant, plans, monkeypatch):
    """Variant difference: the reference's alignLoss uses MAP-attention (no clustering)."""
    torch.manual_seed(12)
    net = DSPNet.from_keywords(Identity(4), variant=variant).train()
    calls = []
    orig = net._cluster_plan
    monkeypatch.setattr(net, "_cluster_plan", lambda *a: calls.append(1) or orig(*a))
    img = torch.randn(1, 4, 32, 32)
    net(img, _mask(32, 32, 4, 28, 4, 28)[:, 0], img.clone())
    assert len(calls) == plans


# -- off switches -------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_code_variant_with_every_module_off_is_ssl_alpnet(training):
    torch.manual_seed(13)
    feats, qry = torch.randn(1, 8, 32, 32), torch.randn(2, 8, 32, 32)
    fg = _mask(32, 32, 5, 25, 3, 20)
    dsp = DSPNet.from_keywords(Identity(8), ran=False, fspa=False, bcma=False).train(training)
    alp = SSLALPNet(Identity(8)).train(training)
    assert torch.allclose(dsp.score(qry, dsp.support_state(feats, fg)), alp.score(qry, alp.support_state(feats, fg)),
                          atol=1e-5)


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_each_switch_changes_the_output_and_off_reduces_to_the_simpler_operator(variant):
    torch.manual_seed(14)
    feats, qry = torch.randn(1, 6, 32, 32), torch.randn(1, 6, 32, 32)
    fg = _mask(32, 32, 4, 26, 5, 21)  # 352 cells: clustering, local fg prototypes

    def build(**kw):
        return DSPNet.from_keywords(Identity(6), variant=variant, **kw).eval()

    def run(net):
        st = net.support_state(feats, fg)
        return net.score(qry, st), net.prototypes(qry, st)

    full, _ = run(build())
    for switch in ("ran", "fspa", "bcma"):
        off = run(build(**{switch: False}))[0]
        assert not torch.equal(off, full), switch
        if not (variant == "code" and switch == "ran"):
            assert not torch.allclose(off, full, atol=1e-3), switch
    # the code's RAN only shifts FSPA's logits by a near-constant (docs/methods.md): tiny effect
    assert torch.allclose(run(build(ran=False))[0], full, atol=1e-3) == (variant == "code")
    # RAN off: the support feature itself (paper: FSPA and BCMA off leave masked average and pooling)
    base = feats if variant == "code" else resemblance_attention(feats, qry)
    _, protos = run(build(fspa=False, bcma=False))
    assert torch.allclose(protos["fg"][:, -1], P.masked_average(base, fg), atol=1e-5)
    assert torch.allclose(protos["bg"][0], P.local_prototypes(base, 1 - fg, 2, 0.95), atol=1e-5)
    _, protos = run(build(ran=False, fspa=False, bcma=False))
    assert torch.allclose(protos["fg"][:, -1], P.masked_average(feats, fg), atol=1e-6)
    assert torch.allclose(protos["bg"][0], P.local_prototypes(feats, 1 - fg, 2, 0.95), atol=1e-6)


def test_empty_background_policy():
    feats = torch.randn(1, 3, 8, 8)
    full = torch.ones(1, 1, 8, 8)
    for variant in ("code", "paper"):
        net = DSPNet.from_keywords(Identity(3), variant=variant, ran=False).eval()
        bg = net.prototypes(feats, net.support_state(feats, full))["bg"]
        assert bg.shape[-2:] == (1, 3)
        with pytest.raises(EmptyPrototypeSet):
            strict = DSPNet.from_keywords(Identity(3), variant=variant, ran=False, empty_bg="raise").eval()
            strict.support_state(feats, full)


# -- persistence, caching, training ---------------------------------------------------------


def _episode(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    sup, qry = torch.randn(1, 3, size, size, generator=g), torch.randn(1, 3, size, size, generator=g)
    fg = torch.zeros(1, size, size)
    fg[:, size // 8: 7 * size // 8, size // 4: 3 * size // 4] = 1
    return sup, fg, qry


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_saved_and_reloaded_model_gives_identical_logits(variant):
    torch.manual_seed(15)
    cfg = {"backbone": "small_cnn", "feature_dim": 16}
    net = registry.build("dspnet", cfg, {"variant": variant}).eval()
    with torch.no_grad():
        net.channel_attention.cal.add_(0.05 * torch.randn(16, 16))  # as if trained
    sup, fg, qry = _episode(64)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert "channel_attention.cal" in state
    fresh = registry.build("dspnet", cfg, {"variant": variant}).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(net(sup, fg, qry)[0], fresh(sup, fg, qry)[0])
    # the reference's behaviour: the channel weights stay at their initialisation
    ref = registry.build("dspnet", cfg, {"variant": variant, "restore_cal": False}).eval()
    ref.load_state_dict(state)
    assert torch.equal(ref.channel_attention.cal, banded(16, (0.3, 0.8, 0.3)))
    with torch.no_grad():
        assert not torch.allclose(net(sup, fg, qry)[0], ref(sup, fg, qry)[0])


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_cached_support_state_equals_forward_in_eval(variant):
    torch.manual_seed(16)
    net = registry.build("dspnet", {"backbone": "small_cnn", "feature_dim": 16}, {"variant": variant}).eval()
    sup, fg, _ = _episode(64)
    qry = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full, losses = net(sup, fg, qry)
        cached = net.predict(net.encode(qry), net.prepare_support(sup, fg), (64, 64))
        one = net.predict(net.encode(qry[1:]), net.prepare_support(sup, fg), (64, 64))
    assert losses == {}
    assert torch.allclose(full, cached, atol=1e-5)
    assert torch.allclose(cached[1:], one, atol=1e-5)  # queries of a batch are independent


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_forward_in_train_mode_returns_logits_and_a_differentiable_alignment_loss(variant):
    torch.manual_seed(17)
    net = registry.build("dspnet", {"backbone": "small_cnn", "feature_dim": 16}, {"variant": variant}).train()
    sup, fg, qry = _episode(64)
    logits, losses = net(sup, fg, qry)
    assert logits.shape == (1, 2, 64, 64)
    assert losses["align"].requires_grad and torch.isfinite(losses["align"])
    losses["align"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.parameters())


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_training_step_with_the_small_backbone_at_128(variant):
    torch.manual_seed(18)
    net = registry.build("dspnet", {"backbone": "small_cnn", "feature_dim": 64}, {"variant": variant}).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    sup, fg, qry = _episode(128)
    before = [p.detach().clone() for p in net.parameters()]
    logits, losses = net(sup, fg, qry)
    loss = P.segmentation_loss(logits, fg, 0.05, 1.0) + losses["align"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert sum(not torch.equal(a, b) for a, b in zip(before, net.parameters())) == len(before)


def test_schema_defaults_build_the_default_parameters():
    props = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))["properties"]["method_params"]["properties"]["dspnet"]
    defaults = {k: v["default"] for k, v in props["properties"].items()}
    net = registry.build("dspnet", {"backbone": "small_cnn", "feature_dim": 16}, defaults)
    assert isinstance(net, DSPNet) and net.params == DSPNetParams() and net.params.variant == "code"
    assert net.params.bcma_taps == (0.3, 0.8, 0.3)  # a list in the config, a tuple in the frozen object
