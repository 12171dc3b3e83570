"""ADNet-lineage supervoxel episodes (fsmis.data.volume_episodes)."""

import math

import numpy as np
import pytest
import tiny_training as tiny
import torch
from tiny_training import AUG

from fsmis import checkpoint as ckpt
from fsmis import train as T
from fsmis.data.augment import affine_matrix, warp
from fsmis.data.volume_episodes import (
    SupervoxelEpisodes,
    draw_geometry,
    lineage_affine,
    lineage_gamma,
    standardize,
)

MIN = 640  # pixels of a 256 x 256 slice: 10 pixels of the 32 x 32 slices here


@pytest.fixture(autouse=True)
def _one_thread():
    """32 x 32 slices: a thread pool only adds overhead (20x on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _volume(seed=0):
    """6 slices of 32 x 32. Supervoxel 1: 64 px on z 0-3; 2: 16 px on z 1 and 4 (no two
    adjacent); 3: 4 px on z 2-3 (too small); 5: 64 px on z 4-5."""
    img = np.random.default_rng(seed).normal(size=(6, 32, 32)).astype(np.float32)
    sv = np.zeros((6, 32, 32), np.int32)
    sv[0:4, 0:8, 0:8] = 1
    sv[[1, 4], 8:12, 8:12] = 2
    sv[2:4, 20:22, 20:22] = 3
    sv[4:6, 24:32, 0:8] = 5
    return img, sv


def _episodes(sampling="candidates", seed=0, excluded=None, volumes=None):
    volumes = volumes or [_volume()]
    return SupervoxelEpisodes([v[0] for v in volumes], [v[1] for v in volumes], AUG, seed=seed,
                              excluded=excluded, sampling=sampling, min_size=MIN)


def _pairs(ep, n=300):
    """(volume, id, lower slice, upper slice) of n accepted draws (no augmentation)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        vi, k, a, b = ep._draw(gen)
        out.append((vi, k, min(a, b), max(a, b)))
    return out


def test_support_and_query_are_different_slices_through_the_supervoxel():
    img, sv = _volume()
    for sampling in ("candidates", "reference", "adnet"):
        ep = _episodes(sampling)
        for _ in range(40):
            e = ep.sample()
            (_, zs), (_, zq), k = e["slice"], e["query_slice"], e["supervoxel"]
            assert zs != zq and (sv[zs] == k).any() and (sv[zq] == k).any()
            if sampling != "adnet":
                assert abs(zs - zq) == 1
            # the image no augmentation touched is the slice itself, with its exact label
            for side, z, im, lab in (("support", zs, e["sup_img"], e["sup_fg"]), ("query", zq, e["qry_img"],
                                                                                   e["qry_label"])):
                if e["gamma_on"] != side and e["geometry_on"] != side:
                    assert torch.equal(im[0, 0], torch.from_numpy(img[z]))
                    assert torch.equal(lab[0].bool(), torch.from_numpy(sv[z] == k))


def test_output_matches_superpixel_episodes():
    e = _episodes().sample()
    assert e["sup_img"].shape == e["qry_img"].shape == (1, 3, 32, 32) and e["sup_img"].dtype == torch.float32
    assert torch.equal(e["sup_img"][:, 0], e["sup_img"][:, 2])
    assert e["sup_fg"].shape == (1, 32, 32) and e["sup_fg"].dtype == torch.float32
    assert e["qry_label"].shape == (1, 32, 32) and e["qry_label"].dtype == torch.long
    assert set(e["sup_fg"].unique().tolist()) <= {0.0, 1.0} and set(e["qry_label"].unique().tolist()) <= {0, 1}


def test_accepted_pairs_of_each_sampler():
    cand = set(_pairs(_episodes("candidates")))
    assert cand == {(0, 1, 0, 1), (0, 1, 1, 2), (0, 1, 2, 3), (0, 5, 4, 5)}  # 2: not adjacent, 3: too small
    assert set(_pairs(_episodes("reference"))) == cand
    # ADNet: neighbours in the supervoxel's slice list (1 and 4 for id 2)
    assert set(_pairs(_episodes("adnet"))) == cand | {(0, 2, 1, 4)}
    assert len(_episodes("candidates")) == 6 and len(_episodes("adnet")) == 6


def test_excluded_slices_are_never_used():
    ex = {(0, 2)}
    for sampling in ("candidates", "reference", "adnet"):
        ep = _episodes(sampling, excluded=ex)
        pairs = set(_pairs(ep))
        assert all(2 not in (a, b) for _, _, a, b in pairs)
        zs = {z for _ in range(30) for z in (ep.sample()["slice"][1], ep.sample()["query_slice"][1])}
        assert 2 not in zs
    assert set(_pairs(_episodes("candidates", excluded=ex))) == {(0, 1, 0, 1), (0, 5, 4, 5)}
    # ADNet pairs list neighbours, so slices 1 and 3 of id 1 pair up across the excluded 2
    assert (0, 1, 1, 3) in set(_pairs(_episodes("adnet", excluded=ex)))
    with pytest.raises(ValueError, match="no training scan"):
        _episodes(excluded={(0, z) for z in range(6)})


def test_reference_picks_a_run_first_the_fix_a_pair():
    img = np.zeros((7, 32, 32), np.float32)
    sv = np.zeros((7, 32, 32), np.int32)
    sv[[0, 1, 3, 4, 5, 6], :8, :8] = 1  # runs {0, 1} (1 pair) and {3..6} (3 pairs)
    ref = [p[2] for p in _pairs(_episodes("reference", volumes=[(img, sv)]), 2000)]
    fix = [p[2] for p in _pairs(_episodes("candidates", volumes=[(img, sv)]), 2000)]
    assert ref.count(0) / 2000 == pytest.approx(1 / 2, abs=0.04)  # run uniform, then start
    assert fix.count(0) / 2000 == pytest.approx(1 / 4, abs=0.04)  # pair uniform


def test_scans_without_pairs_escape_or_are_dropped():
    img, sv = _volume()
    only2 = np.where(sv == 2, 2, 0)  # no two adjacent slices: the reference moves to another scan
    only3 = np.where(sv == 3, 3, 0)  # too small everywhere: the reference would loop forever
    vols = [(img, sv), (img, only2), (img, only3)]
    assert [p[0] for p in _episodes("reference", volumes=vols).pools] == [0, 1]
    assert {p[0] for p in _pairs(_episodes("reference", volumes=vols))} == {0}
    assert [p[0] for p in _episodes("candidates", volumes=vols).pools] == [0]
    assert {p[0] for p in _pairs(_episodes("adnet", volumes=vols))} == {0, 1}
    for sampling in ("candidates", "reference", "adnet"):
        with pytest.raises(ValueError, match="no training scan"):
            _episodes(sampling, volumes=[(img, only3)])


def test_same_seed_same_episodes():
    a, b, c = _episodes(seed=3), _episodes(seed=3), _episodes(seed=4)
    ea, eb, ec = [[e.sample() for _ in range(6)] for e in (a, b, c)]
    for x, y in zip(ea, eb):
        assert x["slice"] == y["slice"] and x["supervoxel"] == y["supervoxel"]
        assert torch.equal(x["sup_img"], y["sup_img"]) and torch.equal(x["qry_label"], y["qry_label"])
    assert any(not torch.equal(x["qry_img"], y["qry_img"]) for x, y in zip(ea, ec))


def _same(x, y):
    return all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x) and x.keys() == y.keys()


@pytest.mark.parametrize("sampling", ["candidates", "reference"])
def test_episode_k_depends_on_the_seed_and_k_only(sampling):
    """A resumed run (or a worker) asks for episode k directly and gets what the
    uninterrupted sequence gave at k, in any order; other seeds give other episodes."""
    full = _episodes(sampling, seed=7)
    stream = [full.sample() for _ in range(8)]
    fresh = _episodes(sampling, seed=7)
    for k in (6, 5, 7, 0):  # out of order, after a "restart"
        assert _same(fresh.episode(k), stream[k]), k
    assert not any(torch.equal(a["qry_img"], b["qry_img"]) for a, b in zip(stream, stream[1:]))
    other = _episodes(sampling, seed=8)
    assert not any(torch.equal(other.episode(k)["qry_img"], stream[k]["qry_img"]) for k in range(8))


@pytest.mark.slow  # three short training runs: ~10 s on a loaded 2-core machine
def test_training_resumes_to_the_same_model(tmp_path):
    cfg = dict(steps=4, lr=1e-3, momentum=0.9, weight_decay=5e-4, lr_step=2, lr_gamma=0.5, bg_weight=0.05,
               fg_weight=1.0, align_weight=1.0, checkpoint_every=2, log_every=1)

    class Killer:
        def log_metrics(self, metrics, step=None):
            if step == 3:
                raise KeyboardInterrupt

    T.train(tiny.model(), _episodes(seed=1), cfg, tmp_path / "a" / "model.pt", tmp_path / "a" / "log.tsv", {},
            device="cpu")
    b = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny.model(), _episodes(seed=1), cfg, b / "model.pt", b / "log.tsv", {}, device="cpu",
                tracker=Killer())
    T.train(tiny.model(), _episodes(seed=1), cfg, b / "model.pt", b / "log.tsv", {}, device="cpu")
    sa, sb = ckpt.load(tmp_path / "a" / "model.pt"), ckpt.load(b / "model.pt")
    for k in sa["state_dict"]:
        assert torch.allclose(sa["state_dict"][k].float(), sb["state_dict"][k].float(), atol=1e-6), k


def test_each_augmentation_on_one_image_with_the_reference_gamma_range():
    img, sv = _volume()
    ep = _episodes(seed=5)
    es = [ep.sample() for _ in range(200)]
    for key, value in (("gamma_on", "query"), ("geometry_on", "query")):
        assert sum(e[key] == value for e in es) / len(es) == pytest.approx(0.5, abs=0.1)
    assert sum(e["slice"][1] > e["query_slice"][1] for e in es) / len(es) == pytest.approx(0.5, abs=0.1)
    gs = []
    for e in es:
        if e["gamma_on"] == e["geometry_on"]:
            continue
        side = e["gamma_on"]
        z = e["slice"][1] if side == "support" else e["query_slice"][1]
        out = (e["sup_img"] if side == "support" else e["qry_img"])[0, 0].double().numpy()
        x = img[z].astype(np.float64)
        lo, r = x.min(), x.max() - x.min() + 1e-5
        i = np.unravel_index(np.argmin(np.abs((x - lo) / r - 0.3)), x.shape)  # a mid-range pixel
        gs.append(math.log((out[i] - lo) / r) / math.log((x[i] - lo + 1e-5) / r))
    assert len(gs) > 40 and 0.5 - 1e-3 <= min(gs) < 0.6 and 1.4 < max(gs) <= 1.5 + 1e-3


def test_lineage_gamma_formula():
    x = torch.tensor([-1.0, 0.0, 0.5, 3.0])
    lo, r = -1.0, 4.0 + 1e-5
    want = [r * ((v - lo + 1e-5) / r) ** 0.7 + lo for v in x.tolist()]
    assert torch.allclose(lineage_gamma(x, 0.7), torch.tensor(want), atol=1e-6)


def test_geometry_parameter_ranges():
    gen = torch.Generator().manual_seed(0)
    draws = [draw_geometry(AUG, gen, 64) for _ in range(300)]
    px = 64 / 256
    for key, lo, hi in (("rot", -5, 5), ("shear", -5, 5), ("tx", -5 * px, 5 * px), ("ty", -5 * px, 5 * px),
                        ("zoom", 0.9, 1.2)):
        v = [d[key] for d in draws]
        assert lo <= min(v) < lo + 0.1 * (hi - lo) and hi - 0.1 * (hi - lo) < max(v) <= hi, key
    disp = torch.stack([d["disp"] for d in draws])
    assert disp.shape == (300, 2, 64, 64) and disp.abs().max() <= 10 * px  # blurred U(-1, 1) times alpha
    assert draw_geometry(dict(AUG, elastic_alpha=0), gen, 64)["disp"] is None


def _translation(x, y):
    return np.array([[1, 0, x], [0, 1, y], [0, 0, 1.0]])


@pytest.mark.parametrize("shear_about", ["centre", "corner"])
def test_affine_in_pixel_coordinates(shear_about):
    rot, tx, ty, sh, zm, size = 4.0, 1.5, -2.0, -3.0, 1.1, 40
    c = (size - 1) / 2  # pixel centres 0..size-1, x = column, y = row
    a, s = math.radians(rot), math.radians(sh)
    R = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    S = np.array([[1, -math.sin(s), 0], [0, math.cos(s), 0], [0, 0, 1]])
    Z = np.diag([zm, zm, 1.0])
    about_c = lambda m: _translation(c, c) @ m @ _translation(-c, -c)  # noqa: E731
    shear = S if shear_about == "corner" else about_c(S)  # cv2's shear acts about pixel (0, 0)
    pixel = about_c(Z) @ shear @ _translation(tx, ty) @ about_c(R)
    centred = _translation(-c, -c) @ pixel @ _translation(c, c)
    got = lineage_affine(rot, tx, ty, sh, zm, size, shear_about).double().numpy()
    np.testing.assert_allclose(got, centred, atol=1e-5)
    if shear_about == "centre":
        assert torch.allclose(lineage_affine(rot, tx, ty, sh, zm, size), affine_matrix(rot, tx, ty, sh, zm))


def test_corner_shear_moves_the_centre():
    size = 64
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    blob = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 50)
    for about, dx in (("centre", 0.0), ("corner", -math.sin(math.radians(5)) * (size - 1) / 2)):
        out, _ = warp(blob, blob > 0.5, lineage_affine(0, 0, 0, 5, 1.0, size, about), None)
        cx = float((out * r[None, :]).sum() / out.sum())
        assert cx == pytest.approx(dx, abs=0.05)


def test_standardize():
    v = np.random.default_rng(0).uniform(0, 255, (3, 8, 8))
    z = standardize(v)
    assert z.dtype == np.float32 and abs(float(z.mean())) < 1e-5 and float(z.std()) == pytest.approx(1, abs=1e-5)
    with pytest.raises(ValueError, match="constant"):
        standardize(np.ones((2, 4, 4)))


def test_bad_arguments():
    img, sv = _volume()
    with pytest.raises(ValueError, match="sampling"):
        SupervoxelEpisodes([img], [sv], AUG, seed=0, sampling="uniform")
    with pytest.raises(ValueError, match="shear_about"):
        SupervoxelEpisodes([img], [sv], AUG, seed=0, shear_about="middle")
    with pytest.raises(ValueError, match="differ"):
        SupervoxelEpisodes([img], [sv[:, :16]], AUG, seed=0)
