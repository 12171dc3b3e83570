"""3D supervoxels (ADNet lineage): flat blocks, the min_size pass, ids and body mask, the stable
edge sort, and the whole algorithm against a slow pure-Python transcription of it."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from fsmis.data import supervoxels as S

EXACT = {"min_size_area": None}  # min_size as given (no scaling to a 256 x 256 slice)


def _slow_felzenszwalb(vol, spacing_zyx, scale, min_size):
    """The algorithm written out plainly: 26-neighbour edges weighted by their length relative to
    isotropic spacing, sorted by weight with ties in (direction, raster) order, the threshold pass
    with float32 thresholds, the min_size pass; min-index roots; ids by first voxel."""
    nz, ny, nx = vol.shape
    s2 = (spacing_zyx[0] / spacing_zyx[2]) ** 2
    edges = []
    for di, (dz, dy, dx) in enumerate(S.DIRECTIONS):
        w = (dz * dz * s2 + dy * dy + dx * dx) / (dz * dz + dy * dy + dx * dx)
        for z, y, x in itertools.product(range(nz), range(ny), range(nx)):
            z2, y2, x2 = z - dz, y - dy, x - dx
            if 0 <= z2 < nz and 0 <= y2 < ny and 0 <= x2 < nx:
                a, b = (z * ny + y) * nx + x, (z2 * ny + y2) * nx + x2
                d = float(vol.flat[a]) - float(vol.flat[b])
                edges.append((np.sqrt(w * (d * d)), di, a, b))
    edges.sort(key=lambda e: (e[0], e[1], e[2]))
    parent = list(range(vol.size))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    size, inner = [1] * vol.size, [0.0] * vol.size
    k = scale / 255.0
    for c, _, a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb and c < min(np.float32(inner[ra] + k / size[ra]), np.float32(inner[rb] + k / size[rb])):
            lo, hi = min(ra, rb), max(ra, rb)
            parent[hi] = lo
            size[lo] += size[hi]
            inner[lo] = c
    for _, _, a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb and (size[ra] < min_size or size[rb] < min_size):
            lo, hi = min(ra, rb), max(ra, rb)
            parent[hi] = lo
            size[lo] += size[hi]
    roots = [root(i) for i in range(vol.size)]
    ids = {r: n for n, r in enumerate(sorted(set(roots)))}
    return np.array([ids[r] for r in roots]).reshape(vol.shape)


@pytest.mark.parametrize("quantised", [False, True])
def test_matches_slow_transcription(quantised):
    rng = np.random.default_rng(3)
    vol = rng.random((4, 6, 6)) * 255
    if quantised:  # many equal weights: the stable tie order decides
        vol = np.round(vol / 32) * 32
    spacing = (3.0, 1.0, 1.0)
    fast = S.felzenszwalb_3d(vol, spacing, scale=255 * 20, sigma=0, min_size=5)
    slow = _slow_felzenszwalb(vol, spacing, scale=255 * 20, min_size=5)
    assert fast.max() >= 3  # several segments, so the comparison means something
    np.testing.assert_array_equal(fast, slow)


def test_two_flat_blocks_give_two_supervoxels():
    vol = np.zeros((4, 10, 12), np.float32)  # air border, outside the body
    vol[:, 2:8, 2:6] = 100.0
    vol[:, 2:8, 6:10] = 200.0  # a step at x = 6
    sv = S.supervoxels_3d(vol, (5.0, 1.5, 1.5), min_size=1, **EXACT)
    expected = np.zeros(vol.shape, np.int32)
    expected[:, 2:8, 2:6] = 1  # numbered by first voxel in raster order
    expected[:, 2:8, 6:10] = 2
    assert sv.dtype == np.int32
    np.testing.assert_array_equal(sv, expected)


@pytest.mark.parametrize("min_size, expected", [(1, [0, 0, 0, 1, 2, 2]), (2, [0, 0, 0, 1, 1, 1]),
                                                (4, [0, 0, 0, 0, 0, 0])])
def test_min_size_pass(min_size, expected):
    # flat runs A (3 voxels), B (1), C (2); weights A-B 50, B-C 40. The threshold pass joins
    # only within runs. The min_size pass takes B-C (40) first: B (1 < 2) joins C; then A-B
    # (50) joins A only when A or BC is below min_size (4: both are 3).
    vol = np.array([10, 10, 10, 60, 100, 100], float).reshape(1, 1, 6)
    seg = S.felzenszwalb_3d(vol, (1.0, 1.0, 1.0), scale=1.0, sigma=0.0, min_size=min_size)
    np.testing.assert_array_equal(seg.ravel(), expected)


def _body_with_island():
    vol = np.zeros((2, 8, 8), np.float32)
    vol[:, 0, 5:7] = 100.0  # island: above the threshold, not the largest component
    vol[:, 3:8, 2:5] = 150.0
    vol[:, 3:8, 5:8] = 250.0
    return vol


def test_ids_consecutive_inside_body_zero_outside():
    vol = _body_with_island()
    sv = S.supervoxels_3d(vol, (1.0, 1.0, 1.0), min_size=1, **EXACT)
    expected = np.zeros(vol.shape, np.int32)
    expected[:, 3:8, 2:5] = 1
    expected[:, 3:8, 5:8] = 2
    np.testing.assert_array_equal(sv, expected)


def test_reference_ids_keep_gaps():
    # first voxels: air (0) -> id 0, renamed max + 1 = 4; island -> 1 (then masked: a gap);
    # the two body blocks -> 2, 3
    vol = _body_with_island()
    sv = S.supervoxels_3d(vol, (1.0, 1.0, 1.0), min_size=1, consecutive_ids=False, **EXACT)
    expected = np.zeros(vol.shape, np.int32)
    expected[:, 3:8, 2:5] = 2
    expected[:, 3:8, 5:8] = 3
    np.testing.assert_array_equal(sv, expected)


def test_mask_ids_by_hand():
    seg = np.array([[[0, 1, 2, 3, 0]]])
    mask = np.array([[[1, 0, 1, 1, 1]]], bool)
    np.testing.assert_array_equal(S.mask_ids(seg, mask, consecutive=False), [[[4, 0, 2, 3, 4]]])
    np.testing.assert_array_equal(S.mask_ids(seg, mask), [[[3, 0, 1, 2, 3]]])


def test_edge_weights_are_relative_lengths():
    s = 5.0 / 1.25
    expected = [(dz * dz * s * s + dy * dy + dx * dx) / (dz * dz + dy * dy + dx * dx) for dz, dy, dx in S.DIRECTIONS]
    np.testing.assert_allclose(S.edge_weights((5.0, 1.25, 1.25)), expected, rtol=1e-13)
    assert S.edge_weights((5.0, 1.25, 1.25))[-1] == 16.0  # pure z: s ** 2


def test_stable_sort_orders_by_exact_weight_then_index():
    rng = np.random.default_rng(0)
    n = 3000
    steps = np.concatenate([
        rng.random(1000) * 100,  # spread over many float32 exponents and digits
        np.full(1000, 7.25),  # exact ties
        1.0 + rng.integers(0, 50, 1000) * 2.0 ** -40,  # distinct doubles, one float32 key
    ])[rng.permutation(n)]
    flat = np.zeros(2 * n)
    flat[1::2] = steps  # each edge (2i+1) - (2i) along x weighs exactly steps[i]
    x_dir = S.DIRECTIONS.index((0, 0, 1))
    delta = np.zeros(13, np.int64)
    delta[x_dir] = 1
    code = (np.arange(1, 2 * n, 2) * 16 + x_dir).astype(np.int32)
    out = S._stable_sort(steps.astype(np.float32), code.copy(), flat, delta, np.ones(13))
    np.testing.assert_array_equal(out, code[np.argsort(steps, kind="stable")])


def test_tie_orders_agree_without_ties_and_are_deterministic():
    rng = np.random.default_rng(1)
    vol = ndimage.gaussian_filter(rng.random((5, 24, 24)), 1.0) * 1000
    a = S.supervoxels_3d(vol, (4.0, 1.0, 1.0), min_size=40, **EXACT)
    b = S.supervoxels_3d(vol, (4.0, 1.0, 1.0), min_size=40, tie_order="numpy", **EXACT)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, S.supervoxels_3d(vol, (4.0, 1.0, 1.0), min_size=40, **EXACT))
    sizes = np.bincount(a.ravel())[1:]
    assert a.max() >= 3 and (sizes > 0).all()  # consecutive ids, several supervoxels


def test_sigma_is_in_mm():
    rng = np.random.default_rng(2)
    vol = rng.random((4, 8, 8)) * 255
    spacing = (4.0, 2.0, 1.0)
    smoothed = ndimage.gaussian_filter(vol, 2.0 / np.array(spacing))
    np.testing.assert_array_equal(S.felzenszwalb_3d(vol, spacing, sigma=2.0, min_size=3),
                                  S.felzenszwalb_3d(smoothed, spacing, sigma=0.0, min_size=3))


def test_min_size_scaled_by_slice_area():
    # at 128 x 128 the default min_size 5000 (for a 256 x 256 slice) becomes 1250: a flat
    # 2000-voxel box stays a supervoxel; with 5000 as given it merges into its surroundings
    vol = np.full((10, 128, 128), 50.0)
    vol[:, 0:10, 0:10] = 0.0  # air corner: the body is everything else
    vol[2:7, 40:60, 40:60] = 200.0  # 2000 voxels: kept at 1250, merged at 5000
    scaled = S.supervoxels_3d(vol, (1.0, 1.0, 1.0))
    unscaled = S.supervoxels_3d(vol, (1.0, 1.0, 1.0), min_size_area=None)
    assert scaled.max() == 2 and unscaled.max() == 1
    assert np.unique(scaled[2:7, 40:60, 40:60]).size == 1 and scaled[0, 100, 100] != scaled[3, 50, 50]


def test_constant_volume_and_bad_params():
    assert not S.supervoxels_3d(np.full((2, 4, 4), 7.0), (1.0, 1.0, 1.0)).any()
    with pytest.raises(TypeError):
        S.supervoxels_3d(np.zeros((2, 4, 4)), (1.0, 1.0, 1.0), n_sv=5000)
    with pytest.raises(ValueError):
        S.supervoxels_3d(np.zeros((2, 4, 4)), (1.0, 1.0, 1.0), tie_order="quick")
    with pytest.raises(ValueError):
        S.supervoxels_3d(np.zeros((4, 4)), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("step, merged", [(0.1000000005, True), (0.1000000020, False)])
def test_threshold_is_float32_as_the_reference(step, merged):
    # k = 25.5 / 255 = 0.1 and float32(0.1) = 0.10000000149: a weight between the two merges
    # (the reference stores Int + k/|C| in a C float), one above float32(0.1) does not
    vol = np.array([0.0, step]).reshape(1, 1, 2)
    seg = S.felzenszwalb_3d(vol, (1.0, 1.0, 1.0), scale=25.5, sigma=0.0, min_size=1)
    assert (seg.max() == 0) == merged
