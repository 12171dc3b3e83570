"""Episodes drawn ahead by worker processes (fsmis.data.prefetch): the same episodes
and the same model with 0 or 2 workers, clear errors when a worker fails."""

import os

import numpy as np
import pytest
import tiny_training as tiny
import torch
from tiny_training import AUG

from fsmis import checkpoint as ckpt
from fsmis import train as T
from fsmis.data.prefetch import EpisodeError, EpisodeStream, resolve_workers
from fsmis.data.volume_episodes import SupervoxelEpisodes

CFG = dict(steps=4, lr=1e-2, momentum=0.9, weight_decay=5e-4, lr_step=2, lr_gamma=0.5, bg_weight=0.05, fg_weight=1.0,
           align_weight=1.0, checkpoint_every=0, log_every=1)


@pytest.fixture(autouse=True)
def _one_thread():
    """32 x 32 episodes: a thread pool only adds overhead on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _supervoxels():
    img = np.random.default_rng(1).normal(size=(4, 32, 32)).astype(np.float32)
    sv = np.zeros((4, 32, 32), np.int32)
    sv[0:3, 0:12, 0:12] = 1
    sv[1:4, 16:32, 10:30] = 2
    return SupervoxelEpisodes([img], [sv], AUG, seed=11, min_size=640)


def _same(x, y):
    assert x.keys() == y.keys()
    for key in x:
        if torch.is_tensor(x[key]):
            assert torch.equal(x[key], y[key]), key
        else:
            assert x[key] == y[key], key


@pytest.mark.parametrize("make", [tiny.episodes, _supervoxels], ids=["superpixels", "supervoxels"])
def test_two_workers_give_the_episodes_of_the_training_process_in_step_order(make):
    episodes = make()
    want = [episodes.episode(k) for k in range(3, 9)]
    rng = torch.get_rng_state()
    for workers in (0, 2):
        with EpisodeStream(make(), 3, 9, "cpu", workers) as stream:
            got = list(stream)
        assert len(got) == 6
        for a, b in zip(got, want):
            _same(a, b)
    # the loader's worker seeds come from a private generator: methods that draw at
    # training time see the same global stream with or without workers
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_model_trained_with_two_workers_is_the_model_trained_without(tmp_path):
    models = {}
    for workers in (0, 2):
        out = tmp_path / str(workers)
        summary = T.train(tiny.model(), tiny.episodes(), dict(CFG, workers=workers), out / "model.pt",
                          out / "log.tsv", {}, device="cpu")
        assert summary["episode_wait_s"] >= 0
        models[workers] = ckpt.load(out / "model.pt")["state_dict"]
    for key, value in models[0].items():
        assert torch.equal(value, models[2][key]), key
    assert not all(torch.equal(v, tiny.model().state_dict()[k]) for k, v in models[0].items())  # it trained


class _Failing:
    """A sampler whose episode ``bad`` raises, or kills the process drawing it."""

    def __init__(self, bad, kill=False):
        self.inner, self.bad, self.kill = tiny.episodes(), bad, kill

    def episode(self, index):
        if index == self.bad:
            if self.kill:
                os._exit(3)  # a worker that dies without a Python error (out of memory, a signal)
            raise ValueError("superpixel map of case 7 is empty")
        return self.inner.episode(index)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_episode_names_the_step_and_the_cause(workers):
    with EpisodeStream(_Failing(4), 0, 8, "cpu", workers) as stream:
        got = [next(stream) for _ in range(4)]
        with pytest.raises(EpisodeError, match=r"^training step 5 got no episode: ValueError: superpixel map of case 7 "
                                               r"is empty \(in the training process|an episode worker") as err:
            next(stream)
    assert len(got) == 4
    assert ("episode worker process (of 2)" in str(err.value)) == (workers > 0)
    assert "\n" not in str(err.value)
    assert isinstance(err.value.__cause__, ValueError)  # the original, with the worker's traceback


def test_a_killed_worker_is_reported():
    # noticed while some step waits (EpisodeError), or first by the loader's SIGCHLD
    # handler, which raises its own RuntimeError wherever the main process is
    with pytest.raises(RuntimeError, match=r"worker .*(died|exited unexpectedly) .*exit code 3"):
        with EpisodeStream(_Failing(2, kill=True), 0, 8, "cpu", 1) as stream:
            for _ in range(8):
                next(stream)


def test_pinning_a_packed_episode_pins_its_buffer_only():
    """On CUDA the loader's pin thread pins what a worker sent: the one buffer; the
    layout (and values such as the slice tuple) must come through unchanged."""
    from torch.utils.data._utils.pin_memory import pin_memory

    from fsmis.data.prefetch import _pack, _unpack

    episode = tiny.episodes().episode(3)
    packed = _pack(episode)

    class Buffer:  # stands in for the uint8 tensor (pinning needs a GPU)
        def pin_memory(self):
            return packed.buf.clone()

    pinned = pin_memory(type(packed)(Buffer(), packed.layout))
    assert pinned.layout is packed.layout
    _same(_unpack(pinned, copy=True), episode)
    assert isinstance(_unpack(pinned, copy=False)["slice"], tuple)


def test_resolve_workers():
    assert [resolve_workers("auto", t) for t in (1, 2, 3, 16)] == [0, 1, 2, 4]
    assert resolve_workers(None, 8) == 4 and resolve_workers(0, 8) == 0 and resolve_workers(6, 1) == 6
    for bad in (-1, 1.5, "two", True):
        with pytest.raises(ValueError, match="train.workers must be an integer >= 0 or 'auto'"):
            resolve_workers(bad, 4)


def test_workers_are_left_out_of_the_model_config_hash():
    from fsmis.stages.training import _train_meta

    resolved = {"architecture": "ssl_alpnet", "params": {}}
    config = {"seed": 1, "model": {"backbone": "small_cnn"}, "train": {"steps": 10}, "preprocess": {},
              "superpixels": {}, "dataset": {"name": "phantom"}}

    def digest(train):
        return _train_meta("ssl_alpnet", "1", 0, "all", dict(config, train=train), resolved)["config_hash"]

    assert digest({"steps": 10}) == digest({"steps": 10, "workers": 3}) == digest({"steps": 10, "workers": "auto"})
    assert digest({"steps": 10}) != digest({"steps": 11})


def test_episode_wait_benchmark_prints_a_row_per_worker_count(capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import episode_wait

    assert episode_wait.main(["--configs", "small_cnn@32", "--workers", "0", "1", "--steps", "2", "--block", "1",
                              "--threads", "1", "--slices", "3"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("small_cnn@32")]
    assert [r[1] for r in rows] == ["0", "1"]
    for row in rows:
        wait, step, pct = map(float, row[2:5])
        assert step > 0 and wait >= 0 and pct == pytest.approx(100 * wait / step, rel=0.05, abs=0.05)  # printed rounded
