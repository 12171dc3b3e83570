"""Superpixel episode sampling and augmentation."""

import numpy as np
import pytest
import torch
from tiny_training import AUG

from fsmis.data.augment import affine_matrix, augment, gamma, warp
from fsmis.data.episodes import SuperpixelEpisodes


def _data(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(4, 32, 32)).astype(np.float32)
    sp = np.zeros((4, 32, 32), np.int32)
    sp[:, :16, :16], sp[:, :16, 16:], sp[:, 16:, :] = 1, 2, 3
    sp[0] = 0  # slice without superpixels is never drawn
    return [img], [sp]


def test_same_seed_same_episodes_and_different_seed_differs():
    a = SuperpixelEpisodes(*_data(), AUG, seed=3)
    b = SuperpixelEpisodes(*_data(), AUG, seed=3)
    c = SuperpixelEpisodes(*_data(), AUG, seed=4)
    ea, eb, ec = [[e.sample() for _ in range(5)] for e in (a, b, c)]
    for x, y in zip(ea, eb):
        assert x["slice"] == y["slice"] and x["superpixel"] == y["superpixel"]
        assert torch.equal(x["sup_img"], y["sup_img"]) and torch.equal(x["qry_label"], y["qry_label"])
    assert any(not torch.equal(x["qry_img"], y["qry_img"]) for x, y in zip(ea, ec))


def test_episode_k_is_a_function_of_the_seed_and_k():
    """What a worker or a resumed run gets by asking for episode k is what the k-th
    sample() of an uninterrupted sampler gave."""
    seq = SuperpixelEpisodes(*_data(), AUG, seed=3)
    stream = [seq.sample() for _ in range(7)]
    fresh = SuperpixelEpisodes(*_data(), AUG, seed=3)
    for k in (5, 6, 0, 4):
        got, want = fresh.episode(k), stream[k]
        assert got["slice"] == want["slice"] and got["superpixel"] == want["superpixel"]
        assert torch.equal(got["sup_img"], want["sup_img"]) and torch.equal(got["qry_label"], want["qry_label"])
    with pytest.raises(ValueError, match="episode index must be >= 0"):
        fresh.episode(-1)


def test_each_epoch_visits_every_slice_once_in_a_new_order():
    ep = SuperpixelEpisodes(*_data(), AUG, seed=2)  # slices 1, 2, 3
    orders = [[ep._slice_of(e * 3 + p) for p in range(3)] for e in range(12)]
    assert all(sorted(o) == [0, 1, 2] for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # reshuffled per epoch


def test_episode_streams_are_distinct_and_seeded():
    from fsmis.data.episodes import ORDER_STREAM, episode_generator

    def first(seed, index, purpose=1):
        return torch.rand(4, generator=episode_generator(seed, index, purpose))

    draws = [first(5, k) for k in range(200)]
    assert len({tuple(d.tolist()) for d in draws}) == 200  # no two episodes share a stream
    assert torch.equal(first(5, 17), draws[17])
    assert not torch.equal(first(6, 17), draws[17]) and not torch.equal(first(5, 17, ORDER_STREAM), draws[17])
    assert torch.equal(first(-3, 2), first(-3, 2))  # negative seeds are valid


def test_episode_contents():
    ep = SuperpixelEpisodes(*_data(), AUG, seed=0)
    assert len(ep) == 3  # slice 0 has no superpixel
    e = ep.sample()
    assert e["sup_img"].shape == (1, 3, 32, 32) and torch.equal(e["sup_img"][:, 0], e["sup_img"][:, 2])
    assert e["sup_fg"].shape == (1, 32, 32) and set(e["sup_fg"].unique().tolist()) <= {0.0, 1.0}
    assert e["slice"][1] != 0 and 1 <= e["superpixel"] <= 3
    # support and query are two different views of the same superpixel
    assert not torch.equal(e["sup_img"], e["qry_img"])
    assert abs(e["sup_fg"].sum().item() - e["qry_label"].sum().item()) < 0.5 * e["sup_fg"].sum().item()


def test_excluded_slices_and_reference_sampling():
    ep = SuperpixelEpisodes(*_data(), AUG, seed=0, excluded={(0, 1), (0, 2)})
    assert ep.slices == [(0, 3)]
    ref = SuperpixelEpisodes(*_data(), AUG, seed=0, sampling="reference")
    ids = {ref.sample()["superpixel"] for _ in range(60)}
    assert ids == {1, 2}  # the reference never draws the last id
    uni = SuperpixelEpisodes(*_data(), AUG, seed=0)
    assert {uni.sample()["superpixel"] for _ in range(60)} == {1, 2, 3}
    with pytest.raises(ValueError, match="no training slice"):
        SuperpixelEpisodes(*_data(), AUG, seed=0, excluded={(0, 1), (0, 2), (0, 3)})


def test_identity_warp_and_translation():
    img = torch.zeros(16, 16)
    img[4:8, 2:6] = 1
    out, m = warp(img, img > 0, affine_matrix(0, 0, 0, 0, 1.0), None)
    assert torch.allclose(out, img, atol=1e-6) and torch.equal(m, img > 0)
    out, m = warp(img, img > 0, affine_matrix(0, 3, 0, 0, 1.0), None)  # +3 px in x
    assert torch.equal(m.nonzero()[:, 1].unique(), torch.tensor([5, 6, 7, 8]))


def test_rotation_by_90_degrees_about_centre():
    img = torch.zeros(8, 8)
    img[0, 0] = 1  # top-left pixel goes to top-right under +90 deg (x right, y down)
    out, _ = warp(img, img > 0, affine_matrix(90, 0, 0, 0, 1.0), None)
    assert out[0, 7] == pytest.approx(1.0, abs=1e-5)


def test_gamma_keeps_range():
    x = torch.linspace(-2, 3, 50)
    y = gamma(x, 2.0)
    assert y.min().item() == pytest.approx(-2, abs=1e-4) and y.max().item() == pytest.approx(3, abs=1e-4)
    assert y[25] < x[25]  # gamma > 1 darkens mid-tones


def test_augment_is_deterministic_for_a_generator_state():
    img = torch.randn(32, 32)
    m = img > 0
    a = augment(img, m, AUG, torch.Generator().manual_seed(1))
    b = augment(img, m, AUG, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_gaussian_blur_matches_a_reflect_padded_convolution():
    from fsmis.data.augment import _gaussian_blur

    # independent reference: explicit loops over the kernel with numpy-style reflection
    sigma, size = 1.5, 12
    k = int(4 * sigma) | 1
    r = np.arange(k) - k // 2
    w = np.exp(-(r**2) / (2 * sigma**2))
    w /= w.sum()
    x = np.random.default_rng(0).uniform(-1, 1, (size, size))
    padded = np.pad(x, k // 2, mode="reflect")
    expected = np.zeros_like(x)
    for i in range(size):
        for j in range(size):
            expected[i, j] = (w[:, None] * w[None, :] * padded[i:i + k, j:j + k]).sum()
    got = _gaussian_blur(torch.tensor(x, dtype=torch.float32)[None, None], sigma)[0, 0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # a constant field stays constant (the kernel sums to 1, reflection keeps it)
    flat = _gaussian_blur(torch.full((2, 1, size, size), 0.3), sigma)
    assert torch.allclose(flat, torch.full_like(flat, 0.3), atol=1e-6)
    with pytest.raises(ValueError, match="square"):
        _gaussian_blur(torch.zeros(1, 1, 8, 12), sigma)
