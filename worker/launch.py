"""Start and supervise Celery workers: one per GPU (pinned by CUDA_VISIBLE_DEVICES in PCI bus order) or CPU workers."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from worker.gpus import check_gpu_selection, detect_gpus
from worker.gpus import GpuSelectionError  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    name: str  # Celery node name, e.g. ncsweep-gpu0@host
    env: dict[str, str]
    gpu: int | None = None


def worker_specs(gpus: list[int], cpu_workers: int = 1, threads: int | None = None) -> list[WorkerSpec]:
    """One spec per GPU in `gpus` (NVML indices), else `cpu_workers` CPU specs sharing the cores (torch threads
    split evenly).

    A GPU worker sees exactly its GPU: CUDA_VISIBLE_DEVICES=<index> with CUDA_DEVICE_ORDER=PCI_BUS_ID, so CUDA
    numbers GPUs as NVML does (its default, fastest first, differs on a host with mixed GPU models), and
    NCSWEEP_GPU_INDEX=<index> for its NVML telemetry: the GPU it trains on is the GPU it reports.
    """
    host = socket.gethostname()
    if gpus:
        return [WorkerSpec(f"ncsweep-gpu{i}@{host}", {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(i),
                                                      "NCSWEEP_GPU_INDEX": str(i)}, i)
                for i in gpus]
    n = max(1, cpu_workers)
    per = str(threads or max(1, (os.cpu_count() or 1) // n))
    return [WorkerSpec(f"ncsweep-cpu{j}@{host}", {"CUDA_VISIBLE_DEVICES": "", "NCSWEEP_GPU_INDEX": "",
                                                   "OMP_NUM_THREADS": per, "MKL_NUM_THREADS": per})
            for j in range(n)]


def worker_command(name: str, loglevel: str = "INFO", queues: str = "celery") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-P", "prefork", "-c", "1",
            "--hostname", name, "-Q", queues, "-l", loglevel, "--without-gossip", "--without-mingle",
            "--without-heartbeat"]


def new_stop_file_path(label: str = "") -> str:
    """A path no other process uses for NCSWEEP_STOP_FILE: once it exists, the job of the one worker process
    given it stops after its last completed epoch (worker.reporter.DBReporter reads it)."""
    tag = f"{label}-" if label else ""
    return os.path.join(tempfile.gettempdir(), f"ncsweep-stop-{os.getpid()}-{tag}{uuid.uuid4().hex[:12]}")


def raise_stop_flag(path: str) -> None:
    """Create the stop file ``path`` (a supervisor's stop, or a Celery warm shutdown)."""
    with open(path, "w", encoding="ascii") as flag:
        flag.write(f"stopping {time.time():.0f}\n")


@dataclass
class Supervisor:
    """Keeps each worker process alive (restart with backoff) until stop().

    Each spawned process gets its own stop file (``stop_files``, a fresh path per spawn): its Celery warm
    shutdown raises only its own flag, and the file is removed once the process has exited, before a respawn,
    so one worker's SIGTERM never stops another worker's job nor the restarted worker's."""

    specs: list[WorkerSpec]
    base_env: dict[str, str] = field(default_factory=dict)
    loglevel: str = "INFO"
    log_dir: Any = None
    on_spawn: Any = None  # called with each process as soon as it is spawned (the embedded stack records them)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    stop_files: dict[str, str] = field(default_factory=dict)  # worker name -> its current process's stop file
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    # a respawn and stop() must not interleave: a process spawned after stop() raised the flags would never
    # be told to stop, nor its stop file removed
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def stop_file(self) -> str | None:
        """The first worker's current stop file (the only one of a one-worker supervisor)."""
        return self.stop_files.get(self.specs[0].name) if self.specs else None

    def _spawn(self, spec: WorkerSpec) -> subprocess.Popen:
        stop_file = new_stop_file_path(spec.name.split("@")[0])
        self.stop_files[spec.name] = stop_file
        env = {**os.environ, **self.base_env, **spec.env, "NCSWEEP_WORKER_NAME": spec.name,
               "PYTORCH_NVML_BASED_CUDA_CHECK": "1", "NCSWEEP_STOP_FILE": stop_file,
               "NCSWEEP_PARENT_PID": str(os.getpid())}  # it stops when this process dies (worker.orphan_watch)
        out = None
        if self.log_dir is not None:
            os.makedirs(self.log_dir, exist_ok=True)
            out = open(os.path.join(self.log_dir, spec.name.split("@")[0] + ".log"), "ab")
        proc = subprocess.Popen(worker_command(spec.name, self.loglevel), env=env, stdout=out,
                                stderr=subprocess.STDOUT if out else None, start_new_session=True)
        log.info("started worker %s (pid %s)", spec.name, proc.pid)
        if self.on_spawn is not None:
            self.on_spawn(proc)
        return proc

    def start(self) -> "Supervisor":
        """Spawn every worker; ValueError before spawning any when two specs share a name (the second process
        would replace the first in ``procs``, which would then never be stopped)."""
        names = [spec.name for spec in self.specs]
        twice = sorted({name for name in names if names.count(name) > 1})
        running = [name for name in names if name in self.procs and self.procs[name].poll() is None]
        if twice or running:
            raise ValueError(f"expected one worker per name, got {', '.join(twice or running)} "
                             f"{'twice' if twice else 'already running'}; no worker was started")
        for spec in self.specs:
            self.procs[spec.name] = self._spawn(spec)
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        backoff = {s.name: 1.0 for s in self.specs}
        while not self._stop.wait(1.0):
            for spec in self.specs:
                proc = self.procs[spec.name]
                if proc.poll() is not None and not self._stop.is_set():
                    log.warning("worker %s exited (code %s); restarting in %.0f s", spec.name, proc.returncode,
                                backoff[spec.name])
                    self._remove_stop_file(spec.name)
                    if self._stop.wait(backoff[spec.name]):
                        return
                    backoff[spec.name] = min(60.0, backoff[spec.name] * 2)
                    with self._lock:
                        if self._stop.is_set():
                            return
                        self.procs[spec.name] = self._spawn(spec)

    def _remove_stop_file(self, name: str) -> None:
        with contextlib.suppress(OSError, KeyError):
            os.remove(self.stop_files[name])

    def stop(self, timeout: float = 30.0) -> None:
        """Tell running jobs to stop (every live worker's stop file: each job checkpoints its last completed
        epoch and goes back to the queue without using an attempt, within about cancel_poll_seconds), SIGTERM
        (warm shutdown: the jobs return), then SIGKILL the process group after `timeout` seconds."""
        with self._lock:
            self._stop.set()
            for name, proc in self.procs.items():
                if proc.poll() is None and name in self.stop_files:
                    with contextlib.suppress(OSError):
                        raise_stop_flag(self.stop_files[name])
        try:
            self._terminate(timeout)
        finally:
            for name in self.stop_files:
                self._remove_stop_file(name)

    def _terminate(self, timeout: float) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._thread is not None:
            self._thread.join(5)


def start(gpus: list[int] | None = None, concurrency: int = 1, *, env: dict[str, str] | None = None,
          loglevel: str = "INFO", log_dir: Any = None) -> Supervisor:
    """Start workers without blocking: one per GPU in `gpus` (NVML indices; None = detect_gpus, which honours
    an inherited CUDA_VISIBLE_DEVICES), else `concurrency` CPU workers. GpuSelectionError (a ValueError) when
    `gpus` names a GPU twice, one this host does not have, or one outside an inherited CUDA_VISIBLE_DEVICES."""
    if gpus is None:
        gpus = detect_gpus()
    else:
        gpus = list(gpus)
        check_gpu_selection(gpus)
    return supervisor(gpus, concurrency, env=env, loglevel=loglevel, log_dir=log_dir).start()


def supervisor(gpus: list[int], concurrency: int = 1, *, env: dict[str, str] | None = None, loglevel: str = "INFO",
               log_dir: Any = None, on_spawn: Any = None) -> Supervisor:
    """The Supervisor :func:`start` starts, not started yet: a caller registers its ``stop`` first, so that an
    interrupt while the workers are spawned still stops those already running."""
    return Supervisor(worker_specs(gpus, concurrency), env or {}, loglevel, log_dir, on_spawn)


def main(gpus: list[int] | None = None, concurrency: int = 1, *, env: dict[str, str] | None = None,
         loglevel: str = "INFO") -> int:
    """Start the workers and supervise them until SIGINT/SIGTERM; returns 0 on a clean stop."""
    sup = start(gpus, concurrency, env=env, loglevel=loglevel)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    kinds = ", ".join(s.name for s in sup.specs)
    print(f"ncsweep: {len(sup.specs)} worker(s) running: {kinds}. Ctrl-C stops them.", flush=True)
    try:
        stop.wait()
    finally:
        sup.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
