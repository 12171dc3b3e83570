"""Episodic training loop shared by all methods.

As the reference ``training.py``: SGD (lr 1e-3, momentum 0.9, weight decay 5e-4 on
all parameters), learning rate x0.95 every 1000 steps (stepped per iteration),
weighted cross-entropy (background 0.05, foreground 1) on the query plus the
method's alignment loss (weight 1), one episode per step.

A checkpoint (model, optimiser, scheduler, episode sampler and RNG states) is
written every ``checkpoint_every`` steps; a killed job restarts from it and
produces the same model as an uninterrupted run. Progress lines report step,
loss, rate and time left.

Precision (``cfg["amp"]``): ``fsmis.precision``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from fsmis import checkpoint as ckpt
from fsmis import paths
from fsmis.models.fewshot import EmptyPrototypeSet
from fsmis.models.prototypes import segmentation_loss
from fsmis.precision import amp_dtype, autocast_encoder, make_grad_scaler, pick_device

log = logging.getLogger(__name__)

LOG_COLUMNS = ["step", "loss", "query_loss", "align_loss", "other_loss", "lr", "skipped", "elapsed_s", "steps_per_s",
               "eta_s"]


def training_step(model, batch: dict, cfg: dict, opt, scaler=None, with_label: bool = False) -> dict:
    """One episode: forward, weighted query cross-entropy (the method's class weights,
    ``query_loss_weights``; ``train.bg_weight``/``fg_weight`` by default) + ``align_weight`` x alignment
    loss + the method's other (already weighted) losses, backward, optimiser step.
    Returns the four losses as 0-d tensors. Raises ``EmptyPrototypeSet`` (from the
    forward, before any update) when the method has no background prototype."""
    extra = {"qry_label": batch["qry_label"]} if with_label else {}
    logits, aux = model(batch["sup_img"], batch["sup_fg"], batch["qry_img"], **extra)
    device = logits.device
    q_loss = segmentation_loss(logits.float(), batch["qry_label"], *model.query_loss_weights(cfg))
    a_loss = aux.get("align", torch.zeros((), device=device)).float()
    o_loss = sum((v.float() for k, v in aux.items() if k != "align"), torch.zeros((), device=device))
    loss = q_loss + cfg["align_weight"] * a_loss + o_loss
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return {"loss": loss.detach(), "query_loss": q_loss.detach(), "align_loss": a_loss.detach(),
            "other_loss": o_loss.detach()}


def make_optimizer(model, cfg):
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    milestones = list(range(cfg["lr_step"], cfg["steps"] + 1, cfg["lr_step"]))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg["lr_gamma"])
    return opt, sched


def _to(batch, device):
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _episode_state(episodes) -> dict:
    return {"gen": episodes.gen.get_state(), "order": torch.tensor(episodes._order, dtype=torch.long)}


def _restore_episodes(episodes, state) -> None:
    episodes.gen.set_state(state["gen"])
    episodes._order = state["order"].tolist()


def train(model, episodes, cfg: dict, model_out, log_out, meta: dict, device=None, tracker=None) -> dict:
    """Train ``model`` on ``episodes`` for ``cfg['steps']`` steps.

    ``meta`` is stored in the checkpoint and model file (method, configuration,
    normalisation statistics); a resume file whose ``meta['config_hash']`` differs
    is set aside (renamed), never silently reused.
    """
    device = device or pick_device()
    model.to(device).train()
    opt, sched = make_optimizer(model, cfg)
    dtype = amp_dtype(cfg.get("amp", False), device)
    scaler = make_grad_scaler(dtype, device)
    # beside model.pt; undeclared to Snakemake on purpose (see workflow/rules/train.smk)
    resume_path = Path(paths.beside(model_out, "checkpoint"))
    rows: list[dict] = []
    start = 0
    if resume_path.exists():
        state = ckpt.load(resume_path)
        if state.get("meta", {}).get("config_hash") == meta.get("config_hash"):
            model.load_state_dict(state["state_dict"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            _restore_episodes(episodes, state["episodes"])
            torch.set_rng_state(state["torch_rng"])
            start = int(state["step"])
            rows = state["log_rows"]
            log.info("resuming from %s at step %d", resume_path, start)
        else:
            stale = Path(paths.beside(model_out, "stale_checkpoint",
                                      config_hash=state.get("meta", {}).get("config_hash") or "old"))
            resume_path.rename(stale)
            log.warning("checkpoint %s belongs to another configuration; kept as %s, starting fresh",
                        resume_path, stale)

    steps, every = int(cfg["steps"]), int(cfg["log_every"])
    acc = {"loss": 0.0, "query_loss": 0.0, "align_loss": 0.0, "other_loss": 0.0, "n": 0, "skipped": 0}
    # Methods whose own training losses need the query label (IPLSL's self-learning
    # loss) say so; their extra losses come back weighted and are added as they are.
    with_label = bool(getattr(model, "takes_query_label", False))
    t0 = time.perf_counter()
    elapsed_before = rows[-1]["elapsed_s"] if rows else 0.0
    with autocast_encoder(model, dtype, bool(cfg.get("channels_last", False))):
        for step in range(start + 1, steps + 1):
            batch = _to(episodes.sample(), device)
            try:
                losses = training_step(model, batch, cfg, opt, scaler, with_label)
            except EmptyPrototypeSet:
                # reference behaviour with empty_bg="raise": skip the episode, count the step
                acc["skipped"] += 1
                sched.step()
                continue
            sched.step()
            for key, value in losses.items():
                acc[key] += value.item()
            acc["n"] += 1
            if step % every == 0 or step == steps:
                elapsed = elapsed_before + time.perf_counter() - t0
                rate = (step - start) / max(time.perf_counter() - t0, 1e-9)
                n = max(acc["n"], 1)
                row = {
                    "step": step,
                    "loss": acc["loss"] / n,
                    "query_loss": acc["query_loss"] / n,
                    "align_loss": acc["align_loss"] / n,
                    "other_loss": acc["other_loss"] / n,
                    "lr": opt.param_groups[0]["lr"],
                    "skipped": acc["skipped"],
                    "elapsed_s": round(elapsed, 2),
                    "steps_per_s": round(rate, 3),
                    "eta_s": round((steps - step) / rate, 1),
                }
                rows.append(row)
                log.info("step %d/%d loss %.4f (query %.4f, align %.4f) lr %.2e | %.1f steps/s, %.0f s elapsed, "
                         "%.0f s left", step, steps, row["loss"], row["query_loss"], row["align_loss"], row["lr"], rate,
                         elapsed, row["eta_s"])
                if tracker is not None:
                    tracker.log_metrics({k: row[k] for k in ("loss", "query_loss", "align_loss", "other_loss", "lr")},
                                        step=step)
                acc = {"loss": 0.0, "query_loss": 0.0, "align_loss": 0.0, "other_loss": 0.0, "n": 0, "skipped": 0}
            if cfg.get("checkpoint_every") and step % int(cfg["checkpoint_every"]) == 0 and step < steps:
                state = {"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "episodes": _episode_state(episodes),
                         "torch_rng": torch.get_rng_state(), "step": step, "log_rows": rows, "meta": meta}
                if scaler is not None:
                    state["scaler"] = scaler.state_dict()
                ckpt.save(state, resume_path)
    _write_log(rows, log_out)
    weights = {k: v.cpu() for k, v in model.state_dict().items()}
    ckpt.save({"state_dict": weights, "step": steps, "meta": meta}, model_out)
    if resume_path.exists():
        resume_path.unlink()  # the finished model supersedes the resume state
    return {"steps": steps, "final_loss": rows[-1]["loss"] if rows else float("nan"),
            "seconds": rows[-1]["elapsed_s"] if rows else 0.0}


def _write_log(rows, path) -> None:
    import pandas as pd

    from fsmis.io import write_tsv

    write_tsv(pd.DataFrame(rows, columns=LOG_COLUMNS), path)
