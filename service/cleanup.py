"""Reclaiming disk, the file side: remove the artifact folders <artifacts>/run_<id>/ of a deleted sweep's runs, or
a pruned run's checkpoint files. Called after the commit of the rows' deletion (nc_core.db.cleanup_repo): a file
that cannot be removed is reported ('path: why') and left, never fatal. A folder whose run.json marker names
another run row (another database's, a reused id) is not this run's: it is left and reported."""
from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from nc_core.settings import Settings
from worker.workdirs import MARKER, identity

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
    """As worker.runner.run_workdir."""
    return Path(settings.resolved_artifacts_dir()) / f"run_{run_id}"


def _foreign(folder: Path, run: Any) -> str | None:
    """Why ``folder`` is not ``run``'s (its marker names another run row), else None (no marker: an older one)."""
    try:
        found = json.loads((folder / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"its {MARKER} cannot be read ({exc}); left in place"
    if found != identity(run):
        return f"its {MARKER} names another run row ({found}), not run {run.id} of sweep {run.sweep_id}; left in place"
    return None


def remove_run_folders(settings: Settings, runs: Iterable[Any]) -> dict[str, Any]:
    """Remove each run's folder with everything in it (runs without one, such as validate jobs, are skipped)."""
    removed = Removed()
    for run in runs:
        folder = workdir(settings, run.id)
        if folder.is_symlink():
            removed.folders += removed.unlink(folder)
            continue
        if not folder.is_dir():
            continue
        why = _foreign(folder, run)
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


def remove_checkpoints(settings: Settings, runs: Iterable[Any], kept: dict[int, set[int]]) -> dict[str, Any]:
    """Remove each run's checkpoint files (with their sha256 sidecars) whose epoch is not in ``kept[run]``: the
    pruned rows' files, and files without a row (neither a validate job nor a resume reads those)."""
    removed = Removed()
    for run in runs:
        folder = workdir(settings, run.id)
        ckpt = folder / "ckpt"
        if not ckpt.is_dir():
            continue
        why = _foreign(folder, run)
        if why:
            removed.problem(folder, why)
            continue
        try:
            names = sorted(p.name for p in ckpt.iterdir())
        except OSError as exc:
            removed.problem(ckpt, exc.strerror or type(exc).__name__)
            continue
        for name in names:
            m = CHECKPOINT.match(name)
            if m and int(m.group(1)) not in kept.get(run.id, set()):
                if removed.unlink(ckpt / (name + SIDECAR)):  # the sidecar first: never a sidecar without its file
                    removed.unlink(ckpt / name)
    return removed.report()
