"""Device choice, seeding, determinism and autocast shared by fit() and fit_ufm()."""
from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from nc_core.spec import RunSpec

log = logging.getLogger("nc_core.training")


def resolve_device(spec: RunSpec) -> torch.device:
    """spec.device ('auto' = cuda when available); asking for cuda without one is an error."""
    if spec.device == "cpu":
        return torch.device("cpu")
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but this machine has no GPU that torch can use (no CUDA "
                         "device or driver found); expected device auto (a GPU when there is one) or cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the data-order/augmentation generator for ``epoch``: a pure function of (seed, epoch)."""
    a, b = np.random.SeedSequence([seed % 2**63, epoch]).generate_state(2)
    return (int(a) << 31) ^ int(b)  # < 2**63


#: Whether a run's float32 CUDA convolutions and matmuls may use TF32, by its precision (bf16: torch's defaults).
TF32_BY_PRECISION = {"fp32": False, "tf32": True}


@contextmanager
def float32_math(precision: str) -> Iterator[None]:
    """The float32 math ``precision`` asks for on CUDA, for the block (flags only: nothing here initialises CUDA):
    'fp32' IEEE float32 (cuDNN's default lets convolutions round their inputs to TF32's 10-bit mantissa), 'tf32'
    TF32 tensor cores for convolutions and matmuls, 'bf16' torch's defaults for what runs outside autocast.

    Set through torch's allow_tf32 flags, which keep its newer per-backend fp32_precision flags consistent and
    every getter readable (torch.get_float32_matmul_precision, TunableOp's); in a process that set the newer
    flags itself (the older getters then raise), through those."""
    if precision not in TF32_BY_PRECISION:
        yield
        return
    b, tf32 = torch.backends, TF32_BY_PRECISION[precision]
    try:
        prev = b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32
    except RuntimeError:  # fp32_precision flags set by the process: set and restore those instead
        backends = b.cudnn.conv, b.cudnn.rnn, b.cuda.matmul
        before = [backend.fp32_precision for backend in backends]
        for backend in backends:
            backend.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            for backend, value in zip(backends, before):
                backend.fp32_precision = value
        return
    b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = prev


@contextmanager
def determinism(enabled: bool, device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """torch.use_deterministic_algorithms (strict on CPU, warn-only on CUDA) for the block, and the float32 math
    ``precision`` asks for (:func:`float32_math`); restored after."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    else:
        torch.backends.cudnn.benchmark = device.type == "cuda"
    try:
        with float32_math(precision):
            yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev[2], prev[3]


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast has native kernels on ``device``: a CUDA GPU with bf16, or a CPU whose oneDNN
    has bf16 (AVX-512 BF16 / AMX). Elsewhere bf16 convolutions run torch's reference kernel: a ResNet18
    forward measured 27× slower than in fp32 on an AVX2-only EPYC."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return True


def warn_if_slow_bf16(spec: RunSpec, device: torch.device) -> str | None:
    """Log (and return) a warning when ``precision: bf16`` will be emulated, hence slow, on ``device``.
    The run keeps bf16 as asked: the spec decides the numerics, never the host."""
    if spec.precision != "bf16" or bf16_is_fast(device):
        return None
    msg = (f"precision: bf16 has no native kernels on this {device.type} (no AVX-512 BF16/AMX); bf16 "
           "convolutions will be emulated, many times slower than fp32 — use precision: fp32 on this host")
    log.warning(msg)
    return msg


def wants_channels_last(device: torch.device, model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether a run keeps its images (N, C, H, W) ``x`` and its conv weights channels_last: on CUDA, for a
    network with convolutions (cuDNN's NHWC kernels). An MLP flattens its input first: NHWC images would cost
    it a copy per batch (two with crop_flip's gather) and buy nothing."""
    return device.type == "cuda" and x.dim() == 4 and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def autocast(spec: RunSpec, device: torch.device):
    """bf16 autocast (CUDA or CPU) when spec.precision == 'bf16', else a no-op context."""
    if spec.precision != "bf16":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
