"""Worker telemetry: NVML/psutil samples and a background heartbeat thread (never touches CUDA)."""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Callable

import psutil

# Imported here, not in the heartbeat thread: a thread importing while Celery's prefork pool forks
# leaves the child with a half-initialised module.
from nc_core.db import workers_repo
from nc_core.db.session import session_scope

log = logging.getLogger(__name__)
_NVML_LOCK = threading.Lock()
_NVML_READY: bool | None = None
# Held for a whole beat (NVML, psutil, SQLite/driver calls). os.fork waits for it: a child forked while
# another thread is inside SQLite (its global VFS mutex) or NVML inherits that lock held, and its first
# query hangs for ever (seen: Celery's fresh child never claimed its run).
_BEAT_GUARD = threading.Lock()


def _before_fork() -> None:
    _BEAT_GUARD.acquire()


def _after_fork_in_parent() -> None:
    _BEAT_GUARD.release()


def _after_fork_in_child() -> None:
    """Fresh locks in the child (only the forking thread survives); NVML is initialised again there."""
    global _BEAT_GUARD, _NVML_LOCK, _NVML_READY
    _BEAT_GUARD, _NVML_LOCK = threading.Lock(), threading.Lock()
    _NVML_READY = None if _NVML_READY else _NVML_READY


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def _nvml() -> Any | None:
    """The initialised pynvml module, or None when no NVIDIA driver is present."""
    global _NVML_READY
    with _NVML_LOCK:
        if _NVML_READY is False:
            return None
        try:
            import pynvml

            if not _NVML_READY:
                pynvml.nvmlInit()
                _NVML_READY = True
            return pynvml
        except Exception as exc:  # no driver, no library, no device
            log.debug("NVML unavailable: %s", exc)
            _NVML_READY = False
            return None


def _gpu_sample(nvml: Any, index: int) -> dict[str, Any]:
    """What NVML reports of GPU `index`: each field read on its own, None for one it cannot read (MIG mode
    and some virtual GPUs raise NVMLError_NotSupported for utilization, fanless or passive boards for
    temperature), so one unsupported query never hides the rest. Raises only when the GPU itself is gone."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = _gpu_field(index, "gpu_name", lambda: nvml.nvmlDeviceGetName(handle))
    mem = _gpu_field(index, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    util = _gpu_field(index, "util_percent", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    temp = _gpu_field(index, "temperature_c", lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
    return {"device": f"cuda:{index}", "gpu_index": index,
            "gpu_name": None if name is None else name.decode() if isinstance(name, bytes) else str(name),
            "util_percent": None if util is None else float(util.gpu),
            "memory_used": None if mem is None else int(mem.used),
            "memory_total": None if mem is None else int(mem.total),
            "temperature_c": None if temp is None else float(temp)}


# (GPU index, field) pairs whose NVML query failed and was logged: a field NVML does not support on a GPU
# fails on every heartbeat, so it is logged once per process (a forked child inherits the set), not every beat.
_UNREADABLE_GPU_FIELDS: set[tuple[int, str]] = set()


def _gpu_field(index: int, field_name: str, query: Callable[[], Any]) -> Any | None:
    """query(), or None when NVML cannot answer it (logged once per GPU and field, at WARNING)."""
    try:
        return query()
    except Exception as exc:  # NVMLError_NotSupported in MIG mode / on virtual GPUs, or any other NVML failure
        if (index, field_name) not in _UNREADABLE_GPU_FIELDS:
            _UNREADABLE_GPU_FIELDS.add((index, field_name))
            log.warning("NVML cannot read %s of GPU %s (%s: %s); reporting it as unknown (logged once)",
                        field_name, index, type(exc).__name__, exc)
        return None


def _cpu_sample() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {"device": "cpu", "gpu_index": None, "gpu_name": None,
            "util_percent": float(psutil.cpu_percent(interval=None)),
            "memory_used": int(vm.total - vm.available), "memory_total": int(vm.total), "temperature_c": None}


def sample(gpu_index: int | None) -> dict[str, Any]:
    """One telemetry sample: GPU `gpu_index` through NVML (physical index), else CPU % and RAM.

    NVML ignores CUDA_VISIBLE_DEVICES, so pass the physical GPU index: NVML's, i.e. PCI bus order, the order
    worker.launch pins each worker's CUDA_VISIBLE_DEVICES in (with CUDA_DEVICE_ORDER=PCI_BUS_ID), so the GPU
    reported is the GPU trained on. A field NVML cannot read is None (the rest is still reported); only a
    GPU NVML cannot reach at all falls back to CPU telemetry. Never initialises CUDA.
    """
    if gpu_index is not None:
        nvml = _nvml()
        if nvml is not None:
            try:
                return _gpu_sample(nvml, gpu_index)
            except Exception as exc:
                log.warning("NVML sample of GPU %s failed (%s); reporting CPU telemetry", gpu_index, exc)
    return _cpu_sample()


class Heartbeater(threading.Thread):
    """Beats every settings.heartbeat_seconds: upserts the worker row, appends a bounded sample.

    The runner calls `set_run(run_id)` when it claims a run and `set_run(None)` when it finishes;
    `stop()` marks the worker stopped. Samples/s are read from the run row (written by the reporter).
    """

    def __init__(self, settings: Any, name: str, gpu_index: int | None = None, *,
                 on_beat: Callable[[], None] | None = None):
        super().__init__(name=f"heartbeat-{name}", daemon=True)
        self.settings, self.worker_name, self.gpu_index = settings, name, gpu_index
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.on_beat = on_beat
        self._run_id: int | None = None
        self._samples_per_s: float | None = None
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self.beats = 0
        self.last_error: str | None = None

    def set_run(self, run_id: int | None, samples_per_s: float | None = None) -> None:
        """Attach the current run (None = idle); beats immediately so the change shows at once. Leaving a run, it
        first writes that run a closing sample (its rate now known, from the reporter or the run row): a run
        shorter than one heartbeat would otherwise keep only its first sample, taken before any throughput."""
        with self._lock:
            previous = self._run_id
        if self.is_alive() and previous is not None and previous != run_id:
            self.beat()
        with self._lock:
            self._run_id, self._samples_per_s = run_id, samples_per_s
        if self.is_alive():
            self.beat()

    def set_throughput(self, samples_per_s: float | None) -> None:
        with self._lock:
            self._samples_per_s = samples_per_s

    def beat(self, status: str | None = None) -> None:
        """Write one heartbeat now (errors are logged, never raised: telemetry must not kill a job)."""
        with self._lock:
            run_id, sps = self._run_id, self._samples_per_s
        with _BEAT_GUARD:  # no fork while this thread is inside NVML or the database driver
            self._write(run_id, sps, status)
        if self.on_beat is not None:
            try:
                self.on_beat()
            except Exception as exc:
                log.warning("heartbeat callback failed: %s", exc)

    def _write(self, run_id: int | None, sps: float | None, status: str | None) -> None:
        snap = sample(self.gpu_index)
        if sps is not None:
            snap["samples_per_s"] = sps
        try:
            with session_scope(self.settings.resolved_database_url()) as session:
                workers_repo.heartbeat(session, self.worker_name, self.host, self.pid, snap["device"], snap,
                                       run_id, status or ("busy" if run_id is not None else "idle"))
            self.beats += 1
            self.last_error = None
        except Exception as exc:  # database down: keep training, try again next beat
            self.last_error = str(exc)
            log.warning("heartbeat of %s failed: %s", self.worker_name, exc)

    def run(self) -> None:
        psutil.cpu_percent(interval=None)  # prime the CPU counter: the next call measures from here
        self._stop_event.wait(min(0.5, float(self.settings.heartbeat_seconds)))  # so the first % is real
        while not self._stop_event.is_set():
            self.beat()
            self._stop_event.wait(float(self.settings.heartbeat_seconds))

    def stop(self, mark_stopped: bool = True, timeout: float = 5.0) -> None:
        """Stop beating; optionally record status 'stopped' (a clean shutdown, not a lost worker)."""
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        if mark_stopped:
            with self._lock:
                self._run_id = None
            self.beat(status="stopped")
