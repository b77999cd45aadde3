"""The GPUs a launcher may start workers on: NVML's list in PCI bus order, an inherited CUDA_VISIBLE_DEVICES, --gpus."""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("worker.launch")  # the launcher's logger: its GPU warnings keep the name they are known by


@dataclass(frozen=True)
class NvmlGpu:
    """One physical GPU as NVML lists it: `index` is NVML's number for it (PCI bus order)."""

    index: int
    uuid: str  # "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6", as nvidia-smi -L prints it
    name: str


def nvml_gpus() -> list[NvmlGpu] | None:
    """Every GPU NVML sees (never CUDA in this process, and NVML ignores CUDA_VISIBLE_DEVICES); None without
    a driver or without pynvml."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library: CPU
        return None
    try:
        return [NvmlGpu(index, *_uuid_and_name(pynvml, index)) for index in range(pynvml.nvmlDeviceGetCount())]
    except Exception as exc:  # noqa: BLE001 - a driver that cannot count its GPUs: CPU, as without one
        log.warning("NVML could not count the GPUs (%s); starting CPU workers", exc)
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _uuid_and_name(pynvml: Any, index: int) -> tuple[str, str]:
    """UUID and model name of NVML's GPU `index`; "" for one NVML cannot read (the GPU is still usable by index)."""
    values = []
    for query in (pynvml.nvmlDeviceGetUUID, pynvml.nvmlDeviceGetName):
        try:
            value = query(pynvml.nvmlDeviceGetHandleByIndex(index))
            values.append(value.decode() if isinstance(value, bytes) else str(value))
        except Exception as exc:  # noqa: BLE001
            log.debug("NVML %s of GPU %d failed: %s", query.__name__, index, exc)
            values.append("")
    return values[0], values[1]


def allotted_gpus(cuda_visible_devices: str | None, gpus: list[NvmlGpu]) -> list[int]:
    """NVML indices of the GPUs in `gpus` that `cuda_visible_devices` (the launcher's inherited
    CUDA_VISIBLE_DEVICES) names, in its order; every GPU when it is None (not set).

    Read as CUDA reads it: comma-separated entries, each an index or a GPU UUID (``GPU-…``, or a unique
    prefix of one); the list ends at the first entry that names no GPU, so "" and "-1" mean no GPU. An
    index is read in PCI bus order: NVML's numbering, and CUDA's with CUDA_DEVICE_ORDER=PCI_BUS_ID, which
    the workers get. MIG instances (``MIG-…``) cannot be pinned by this launcher: they end the list too
    (start such a worker by hand with CUDA_VISIBLE_DEVICES=MIG-…). A GPU named twice gets one worker.
    """
    if cuda_visible_devices is None:
        return [gpu.index for gpu in gpus]
    chosen: list[int] = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        gpu = _gpu_named_by(entry, gpus)
        if gpu is None:
            if entry.upper().startswith("MIG-"):
                log.warning("CUDA_VISIBLE_DEVICES=%r: %r is a MIG instance, which this launcher cannot pin a worker "
                            "to (start that worker by hand with CUDA_VISIBLE_DEVICES=%s); using only the entries "
                            "before it", cuda_visible_devices, entry, entry)
            elif entry not in ("", "-1"):
                log.warning("CUDA_VISIBLE_DEVICES=%r: %r names none of this host's GPUs (expected an NVML index "
                            "0..%d or a GPU UUID, as nvidia-smi -L lists them); like CUDA, using only the "
                            "entries before it", cuda_visible_devices, entry, len(gpus) - 1)
            break
        if gpu.index in chosen:
            log.warning("CUDA_VISIBLE_DEVICES=%r names GPU %d (%s) twice; it gets one worker",
                        cuda_visible_devices, gpu.index, gpu.uuid)
            continue
        chosen.append(gpu.index)
    return chosen


def _gpu_named_by(entry: str, gpus: list[NvmlGpu]) -> NvmlGpu | None:
    """The GPU a CUDA_VISIBLE_DEVICES entry names: an NVML index, or a GPU UUID or unique prefix of one."""
    if entry.isdigit():
        return next((gpu for gpu in gpus if gpu.index == int(entry)), None)
    if entry.upper().startswith("GPU-"):
        matches = [gpu for gpu in gpus if gpu.uuid and gpu.uuid.upper().startswith(entry.upper())]
        return matches[0] if len(matches) == 1 else None
    return None  # "-1", "MIG-…" or anything else: CUDA's list ends here


def detect_gpus() -> list[int]:
    """NVML indices (PCI bus order) of the GPUs to start workers on (never CUDA in this process); [] without
    a driver.

    Every GPU, unless this process inherited CUDA_VISIBLE_DEVICES (Slurm, a shared host, a container given
    some GPUs): then only the GPUs it names, indices or UUIDs, "" or "-1" meaning none (see allotted_gpus).
    Each worker is then pinned to exactly one of them (worker_specs) and its telemetry reads the same GPU.
    """
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None and inherited.strip() in ("", "-1"):
        return []
    gpus = nvml_gpus()
    if not gpus:
        return []
    chosen = allotted_gpus(inherited, gpus)
    _warn_if_indices_are_ambiguous(inherited, gpus, chosen)
    return chosen


def _warn_if_indices_are_ambiguous(inherited: str | None, gpus: list[NvmlGpu], chosen: list[int]) -> None:
    """Indices in an inherited CUDA_VISIBLE_DEVICES are read in PCI bus order; CUDA's default order (fastest
    first) differs from it only on a host with several GPU models: say which GPUs that reading chose."""
    order = os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    if (inherited is None or order == "PCI_BUS_ID" or len({gpu.name for gpu in gpus if gpu.name}) < 2
            or not any(entry.strip().isdigit() for entry in inherited.split(","))):
        return
    log.warning("CUDA_VISIBLE_DEVICES=%r names GPUs by index while CUDA_DEVICE_ORDER=%s; on this host of mixed "
                "GPU models ncsweep reads the indices in PCI bus order (nvidia-smi's), which gives %s; name the "
                "GPUs by UUID (nvidia-smi -L) to be unambiguous", inherited, order,
                ", ".join(f"{gpu.index} ({gpu.name})" for gpu in gpus if gpu.index in chosen) or "no GPU")


def check_gpus_allotted(gpus: list[int]) -> None:
    """Raise GpuSelectionError when this process inherited CUDA_VISIBLE_DEVICES and `gpus` (NVML indices) names a
    GPU outside it: those GPUs were not given to this launcher. Without NVML nothing can be checked."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is None or not gpus:
        return
    if inherited.strip() in ("", "-1"):
        allotted: list[int] = []
    else:
        listed = nvml_gpus()
        if listed is None:
            log.warning("NVML unavailable: cannot check GPUs %s against CUDA_VISIBLE_DEVICES=%r", gpus, inherited)
            return
        allotted = allotted_gpus(inherited, listed)
    outside = [gpu for gpu in gpus if gpu not in allotted]
    if outside:
        raise GpuSelectionError(f"GPUs {gpus} were asked for, but this process was given CUDA_VISIBLE_DEVICES={inherited!r}, "
                         f"which allows NVML indices {allotted} only; got {outside} outside it (GPU indices are "
                         f"NVML's, as nvidia-smi lists them: pass some of {allotted}, or unset CUDA_VISIBLE_DEVICES)")


class GpuSelectionError(ValueError):
    """GPUs asked for (--gpus) that cannot get a worker: named twice, not on this host, or not given to this
    process (its inherited CUDA_VISIBLE_DEVICES)."""


def check_gpu_selection(gpus: list[int]) -> None:
    """GpuSelectionError unless `gpus` (NVML indices, as --gpus gives them) names each GPU once, each one that
    detect_gpus() finds (a GPU twice would get two workers of one name; a GPU not there, a worker on the CPU)."""
    twice = sorted({gpu for gpu in gpus if gpus.count(gpu) > 1})
    if not twice:
        check_gpus_allotted(gpus)
    available = detect_gpus()
    missing = [gpu for gpu in gpus if gpu not in available]
    if twice or missing:
        have = ", ".join(map(str, available)) or "none (no NVIDIA driver or GPU found, or none allotted: leave " \
            "--gpus out for CPU workers)"
        got = f"{', '.join(map(str, twice))} more than once (one worker per GPU)" if twice else \
            f"{', '.join(map(str, missing))}, which this host does not have"
        raise GpuSelectionError(f"expected distinct indices of this host's GPUs, got {got}; available GPUs: {have}")
