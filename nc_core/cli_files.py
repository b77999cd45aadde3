"""File arguments of the CLIs: YAML files read safely (duplicate keys refused) and output paths checked early."""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings raise on a repeated key, naming it and its line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: let SafeLoader report it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first on line {first})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: Any):  # noqa: ANN201 - any YAML value
    """Parse one YAML document (a string, or a text file whose name the error marks then cite) safely,
    refusing duplicate keys."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - UniqueKeyLoader is a SafeLoader


def yaml_kind(value: Any) -> str:
    """What a parsed YAML document is, in words, for "expected a mapping, got …" (never a Python type name)."""
    if value is None:
        return "an empty document (nothing but comments or blank lines)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return "a list" if isinstance(value, list) else f"a {type(value).__name__} value"


def read_yaml_file(path: Path, what: str) -> Any:
    """Parse the YAML file ``path``; ValueError naming the file when it cannot be read, is not UTF-8, is not
    valid YAML or repeats a key (``what`` says what the file should be, e.g. "a RunSpec YAML file")."""
    try:
        with path.open(encoding="utf-8") as text:  # YAML errors then point at the file, not "<unicode string>"
            return load_yaml(text)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); expected {what}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None


def out_path_problem(out: Path, suffixes: tuple[str, ...]) -> str | None:
    """Why ``out`` cannot take an output file with one of ``suffixes`` (wrong suffix, a directory, a parent that
    does not exist or is not writable), or None."""
    names = " or ".join(suffixes)
    if out.suffix.lower() not in suffixes:
        return f"expected a {names} file name, got {repr(out.suffix) if out.suffix else 'no suffix'}"
    if out.is_dir():
        return f"that is a directory; expected a {names} file path such as {str(out / ('out' + suffixes[0]))!r}"
    if not out.parent.is_dir():
        return f"the directory {str(out.parent)!r} does not exist; create it first"
    try:  # a real write, not os.access: root passes every permission test, yet /sys or a read-only mount refuse
        if out.exists():
            with open(out, "ab"):  # appends nothing: the file is left as it is
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".ncsweep-probe-"):
                pass
    except OSError as exc:
        return f"cannot write in {str(out.parent)!r} ({exc.strerror or type(exc).__name__})"
    return None


def make_workdir(workdir: Path) -> list[Path]:
    """Create a run's ``workdir`` (and its missing parents) before training, so that a path that cannot be one
    is a ValueError naming --workdir; returns the directories it created, outermost first."""
    created = [p for p in (workdir, *workdir.parents) if not p.exists()][::-1]
    if workdir.exists():  # a directory, or a file the run refuses (workdir_lock) naming it
        return []
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_if_empty(created)
        raise ValueError(f"--workdir {str(workdir)!r}: cannot create the directory ({exc.strerror or exc}); expected "
                         "a directory path where this user may write the checkpoints") from None
    return created


def remove_if_empty(created: list[Path]) -> None:
    """Remove the directories a failed run created (outermost first in ``created``) while they hold nothing but
    its lock and an empty metric history: never a workdir that existed before, or one with checkpoints or
    metrics in it."""
    from nc_core.cli_report import HISTORY

    if not created or not created[-1].is_dir():
        return
    workdir = created[-1]
    for path in workdir.rglob("*"):
        if path.is_file() and path != workdir / ".lock" and not (path.name == HISTORY and path.stat().st_size == 0):
            return
    try:
        fd = os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no other run has taken it since
        shutil.rmtree(workdir, ignore_errors=True)
    except OSError:
        return
    finally:
        os.close(fd)
    for parent in reversed(created[:-1]):
        try:
            parent.rmdir()  # only while empty
        except OSError:
            return
