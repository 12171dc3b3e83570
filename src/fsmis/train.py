"""Episodic training loop shared by all methods.

As the reference ``training.py``: SGD (lr 1e-3, momentum 0.9, weight decay 5e-4 on
all parameters), learning rate x0.95 every 1000 steps (stepped per iteration),
weighted cross-entropy (background 0.05, foreground 1) on the query plus the
method's alignment loss (weight 1), one episode per step.

Step ``s`` trains on episode ``s - 1`` of the sampler (``episodes.episode(i)``, a
function of the seed and ``i`` alone), produced ahead of the step by
``cfg["workers"]`` worker processes (``fsmis.data.prefetch``; 0, the default here,
draws it in this process): the same seed gives the same model with 0 or N workers.

A checkpoint (model, optimiser, scheduler, global torch RNG state and the step) is
written every ``checkpoint_every`` steps; a killed job restarts from it and
produces the same model as an uninterrupted run (the episodes after the step need
nothing else). A checkpoint of the earlier sequential sampler (an ``episodes``
entry) is still resumed, with a warning: its later episodes come from the
per-step streams. Progress lines report step, loss, rate and time left; the
time spent waiting for episodes is logged at the end and returned.

On CUDA the per-step losses stay on the device until a log row needs them, so the
host never waits for the device between steps.

Precision (``cfg["amp"]``): ``fsmis.precision``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from fsmis import checkpoint as ckpt
from fsmis import paths
from fsmis.data.prefetch import EpisodeStream
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


def _fresh_acc() -> dict:
    # 0-d loss tensors of the steps since the last log row (read back only then)
    return {"loss": [], "query_loss": [], "align_loss": [], "other_loss": [], "skipped": 0}


def _mean(values: list) -> float:
    # the same float64 sum, in the same order, as adding each step's .item()
    return sum(v.item() for v in values) / max(len(values), 1)


def train(model, episodes, cfg: dict, model_out, log_out, meta: dict, device=None, tracker=None) -> dict:
    """Train ``model`` on ``episodes`` for ``cfg['steps']`` steps.

    ``meta`` is stored in the checkpoint and model file (method, configuration,
    normalisation statistics); a resume file whose ``meta['config_hash']`` differs
    is set aside (renamed), never silently reused. ``episodes``: a sampler with
    ``episode(i)``; ``cfg["workers"]``: episode worker processes (0 when absent).
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
            torch.set_rng_state(state["torch_rng"])
            start = int(state["step"])
            rows = state["log_rows"]
            log.info("resuming from %s at step %d", resume_path, start)
            if "episodes" in state:  # written before episodes had per-step streams
                log.warning("%s was written by the earlier sequential episode sampler: resumed at step %d, the "
                            "episodes after it come from the per-step streams, so the model differs from an "
                            "uninterrupted run of either version", resume_path, start)
        else:
            stale = Path(paths.beside(model_out, "stale_checkpoint",
                                      config_hash=state.get("meta", {}).get("config_hash") or "old"))
            resume_path.rename(stale)
            log.warning("checkpoint %s belongs to another configuration; kept as %s, starting fresh",
                        resume_path, stale)

    steps, every = int(cfg["steps"]), int(cfg["log_every"])
    acc = _fresh_acc()
    workers = int(cfg.get("workers") or 0)
    # Methods whose own training losses need the query label (IPLSL's self-learning
    # loss) say so; their extra losses come back weighted and are added as they are.
    with_label = bool(getattr(model, "takes_query_label", False))
    t0 = time.perf_counter()
    elapsed_before = rows[-1]["elapsed_s"] if rows else 0.0
    if workers:
        log.info("episodes drawn ahead by %d worker processes", workers)
    stream = EpisodeStream(episodes, start, steps, device, workers)
    with stream, autocast_encoder(model, dtype, bool(cfg.get("channels_last", False))):
        for step, batch in zip(range(start + 1, steps + 1), stream):
            try:
                losses = training_step(model, batch, cfg, opt, scaler, with_label)
            except EmptyPrototypeSet:
                # reference behaviour with empty_bg="raise": skip the episode, count the step
                acc["skipped"] += 1
                sched.step()
                continue
            sched.step()
            for key, value in losses.items():
                acc[key].append(value)
            if step % every == 0 or step == steps:
                elapsed = elapsed_before + time.perf_counter() - t0
                rate = (step - start) / max(time.perf_counter() - t0, 1e-9)
                row = {
                    "step": step,
                    "loss": _mean(acc["loss"]),
                    "query_loss": _mean(acc["query_loss"]),
                    "align_loss": _mean(acc["align_loss"]),
                    "other_loss": _mean(acc["other_loss"]),
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
                acc = _fresh_acc()
            if cfg.get("checkpoint_every") and step % int(cfg["checkpoint_every"]) == 0 and step < steps:
                state = {"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(), "step": step,
                         "log_rows": rows, "meta": meta}
                if scaler is not None:
                    state["scaler"] = scaler.state_dict()
                ckpt.save(state, resume_path)
    if steps > start:
        log.info("waited %.1f s for episodes over %d steps (%.1f ms a step, %d episode workers)", stream.waited_s,
                 steps - start, 1e3 * stream.waited_s / (steps - start), workers)
    _write_log(rows, log_out)
    weights = {k: v.cpu() for k, v in model.state_dict().items()}
    ckpt.save({"state_dict": weights, "step": steps, "meta": meta}, model_out)
    if resume_path.exists():
        resume_path.unlink()  # the finished model supersedes the resume state
    return {"steps": steps, "final_loss": rows[-1]["loss"] if rows else float("nan"),
            "seconds": rows[-1]["elapsed_s"] if rows else 0.0, "episode_wait_s": round(stream.waited_s, 3)}


def _write_log(rows, path) -> None:
    import pandas as pd

    from fsmis.io import write_tsv

    write_tsv(pd.DataFrame(rows, columns=LOG_COLUMNS), path)
