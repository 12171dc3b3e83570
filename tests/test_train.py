"""Training loop: loss goes down, checkpoints resume to the same model."""

import pandas as pd
import pytest
import tiny_training as tiny
import torch

from fsmis import checkpoint as ckpt
from fsmis import train as T
from fsmis.errors import InputError
from fsmis.models import registry

CFG = dict(steps=6, lr=1e-3, momentum=0.9, weight_decay=5e-4, lr_step=2, lr_gamma=0.5, bg_weight=0.05, fg_weight=1.0,
           align_weight=1.0, checkpoint_every=3, log_every=1)


class Killer:
    """A tracker that dies at a given step, like a job killed mid-run."""

    def __init__(self, at):
        self.at = at

    def log_metrics(self, metrics, step=None):
        if step == self.at:
            raise KeyboardInterrupt


def test_resume_after_kill_gives_the_same_model(tmp_path):
    """Killed at step 5 while two workers draw episodes ahead, resumed from step 3's
    checkpoint without workers: bit for bit the uninterrupted run's model."""
    meta = {"config_hash": "abc"}
    a = tmp_path / "a"
    T.train(tiny.model(), tiny.episodes(), CFG, a / "model.pt", a / "log.tsv", meta, device="cpu")
    b = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny.model(), tiny.episodes(), dict(CFG, workers=2), b / "model.pt", b / "log.tsv", meta,
                device="cpu", tracker=Killer(5))
    assert (b / "checkpoint.pt").exists() and not (b / "model.pt").exists()
    state = ckpt.load(b / "checkpoint.pt")
    assert state["step"] == 3 and "episodes" not in state  # the step is all the episodes need
    T.train(tiny.model(), tiny.episodes(), CFG, b / "model.pt", b / "log.tsv", meta, device="cpu")
    sa, sb = ckpt.load(tmp_path / "a" / "model.pt"), ckpt.load(b / "model.pt")
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    log = pd.read_csv(b / "log.tsv", sep="\t")
    assert log["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert log["lr"].tolist() == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4])
    assert not (b / "checkpoint.pt").exists()


def test_checkpoint_of_the_sequential_sampler_is_resumed_with_a_warning(tmp_path, caplog):
    """Checkpoints written before per-step episode streams carry the old sampler's
    state ("episodes"): their training is kept, the later episodes are the new ones."""
    b = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny.model(), tiny.episodes(), CFG, b / "model.pt", b / "log.tsv", {"config_hash": "h"}, device="cpu",
                tracker=Killer(4))
    state = ckpt.load(b / "checkpoint.pt")
    state["episodes"] = {"gen": torch.Generator().get_state(), "order": torch.tensor([2, 0], dtype=torch.long)}
    ckpt.save(state, b / "checkpoint.pt")
    with caplog.at_level("WARNING", logger="fsmis.train"):
        T.train(tiny.model(), tiny.episodes(), CFG, b / "model.pt", b / "log.tsv", {"config_hash": "h"}, device="cpu")
    said = [r.getMessage() for r in caplog.records]
    assert any("checkpoint.pt was written by the earlier sequential episode sampler: resumed at step 3" in m
               for m in said)
    assert pd.read_csv(b / "log.tsv", sep="\t")["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert (b / "model.pt").exists() and not (b / "checkpoint.pt").exists()


def test_checkpoint_of_another_configuration_is_kept_aside(tmp_path):
    b = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny.model(), tiny.episodes(), CFG, b / "model.pt", b / "log.tsv", {"config_hash": "old"}, device="cpu",
                tracker=Killer(4))
    T.train(tiny.model(), tiny.episodes(), CFG, b / "model.pt", b / "log.tsv", {"config_hash": "new"}, device="cpu")
    assert (b / "checkpoint.old.pt").exists()
    assert pd.read_csv(b / "log.tsv", sep="\t")["step"].iloc[0] == 1  # started fresh


def test_training_reduces_the_episode_loss(tmp_path):
    cfg = dict(CFG, steps=60, lr=1e-2, lr_step=1000, checkpoint_every=0, log_every=10)
    T.train(tiny.model(), tiny.episodes(), cfg, tmp_path / "model.pt", tmp_path / "log.tsv", {}, device="cpu")
    loss = pd.read_csv(tmp_path / "log.tsv", sep="\t")["query_loss"]
    assert loss.iloc[-1] < 0.7 * loss.iloc[0]


def test_corrupt_model_file_names_the_file(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="model.pt"):
        ckpt.load(bad)


def test_method_losses_that_need_the_query_label_are_trained(tmp_path):
    """IPLSL's self-learning loss needs the query label: the loop passes it and adds
    the method's extra losses (logged as other_loss)."""
    import pandas as pd

    from fsmis import train as T

    torch.manual_seed(0)
    model = registry.build("iplsl", {"backbone": "small_cnn", "feature_dim": 16}, {})
    assert model.takes_query_label
    episodes = tiny.episodes()
    cfg = {"steps": 4, "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, "lr_step": 1000, "lr_gamma": 0.95,
           "bg_weight": 0.05, "fg_weight": 1.0, "align_weight": 1.0, "log_every": 2, "checkpoint_every": 0}
    T.train(model, episodes, cfg, tmp_path / "model.pt", tmp_path / "log.tsv", {"method": "iplsl"})
    log = pd.read_csv(tmp_path / "log.tsv", sep="\t")
    assert (log["other_loss"] > 0).all()
    assert log["loss"].to_numpy() == pytest.approx(
        (log["query_loss"] + log["align_loss"] + log["other_loss"]).to_numpy(), rel=1e-5)
