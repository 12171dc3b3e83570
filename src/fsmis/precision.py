"""Device choice and mixed precision, shared by training and evaluation.

Precision (``cfg["amp"]``, off unless set): with ``amp`` the encoder (the backbone
and anything else inside the method's ``encode``, >90 % of the arithmetic) runs
under ``torch.autocast``, bf16 on a CPU, bf16 or fp16 on CUDA (fp16 with a
``GradScaler``), and hands float32 features to the method's head. Prototypes,
cosine scores, attention and every loss stay in float32. Without ``amp`` nothing
changes: the same operations run in the same order as before the option existed.

``amp: auto`` (the paper presets') turns bf16 on only where the device computes it
natively: a CUDA device of compute capability 8.0 or newer
(``torch.cuda.is_bf16_supported(including_emulation=False)``), or a CPU with
AVX512-BF16 or AMX (:func:`cpu_has_fast_bf16`); anywhere else it is float32, exactly
``amp: false``. Where it turns bf16 on, the encoder also runs channels-last unless
``model.channels_last`` says otherwise. :func:`resolve_amp` makes that choice once per
job and says which path runs and why (``AmpPlan.path`` and ``reason``: what the stages
log and record in the job's MLflow run as ``amp_resolved`` and ``amp_reason``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


AMP_CHOICES = (False, True, "auto", "bf16", "fp16")


def amp_dtype(amp, device) -> torch.dtype | None:
    """The autocast dtype of the ``amp`` option on ``device``: None (float32) when off;
    ``True`` picks bf16 on a CPU and on CUDA devices that support it, else fp16;
    ``"auto"`` bf16 where the device computes it natively, else None (:func:`resolve_amp`);
    ``"bf16"``/``"fp16"`` force one (fp16 only on CUDA)."""
    if amp is None or amp is False:
        return None
    if amp == "auto":
        return resolve_amp("auto", device).dtype
    kind = torch.device(device).type
    if amp is True:
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        _warn_slow_cpu_bf16()
        return torch.bfloat16
    if amp == "bf16":
        if kind == "cpu":
            _warn_slow_cpu_bf16()
        return torch.bfloat16
    if amp == "fp16":
        if kind != "cuda":
            raise ValueError("amp 'fp16' needs a CUDA device; use true or 'bf16' on a CPU")
        return torch.float16
    raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Without either,
    oneDNN emulates bf16 and autocast is slower than float32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def native_bf16(device) -> tuple[bool, str]:
    """``(whether device computes bf16 natively, why)``: CUDA devices of compute
    capability 8.0 or newer (Ampere on) do; older ones emulate bf16, which
    ``torch.cuda.is_bf16_supported()`` counts unless told not to. CPUs with
    AVX512-BF16 or AMX do; without them oneDNN emulates bf16."""
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, "CUDA device with native bf16"
        return False, "CUDA device without native bf16 (compute capability below 8.0)"
    if kind == "cpu":
        if cpu_has_fast_bf16():
            return True, "CPU with AVX512-BF16 or AMX"
        return False, "CPU without AVX512-BF16 or AMX (bf16 would be emulated, slower than float32)"
    return False, f"no bf16 detection for {kind} devices"


@dataclass(frozen=True)
class AmpPlan:
    """What a job runs: ``amp``, the explicit setting that gives it (``False``,
    ``"bf16"`` or ``"fp16"``; ``amp_dtype(plan.amp, device) == plan.dtype``), the
    autocast ``dtype`` (None: float32), whether the encoder runs ``channels_last``,
    ``path`` (e.g. ``"bf16+channels_last"``, ``"fp32"``) and ``reason``, one line."""

    amp: bool | str
    dtype: torch.dtype | None
    channels_last: bool
    path: str
    reason: str


_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_amp(amp, device, channels_last: bool | None = None) -> AmpPlan:
    """The precision a job runs with, from the ``amp`` option (``train.amp`` or
    ``evaluate.amp``; None = absent) and ``model.channels_last`` (None = absent) on
    ``device``. ``"auto"``: bf16 where :func:`native_bf16`, with channels-last unless
    ``channels_last`` is False; float32 elsewhere, channels-last only if asked. Other
    values as :func:`amp_dtype`; channels-last only if asked."""
    if amp == "auto":
        native, why = native_bf16(device)
        dtype = torch.bfloat16 if native else None
        reason = f"amp auto: {why}"
        if channels_last is None:
            channels_last = native  # NHWC is what bf16 convolutions are fastest on (oneDNN, cuDNN)
    else:
        dtype = amp_dtype(amp, device)
        reason = "amp off" if amp is None or amp is False else f"amp {amp}"
    channels_last = bool(channels_last)
    path = _NAMES[dtype] + ("+channels_last" if channels_last else "")
    if dtype == torch.float16:
        path += "+grad_scaler"
    return AmpPlan(_NAMES[dtype] if dtype is not None else False, dtype, channels_last, path, reason)


_warned: set = set()


def _warn_slow_cpu_bf16() -> None:
    if not cpu_has_fast_bf16() and "bf16" not in _warned:
        _warned.add("bf16")
        log.warning("amp: this CPU has neither AVX512-BF16 nor AMX, so bf16 autocast is emulated and "
                    "slower than float32 here; consider amp: auto (float32 here) or false")


@contextmanager
def autocast_encoder(model, dtype: torch.dtype | None, channels_last: bool = False):
    """Within the block ``model.encode`` runs under ``torch.autocast(dtype)`` (and on
    channels-last images if asked) and returns contiguous float32 features, so the
    method's head and losses see float32 as without it. ``dtype`` None and no
    ``channels_last``: the model is left untouched."""
    if dtype is None and not channels_last:
        yield model
        return
    shadowed = vars(model).get("encode")  # set by an enclosing block, if any
    plain = model.encode
    device_type = next(model.parameters()).device.type

    def encode(images):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            out = plain(images)
        else:
            with torch.autocast(device_type, dtype=dtype):
                out = plain(images)
        return out.float().contiguous()

    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.encode = encode  # an instance attribute shadows the method until the block ends
    try:
        yield model
    finally:
        if shadowed is None:
            del model.encode
        else:
            model.encode = shadowed
        if channels_last:
            model.to(memory_format=torch.contiguous_format)


def make_grad_scaler(dtype: torch.dtype | None, device):
    """A ``GradScaler`` for fp16 (bf16 and float32 need none)."""
    if dtype == torch.float16:
        return torch.amp.GradScaler(torch.device(device).type)
    return None
