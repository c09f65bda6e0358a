"""How a training step runs on the hardware: precision, micro-batches, compilation.

Internal to the training loop (:mod:`scoresde.loop`). The loop's arithmetic is the same whatever
is chosen here; these only change how it is carried out:

- ``precision``: ``"fp32"``; ``"bf16"``, the network's forward pass under ``torch.autocast`` in
  bfloat16 (CPU and CUDA); ``"fp16"``, autocast in float16 with a gradient scaler (CUDA only:
  float16 gradients underflow without one, and CPUs gain nothing from it). The weights, their
  gradients, the optimizer and the EMA stay float32; the loss is float32 (the score model adds
  the float32 skip connection to the network's output). Sampling and likelihoods of a trained
  run are float32.
- ``batch_gpu``: each rank's batch is cut into micro-batches of at most that many samples whose
  gradients add up before the optimizer step (gradient accumulation), so the step equals the
  unsplit batch's up to float round-off while memory holds only one micro-batch's activations.
- ``compile``: the model's forward pass through ``torch.compile``; a platform that cannot
  compile stops the run at its first step with one line saying so (no silent fallback: a run
  asked to be compiled is not quietly run slower, and compiled and eager kernels round
  differently).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .checks import check_choice, check_int

__all__ = ["PRECISIONS", "check_precision", "check_batch_gpu", "autocast", "grad_scaler",
           "scaler_skipped", "micro_batches", "channels_last", "count_params",
           "compile_model", "compile_errors", "clip_norm"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` if ``device`` can train in it; else a one-line ``ValueError``."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device (it trains with a gradient "
                         f"scaler); on {device.type} use 'bf16' or 'fp32'")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision 'bf16': this GPU has no bfloat16; use 'fp16' or 'fp32'")
    return precision


def check_batch_gpu(batch_gpu: int | None) -> int | None:
    """``batch_gpu`` as an ``int`` >= 1, or None (no micro-batches)."""
    return None if batch_gpu is None else check_int("batch_gpu", batch_gpu, 1)


def autocast(precision: str, device: torch.device):
    """The context the forward pass runs in: ``torch.autocast`` for bf16/fp16, else nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device, state: dict | None = None):
    """A ``torch.amp.GradScaler`` for fp16 (restored from ``state``), None otherwise."""
    if precision != "fp16":
        return None
    scaler = torch.amp.GradScaler(device.type)
    if state is not None:
        scaler.load_state_dict(state)
    return scaler


def scaler_skipped(scaler, scale_before: torch.Tensor) -> torch.Tensor:
    """1 if the scaler's last ``update`` skipped the step, else 0, as a device tensor (no sync).

    The scaler lowers its scale exactly when it found inf/NaN gradients and skipped the
    optimizer step; otherwise the scale stays or grows."""
    return (scaler._scale < scale_before).long()  # noqa: SLF001 (read without a host sync)


def micro_batches(batch: tuple, size: int | None) -> list[tuple]:
    """``batch`` (tensors of equal length, or None) cut into consecutive pieces of at most
    ``size`` samples; the whole batch when ``size`` is None or not smaller."""
    n = batch[0].shape[0]
    if size is None or size >= n:
        return [batch]
    starts = range(0, n, size)
    return [tuple(None if v is None else v[i:i + size] for v in batch) for i in starts]


def channels_last(batch: tuple) -> tuple:
    """The 4-D tensors of ``batch`` in ``torch.channels_last`` memory format."""
    return tuple(v.contiguous(memory_format=torch.channels_last)
                 if v is not None and v.ndim == 4 else v for v in batch)


def count_params(module: nn.Module) -> int:
    """The number of parameters (entries) of ``module``."""
    return sum(p.numel() for p in module.parameters())


_MESSAGE = ("compile=True: torch.compile cannot compile the model on this platform ({err}); "
            "train without compile")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def compile_model(module: nn.Module) -> nn.Module:
    """``torch.compile(module)``; a ``RuntimeError`` with one clear line if torch refuses."""
    try:
        return torch.compile(module)
    except Exception as err:  # e.g. a Python version torch.compile does not support
        raise RuntimeError(_MESSAGE.format(err=_first_line(err))) from err


def _compile_failures() -> tuple[type, ...]:
    """The exception types of a failed compilation (dynamo's and inductor's)."""
    import torch._dynamo.exc as dynamo

    kinds = [dynamo.TorchDynamoException]
    try:
        from torch._inductor import exc as inductor
    except ImportError:  # pragma: no cover - torch without inductor
        return tuple(kinds)
    kinds += [getattr(inductor, name) for name in ("InductorError", "CppCompileError")
              if hasattr(inductor, name)]
    return tuple(kinds)


@contextlib.contextmanager
def compile_errors(enabled: bool):
    """Around the first forward and backward of a compiled model (when torch compiles it):
    a compilation failure becomes a ``RuntimeError`` with one clear line."""
    if not enabled:
        yield
        return
    try:
        yield
    except _compile_failures() as err:
        raise RuntimeError(_MESSAGE.format(err=_first_line(err))) from err


def clip_norm(params, grad_clip: float | None) -> torch.Tensor:
    """The gradients' total norm (a device tensor), after clipping them to ``grad_clip``."""
    return nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else math.inf)
