"""Checkpoint integrity: sha256 sidecars (`epoch_XXXX.pt.sha256`), their verification, temp-file hygiene."""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

log = logging.getLogger("nc_core.training.checkpoint")  # one logger for everything about checkpoint files

SIDECAR_SUFFIX = ".sha256"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
#: The temporary files of save_checkpoint (`.epoch_0003.pt.<pid>.tmp`) and of their sidecars.
_TEMP = re.compile(r"^\.epoch_\d{4,}\.pt(?:\.sha256)?\.\d+\.tmp$")


class CheckpointCorrupt(ValueError):
    """A checkpoint whose bytes do not match the sha256 recorded in its sidecar when it was written (or whose
    sidecar does not hold a sha256): ``path``, ``expected`` (None: unreadable sidecar), ``got``."""

    def __init__(self, message: str, *, path: Path, expected: str | None, got: str | None):
        super().__init__(message)
        self.path, self.expected, self.got = path, expected, got


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar(path: str | Path) -> Path:
    """Where the sha256 of checkpoint ``path`` is kept: ``<name>.sha256`` (``sha256sum -c`` reads it)."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def temp_path(path: Path) -> Path:
    """This process's temporary file for ``path`` (hidden: listing and pruning never see it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_temp_sidecar(path: Path, sha: str) -> Path:
    """Write (and fsync) the sidecar of ``path`` holding ``sha`` under a temporary name; returns that name, for
    the caller to rename into place once ``path`` is."""
    tmp = temp_path(sidecar(path))
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{sha}  {path.name}\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def recorded_sha(path: str | Path) -> str | None:
    """The sha256 recorded for checkpoint ``path`` when it was written; None when it has no sidecar (a file of
    an older ncsweep). CheckpointCorrupt when the sidecar holds no sha256."""
    side = sidecar(path)
    try:
        text = side.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    digest = text.split()[0] if text.split() else ""
    if not _DIGEST.match(digest):
        raise CheckpointCorrupt(f"checksum file {side}: expected a sha256 (64 hex digits), got {text[:80]!r}",
                                path=Path(path), expected=None, got=None)
    return digest


def verify(path: str | Path) -> str | None:
    """Check ``path`` against its sidecar: its sha256, or None when it has none (not verified).
    CheckpointCorrupt when the bytes differ from those written."""
    expected = recorded_sha(path)
    if expected is None:
        return None
    got = sha256_file(path)
    if got != expected:
        raise CheckpointCorrupt(f"{path} does not match the checksum recorded when it was written (sha256 "
                                f"expected {expected}, got {got}): its bytes changed after it was saved",
                                path=Path(path), expected=expected, got=got)
    return got


def delete(path: Path) -> None:
    """Delete checkpoint ``path`` with its sidecar (the sidecar first: never a sidecar without its file)."""
    sidecar(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def move_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``<name>.corrupt`` (kept as evidence, listed by nobody), its sidecar to
    ``<name>.corrupt.sha256``; returns the new name."""
    aside = path.with_name(path.name + ".corrupt")
    if sidecar(path).exists():
        sidecar(path).replace(sidecar(aside))
    path.replace(aside)
    return aside


def os_error_in(exc: BaseException) -> OSError | None:
    """The first OSError in ``exc``'s chain (itself, its __cause__ / __context__): torch.save reports a full disk
    as ``RuntimeError: [enforce fail at inline_container.cc...] unexpected pos`` with the OSError as context."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def remove_stale_temps(directory: Path) -> list[str]:
    """Delete the temporary files that killed or failed saves left in checkpoint ``directory`` (a full disk
    stays full otherwise), and sidecars whose checkpoint is gone. Only for the workdir lock's holder: no
    other process writes there then. Returns the names removed."""
    if not directory.is_dir():
        return []
    removed = []
    for p in directory.iterdir():
        orphan = p.name.endswith(".pt" + SIDECAR_SUFFIX) and not p.with_name(p.name[:-len(SIDECAR_SUFFIX)]).exists()
        if _TEMP.match(p.name) or orphan:
            try:
                size = p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                continue
            removed.append(f"{p.name} ({size} bytes)")
    if removed:
        log.warning("removed %d leftover checkpoint file(s) of an earlier process in %s: %s", len(removed),
                    directory, ", ".join(sorted(removed)))
    return removed
