"""The training precision: chosen from the device and what PyTorch reports about the CPU.

Three precisions (``PRECISIONS``):

- ``"bfloat16"``: on a CPU, the forward pass under ``torch.autocast("cpu", dtype=torch.bfloat16)``
  (the loss and the optimiser step in float32). Fast only where the CPU runs bfloat16 natively
  (x86 AVX-512 BF16 or AMX, Arm BF16): elsewhere PyTorch emulates it, and a training step costs
  several times the float32 one (docs/benchmarks.md).
- ``"float16"``: on CUDA, automatic mixed precision (float16 autocast with loss scaling, MONAI's ``amp``).
- ``"float32"``: everything else.

The config settings ``cpu_bf16`` and ``amp`` take ``true``, ``false`` or ``auto`` (also as command-line
strings); ``auto`` means bfloat16 on a CPU with native bfloat16, float16 AMP on CUDA. The choice is
logged once per process and recorded in the run's fingerprint, its metrics and its MLflow parameters.

Hand-written: PyTorch reports the CPU's instruction sets (``torch.cpu.get_capabilities``) and the
kernels its dispatcher selected (``torch.backends.cpu.get_cpu_capability``), but no single
"bfloat16 is fast here" flag (``torch.ops.mkldnn._is_mkldnn_bf16_supported`` is true on any AVX-512
CPU, where bfloat16 is emulated).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

__all__ = ["PRECISIONS", "cpu_bf16_reason", "cpu_has_native_bf16", "training_precision"]

PRECISIONS = ("float32", "bfloat16", "float16")

#: CPU capabilities (``torch.cpu.get_capabilities()`` keys) that execute bfloat16 arithmetic natively
NATIVE_BF16_CAPABILITIES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")

_logged: set[tuple[str, str]] = set()


def _setting(value: Any, name: str) -> bool | None:
    """``true`` / ``false`` / ``auto`` (bools or strings in any case) as True / False / None."""
    if isinstance(value, bool):
        return value
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    if text == "auto":
        return None
    raise ValueError(f"{name} must be true, false or auto, got {value!r}")


def cpu_bf16_reason() -> tuple[bool, str]:
    """Whether this CPU runs bfloat16 natively, and the evidence in words.

    Native means: the CPU reports a bfloat16 instruction set (``NATIVE_BF16_CAPABILITIES``) and, on
    x86, PyTorch's kernel dispatch runs at the AVX-512 level (``ATEN_CPU_CAPABILITY=avx2`` turns it
    off, as on a CPU without AVX-512).
    """
    capabilities = dict(torch.cpu.get_capabilities())
    name = str(capabilities.get("cpu_name", "unknown CPU")).strip() or "unknown CPU"
    found = [key for key in NATIVE_BF16_CAPABILITIES if capabilities.get(key)]
    if not found:
        return False, f"{name}: no native bfloat16 instructions ({'/'.join(NATIVE_BF16_CAPABILITIES[:2])} absent)"
    dispatch = str(torch.backends.cpu.get_cpu_capability())
    if capabilities.get("architecture") in ("x86_64", "x86") and not dispatch.startswith("AVX512"):
        return False, f"{name}: {'/'.join(found)} present but PyTorch dispatches {dispatch} kernels"
    return True, f"{name}: native bfloat16 ({'/'.join(found)}, {dispatch} kernels)"


def cpu_has_native_bf16() -> bool:
    """True where bfloat16 autocast is fast on this CPU (see ``cpu_bf16_reason``)."""
    return cpu_bf16_reason()[0]


def training_precision(device: str | torch.device, amp: Any = "auto", cpu_bf16: Any = "auto") -> str:
    """The precision a training on ``device`` runs in: one of ``PRECISIONS``.

    Args:
        device: the training device (``"cpu"``, ``"cuda"``, ``torch.device``).
        amp: CUDA mixed precision: ``true`` / ``false`` / ``auto`` (= on with CUDA).
        cpu_bf16: CPU bfloat16 autocast: ``true`` / ``false`` / ``auto`` (= on where the CPU runs
            bfloat16 natively, ``cpu_has_native_bf16``).

    Example::

        training_precision("cpu", cpu_bf16="auto")   # "bfloat16" on an AVX-512 BF16 CPU, else "float32"
    """
    device_type = torch.device(device).type
    amp_setting, bf16_setting = _setting(amp, "amp"), _setting(cpu_bf16, "cpu_bf16")
    if device_type == "cuda":
        precision = "float32" if amp_setting is False else "float16"
        reason = "amp " + ("false" if amp_setting is False else "true" if amp_setting else "auto on CUDA")
    elif device_type == "cpu":
        if bf16_setting is None:
            native, reason = cpu_bf16_reason()
            precision = "bfloat16" if native else "float32"
            reason = "cpu_bf16 auto, " + reason
        else:
            precision = "bfloat16" if bf16_setting else "float32"
            reason = f"cpu_bf16 {str(bf16_setting).lower()}"
    else:
        precision, reason = "float32", f"device {device_type}"
    if (precision, reason) not in _logged:
        _logged.add((precision, reason))
        logging.getLogger(__name__).info(f"training precision: {precision} ({reason})")
    return precision
