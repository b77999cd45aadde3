"""Atomic checkpoints `ckpt/epoch_XXXX.pt` + sha256 sidecars: save, verified load, keep_last pruning, discovery."""
from __future__ import annotations

import fcntl
import logging
import os
import random
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from nc_core.training import integrity
from nc_core.training.integrity import CheckpointCorrupt, sha256_file

log = logging.getLogger(__name__)
_NAME = re.compile(r"^epoch_(\d{4,})\.pt$")


def ckpt_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "ckpt"


def ckpt_path(workdir: str | Path, epoch: int) -> Path:
    return ckpt_dir(workdir) / f"epoch_{epoch:04d}.pt"


def list_checkpoints(workdir: str | Path) -> dict[int, Path]:
    """{epoch: path} of the complete checkpoints in ``workdir/ckpt`` (temporary files ignored)."""
    d = ckpt_dir(workdir)
    if not d.is_dir():
        return {}
    found = {int(m.group(1)): p for p in d.iterdir() if (m := _NAME.match(p.name))}
    return dict(sorted(found.items()))


def rng_state() -> dict[str, Any]:
    """torch (CPU and every visible CUDA device), numpy and python RNG states."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states. CUDA states go to the devices this process sees, by index: a run
    checkpointed by a process that saw more GPUs (a CLI run without CUDA_VISIBLE_DEVICES) resumes in a
    worker pinned to one (its device 0 is the run's device there), where the rest have no device."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def save_checkpoint(workdir: str | Path, epoch: int, state: dict[str, Any]) -> tuple[Path, int, str]:
    """Write ``state`` atomically as ``ckpt/epoch_XXXX.pt`` and its sha256 as ``epoch_XXXX.pt.sha256``; returns
    (path, nbytes, sha256). Both are written in full (temp files, fsync) before either is renamed into place,
    so a full disk fails before anything is replaced; on any error the temp files are removed, and an OSError
    anywhere in the chain (torch reports a full disk as a RuntimeError) is raised as an OSError naming the
    checkpoint. Peak disk use: keep_last + 1 checkpoints (older ones are pruned only once the new one is in
    place and on record, see :func:`save_pruned`)."""
    path = ckpt_path(workdir, epoch)
    tmp, side_tmp = integrity.temp_path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        sha = sha256_file(tmp)
        side_tmp = integrity.write_temp_sidecar(path, sha)
        integrity.sidecar(path).unlink(missing_ok=True)  # a rewrite: the old sidecar would not match
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the complete new one
        os.replace(side_tmp, integrity.sidecar(path))  # killed before this: a file without sidecar, loaded as is
        _fsync_dir(path.parent)
        return path, path.stat().st_size, sha
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if side_tmp is not None:
            side_tmp.unlink(missing_ok=True)
        if not isinstance(exc, Exception) or (cause := integrity.os_error_in(exc)) is None:
            raise
        err = OSError(f"could not write checkpoint epoch {epoch} to {path}: {cause}")
        err.errno = cause.errno  # (setting strerror would make str(err) "[Errno 28] No space ..." only)
        raise err from exc


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prune(workdir: str | Path, keep_last: int | None, *, protect: int | None = None) -> list[int]:
    """Delete all but the ``keep_last`` newest checkpoints (None keeps all); returns deleted epochs."""
    if keep_last is None:
        return []
    epochs = list(list_checkpoints(workdir))
    doomed = [e for e in epochs[:-keep_last] if e != protect] if len(epochs) > keep_last else []
    for e in doomed:
        integrity.delete(ckpt_path(workdir, e))
    return doomed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load of a checkpoint verified against its sidecar (CheckpointCorrupt when its bytes changed since
    it was written; a file without a sidecar, from an older ncsweep, loads unverified)."""
    integrity.verify(path)
    # weights_only=False: our own files hold numpy/python RNG states (tuples, ndarrays)
    return torch.load(path, map_location=map_location, weights_only=False)


def load_for_validation(path: str | Path, epoch: int, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`load_checkpoint` for a validate job, whose errors name the file and its epoch (nothing is moved
    aside: the job does not own the workdir)."""
    try:
        return load_checkpoint(path, map_location)
    except CheckpointCorrupt as exc:
        if exc.expected is None:  # the sidecar itself is damaged
            raise CheckpointCorrupt(f"validate: cannot verify the checkpoint of epoch {epoch}, {path}: {exc}",
                                    path=exc.path, expected=None, got=None) from None
        raise CheckpointCorrupt(
            f"validate: the checkpoint of epoch {epoch}, {path}, does not match the checksum recorded when it was "
            f"written (sha256 expected {exc.expected}, got {exc.got}): the file changed after it was saved, so "
            "metrics from it would not be the run's", path=exc.path, expected=exc.expected, got=exc.got) from None
    except FileNotFoundError:
        raise FileNotFoundError(f"validate: the checkpoint of epoch {epoch}, {path}, is gone: deleted after it was "
                                "listed (keep_last pruning, or by hand)") from None
    except Exception as exc:  # noqa: BLE001 - whatever torch.load raises on a damaged file
        raise ValueError(f"validate: the checkpoint of epoch {epoch}, {path}, is unreadable (expected a complete "
                         f"checkpoint file, got {_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def load_newest(workdir: str | Path, map_location: str | torch.device = "cpu", *,
                accept: Callable[[int], bool] | None = None) -> dict[str, Any] | None:
    """The newest readable checkpoint (of an epoch ``accept`` takes, when given), or None. An unreadable one
    (truncated, corrupt, or not matching the sha256 in its sidecar) is renamed ``<name>.corrupt`` (its sidecar
    ``<name>.corrupt.sha256``) with a warning, so that it neither hides nor counts as a kept checkpoint, and the
    one before it is tried."""
    for epoch, path in reversed(list_checkpoints(workdir).items()):
        if accept is not None and not accept(epoch):
            continue
        try:
            return load_checkpoint(path, map_location)
        except Exception as exc:  # noqa: BLE001 - whatever torch.load raises on a damaged file
            aside = integrity.move_aside(path)
            why = (f"it does not match the checksum recorded when it was written: sha256 expected {exc.expected}, "
                   f"got {exc.got}" if isinstance(exc, CheckpointCorrupt) and exc.expected is not None
                   else _first_line(exc))
            log.warning("checkpoint %s is unreadable (%s); moved aside to %s, resuming from an older one if any",
                        path, why, aside.name)
    return None


def start_state(workdir: str | Path, resume: bool, map_location: str | torch.device = "cpu", *,
                resumable: set[int] | None = None) -> dict[str, Any] | None:
    """The checkpoint a run starts from: the newest readable one when ``resume``, else None after deleting
    every checkpoint in the workdir (a fresh start). Either way the temp files of earlier processes' saves
    (killed, or failed on a full disk) are deleted first: the caller holds the workdir lock.

    ``resumable``: the epochs whose checkpoints the run's record vouches for (the worker's database rows), or
    None for any file. A file of another epoch that is newer than the one resumed from was written by an
    attempt fenced out after losing its lease (its epoch's metrics were discarded): it is deleted, so that
    the run trains and reports that epoch again."""
    integrity.remove_stale_temps(ckpt_dir(workdir))
    if not resume:
        for path in list_checkpoints(workdir).values():
            integrity.delete(path)
        return None
    if resumable is None:
        return load_newest(workdir, map_location)
    state = load_newest(workdir, map_location, accept=resumable.__contains__)
    start = int(state["epoch"]) if state is not None else 0
    stale = [e for e in list_checkpoints(workdir) if e > start and e not in resumable]
    for epoch in stale:
        integrity.delete(ckpt_path(workdir, epoch))
    if stale:
        log.warning("deleted the checkpoints of epochs %s in %s: no record of them (written by an attempt that had "
                    "lost its lease); resuming after epoch %s", stale, ckpt_dir(workdir), start)
    return state


class WorkdirBusy(ValueError):
    """Another run (``holder``: "pid N" from the lock file) holds the workdir; ``waited_s``: how long this
    one waited for it (0: refused at once)."""

    def __init__(self, message: str, *, workdir: Path, holder: str, waited_s: float):
        super().__init__(message)
        self.workdir, self.holder, self.waited_s = workdir, holder, waited_s


#: How often :func:`workdir_lock` retries a busy workdir while it waits.
LOCK_POLL_S = 0.5


@contextmanager
def workdir_lock(workdir: str | Path, wait_s: float = 0.0, stop: Callable[[], bool] | None = None) -> Iterator[Path]:
    """Hold ``workdir`` for one run: an exclusive flock on ``workdir/.lock``, released on exit or by the OS when
    the process dies. A second run on the same workdir (which would train the same epochs again and
    interleave the checkpoints and metric history) waits up to ``wait_s`` seconds for the holder to let go,
    retrying every :data:`LOCK_POLL_S`, and is then refused with :class:`WorkdirBusy` naming the holder
    (``wait_s`` 0: refused at once) — at once, too, when ``stop()`` turns true while it waits (a cancel)."""
    root = Path(workdir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"workdir: expected a directory for the checkpoints, got a file: {root}")
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, root, max(0.0, float(wait_s)), stop)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield root
    finally:
        os.close(fd)


def _acquire(fd: int, root: Path, wait_s: float, stop: Callable[[], bool] | None = None) -> None:
    """flock ``fd`` (the lock file of ``root``), polling for up to ``wait_s`` seconds (or until ``stop()``);
    WorkdirBusy after that."""
    started = time.monotonic()
    deadline, told = started + wait_s, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if told:
                log.info("workdir %s is free after %.1f s; starting", root, time.monotonic() - started)
            return
        except BlockingIOError:
            pass
        holder = os.pread(fd, 100, 0).decode(errors="replace").strip() or "another process"
        left = deadline - time.monotonic()
        if left <= 0 or (stop is not None and stop()):
            wait_s = min(wait_s, time.monotonic() - started)
            break
        if not told:
            log.info("workdir %s is in use by another run (%s); waiting up to %.0f s for it to end", root, holder,
                     wait_s)
            told = True
        time.sleep(min(LOCK_POLL_S, left))
    if wait_s <= 0:
        raise WorkdirBusy(f"workdir: {root} is in use by another run ({holder}); wait for it to end, or give this "
                          "one another workdir (--workdir)", workdir=root, holder=holder, waited_s=0.0)
    raise WorkdirBusy(f"workdir: {root} is still in use by another run ({holder}) after waiting {wait_s:g} s for it "
                      "to end; that process held it for the whole wait (stuck?): end it, or give this run another "
                      "workdir", workdir=root, holder=holder, waited_s=wait_s)


def check_spec(state: dict[str, Any], spec: Any, workdir: str | Path) -> None:
    """Raise ValueError unless checkpoint ``state`` was written for ``spec`` (a RunSpec), naming the fields
    that differ: a resume goes on from the same spec only."""
    from nc_core.sweep import spec_changes, spec_hash

    if state.get("spec_hash") != spec_hash(spec):
        changed = spec_changes(state.get("spec") or {}, spec)
        raise ValueError(f"{ckpt_dir(workdir)} holds checkpoints of a different spec "
                         f"({changed or 'hash ' + str(state.get('spec_hash'))[:12]}); use another --workdir, or "
                         "--no-resume to DELETE them and train this spec there afresh")


def save_pruned(workdir: str | Path, epoch: int, state: dict[str, Any], keep_last: int | None, reporter: Any) -> None:
    """:func:`save_checkpoint`, then ``reporter.on_checkpoint`` (the record), then :func:`prune` to ``keep_last``
    and ``reporter.on_pruned(epochs)`` (when it has one) — older files are deleted only once the new one is on
    record, so a lease lost before the record leaves the workdir's recorded checkpoints intact for the attempt
    that resumes from them. Nothing at all once the reporter has lost the run's lease (``reporter.lease_lost``):
    the workdir then belongs to the attempt that holds the lease."""
    if getattr(reporter, "lease_lost", False):
        log.warning("checkpoint of epoch %s not saved in %s: the run's lease is lost (another attempt owns the "
                    "workdir)", epoch, ckpt_dir(workdir))
        return
    path, nbytes, sha = save_checkpoint(workdir, epoch, state)
    reporter.on_checkpoint(epoch, str(path), nbytes, sha)
    if getattr(reporter, "lease_lost", False):  # the record was refused: leave the older files to their owner
        return
    pruned = prune(workdir, keep_last, protect=epoch)
    on_pruned = getattr(reporter, "on_pruned", None)
    if pruned and on_pruned is not None:
        on_pruned(pruned)
