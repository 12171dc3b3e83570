"""Device choice and mixed precision, shared by training and evaluation.

Precision (``cfg["amp"]``, off unless set): with ``amp`` the encoder (the backbone
and anything else inside the method's ``encode``, >90 % of the arithmetic) runs
under ``torch.autocast``, bf16 on a CPU, bf16 or fp16 on CUDA (fp16 with a
``GradScaler``), and hands float32 features to the method's head. Prototypes,
cosine scores, attention and every loss stay in float32. Without ``amp`` nothing
changes: the same operations run in the same order as before the option existed.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


AMP_CHOICES = (False, True, "bf16", "fp16")


def amp_dtype(amp, device) -> torch.dtype | None:
    """The autocast dtype of the ``amp`` option on ``device``: None (float32) when off;
    ``True`` picks bf16 on a CPU and on CUDA devices that support it, else fp16;
    ``"bf16"``/``"fp16"`` force one (fp16 only on CUDA)."""
    if amp is None or amp is False:
        return None
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


_warned: set = set()


def _warn_slow_cpu_bf16() -> None:
    if not cpu_has_fast_bf16() and "bf16" not in _warned:
        _warned.add("bf16")
        log.warning("amp: this CPU has neither AVX512-BF16 nor AMX, so bf16 autocast is emulated and "
                    "slower than float32 here; consider amp: false")


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
