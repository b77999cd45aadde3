"""Reclaiming disk, the file side: remove a deleted sweep's run folders or a pruned run's checkpoint files.

The folders are <artifacts>/run_<id>/. Called after the commit of the rows' deletion (nc_core.db.cleanup_repo): a
file that cannot be removed is reported ('path: why') and left, never fatal. A folder whose run.json marker names
another run row (another database's, a reused id) is not this run's: it is left and reported.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from nc_core.settings import Settings
from worker.workdirs import MARKER, identity, run_folder

CHECKPOINT = re.compile(r"^epoch_(\d{4,})\.pt$")  # as nc_core.training.checkpoint names them (it imports torch)
SIDECAR = ".sha256"
MAX_PROBLEMS = 100  # 'path: why' lines returned; more are counted in one last line


@dataclass
class Removed:
    folders: int = 0
    checkpoint_files: int = 0
    bytes_freed: int = 0
    problems: list[str] = field(default_factory=list)
    more_problems: int = 0

    def problem(self, path: Path | str, why: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{path}: {why}")
        else:
            self.more_problems += 1

    def unlink(self, path: Path) -> bool:
        """Remove one file (or link), counting its bytes and whether it is a checkpoint; False if it stays."""
        try:
            size = path.lstat().st_size
            path.unlink()
        except FileNotFoundError:
            return True
        except OSError as exc:
            self.problem(path, exc.strerror or type(exc).__name__)
            return False
        self.bytes_freed += size
        self.checkpoint_files += bool(CHECKPOINT.match(path.name)) and path.parent.name == "ckpt"
        return True

    def report(self) -> dict[str, Any]:
        more = [f"… and {self.more_problems} more"] if self.more_problems else []
        return {"checkpoint_files": self.checkpoint_files, "bytes_freed": self.bytes_freed,
                "not_removed": self.problems + more}


def workdir(settings: Settings, run_id: int) -> Path:
    """The run's folder, as the worker names it (worker.workdirs.run_folder)."""
    return run_folder(settings.resolved_artifacts_dir(), run_id)


def _foreign(folder: Path, run: Any, recorded: set[int]) -> str | None:
    """Why ``folder`` is not ``run``'s — its marker names another run row, or it has none (a folder of older code)
    and this database recorded no checkpoint of the run (``recorded``: the run ids that had checkpoint rows), as
    worker.workdirs decides — else None."""
    try:
        found = json.loads((folder / MARKER).read_text())
    except FileNotFoundError:
        if run.id in recorded:
            return None
        return (f"it has no {MARKER} and this database recorded no checkpoint of run {run.id}: another database's "
                "folder?; left in place")
    except (OSError, ValueError) as exc:
        return f"its {MARKER} cannot be read ({exc}); left in place"
    if found != identity(run):
        return f"its {MARKER} names another run row ({found}), not run {run.id} of sweep {run.sweep_id}; left in place"
    return None


def remove_run_folders(settings: Settings, runs: Iterable[Any], recorded: set[int]) -> dict[str, Any]:
    """Remove each run's folder with everything in it (runs without one, such as validate jobs, are skipped; a
    folder that is not the run's is left: _foreign)."""
    removed = Removed()
    for run in runs:
        folder = workdir(settings, run.id)
        if folder.is_symlink():
            removed.folders += removed.unlink(folder)
            continue
        if not folder.is_dir():
            continue
        why = _foreign(folder, run, recorded)
        if why:
            removed.problem(folder, why)
            continue
        removed.folders += _remove_tree(folder, removed)
    return {"folders": removed.folders, **removed.report()}


def _remove_tree(folder: Path, removed: Removed) -> bool:
    """Files first, then the emptied folders, bottom up (never following links); whether ``folder`` is gone."""
    def failed(exc: OSError) -> None:
        removed.problem(exc.filename or folder, exc.strerror or type(exc).__name__)

    for root, dirs, files in os.walk(folder, topdown=False, onerror=failed):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            removed.unlink(Path(root) / name)
        try:
            os.rmdir(root)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if Path(root) == folder or exc.errno != errno.ENOTEMPTY:  # not empty: reported below it
                failed(exc)
    return not folder.exists()


def remove_checkpoints(settings: Settings, runs: Iterable[Any], doomed: dict[int, set[int]]) -> dict[str, Any]:
    """Remove the checkpoint files (sidecar first) of the epochs whose rows prune deleted (``doomed``: run →
    epochs) — those only: a file without a row is left, and so is a folder whose lock a process holds (a retry
    resumed the run after the rows were committed: it may be writing a newer checkpoint)."""
    removed = Removed()
    for run in runs:
        epochs = doomed.get(run.id)
        folder = workdir(settings, run.id)
        if not epochs or not (folder / "ckpt").is_dir():
            continue
        why = _foreign(folder, run, {run.id})  # its rows were just deleted: a run with doomed epochs had rows
        if why:
            removed.problem(folder, why)
            continue
        with _held_unless_busy(folder) as free:
            if not free:
                removed.problem(folder, "in use by a process (the run was retried?); its pruned files are left")
                continue
            for epoch in sorted(epochs):
                name = f"epoch_{epoch:04d}.pt"
                if removed.unlink(folder / "ckpt" / (name + SIDECAR)):  # never a sidecar without its file
                    removed.unlink(folder / "ckpt" / name)
    return removed.report()


@contextmanager
def _held_unless_busy(folder: Path) -> Iterator[bool]:
    """The folder's workdir lock (nc_core.training.checkpoint.workdir_lock's flock of .lock) taken without waiting:
    yields True while held, False when another process holds it."""
    try:
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield True  # no lock file can be made (a read-only folder): nothing else writes there either
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
