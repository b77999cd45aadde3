"""What a run's numbers depend on beyond its spec — device, torch and its CPU thread count — recorded per attempt."""
from __future__ import annotations

import platform
import socket
from pathlib import Path
from typing import Any

import torch

from nc_core.spec import RunSpec
from nc_core.training.runtime import resolve_device


def environment(spec: RunSpec) -> dict[str, Any]:
    """The device the spec runs on here (and its model), torch's intra-op thread count (another count sums in
    other orders: another run, as another seed would be), the torch and Python versions and the host."""
    device = resolve_device(spec)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # the one "cuda" means in this process
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"device": str(device), "device_name": name, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "host": socket.gethostname()}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what ``platform`` says, else "unknown CPU")."""
    try:
        with Path("/proc/cpuinfo").open(encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
