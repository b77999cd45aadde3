"""Single-run CLI output: progress reporter, metric history in the workdir, per-epoch table, --out file.

The reporter stops at the next step on Ctrl-C, SIGTERM or SIGHUP; the metric history and the --out file are both
replaced atomically.
"""
from __future__ import annotations

import csv
import errno
import json
import math
import os
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from rich import box
from rich.progress import Progress
from rich.table import Table

TABLE_KEYS = ("acc", "loss", "nc1", "nc2_w", "nc3", "wh_b")

#: In a run's workdir: every metric row the CLI reported for it, one JSON object a line, so that a resumed
#: run's table and --out file hold the epochs before the resume too.
HISTORY = "metrics.jsonl"


def atomic_write(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Replace ``path`` by what ``write`` writes to a text file: a temp file in the same directory, flushed and
    fsynced, then renamed over ``path`` — a kill, a signal or a full disk leaves the old file whole (and no temp
    file). A new file gets the umask's permissions, a replaced one keeps its own; a symlink's target is replaced."""
    path = path.resolve() if path.is_symlink() else path
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
            f.flush()
            os.chmod(tmp, mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _kept_history(path: Path | None, upto: int) -> list[dict[str, Any]]:
    """The rows of epochs ≤ ``upto`` in the history file ``path``, which is rewritten to hold just those (a
    resumed run redoes the later epochs; ``upto`` = 0 starts it afresh). Lines a hard kill cut are dropped."""
    if path is None:
        return []
    rows = []
    if upto and path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and {"split", "key", "value"} <= row.keys() and isinstance(row.get("epoch"), int) \
                    and row["epoch"] <= upto:
                rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(path, lambda f: f.write(text))  # a kill now keeps the whole old history
    return rows


class CLIReporter:
    """Reporter that drives a rich progress bar and collects metric rows (appended to ``history`` as they
    come). ``unit`` "iteration" (a UFM run, one step per iteration) shows one bar with the iteration rate
    instead of epoch and step bars."""

    def __init__(self, progress: Progress, unit: str = "epoch", history: Path | None = None):
        self.progress = progress
        self.unit = unit
        self.history = history
        self.rows: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.abort_signal: int | None = None
        self.finishing = False  # the run has returned: a stop signal now only lets the outputs be written
        self._held: list[int] | None = None
        # hidden until on_start: a setup error (missing data, no CUDA) then prints no empty 0/? bars
        self.epochs = progress.add_task(f"{unit}s", total=None, visible=False)
        self.steps = progress.add_task("steps", total=None, visible=False)
        self._last = 0.0

    def on_resume(self, epoch: int) -> None:
        self.start_epoch = epoch

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        start_epoch = self.start_epoch
        with self.hold_signals():
            self.rows = _kept_history(self.history, start_epoch)
        if start_epoch:
            self.progress.console.print(f"resuming after {self.unit} {start_epoch} of {total_epochs}")
        self.progress.update(self.epochs, total=total_epochs, completed=start_epoch, visible=True)
        self.progress.update(self.steps, total=steps_per_epoch, completed=steps_per_epoch if start_epoch else 0,
                             visible=self.unit == "epoch")

    def on_progress(self, epoch: int, step: int, steps_per_epoch: int, samples_per_s: float) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and step != steps_per_epoch:
            return
        self._last = now
        self.progress.update(self.epochs, completed=epoch - 1 + step / steps_per_epoch)
        if self.unit == "epoch":
            self.progress.update(self.steps, completed=step, description=f"steps ({samples_per_s:,.0f} samples/s)")
        else:  # one step per iteration: the rate is iterations per second
            self.progress.update(self.epochs, description=f"{self.unit}s ({samples_per_s:,.0f}/s)")

    def on_metrics(self, epoch: int, split: str, metrics: dict[str, float]) -> None:
        reasons = getattr(metrics, "reasons", None) or {}  # a MetricDict says why a value is NaN
        new = [{"epoch": epoch, "split": split, "key": k, "value": float(v),
                **({"reason": reasons[k]} if k in reasons and not math.isfinite(float(v)) else {})}
               for k, v in metrics.items()]
        self.rows += new
        if self.history is not None:
            with self.history.open("a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in new))

    def on_checkpoint(self, epoch: int, path: str, nbytes: int, sha256: str) -> None:
        pass

    def should_stop(self) -> bool:
        return self.stop_requested

    @contextmanager
    def ctrl_c_stops(self) -> Iterator[None]:
        """Inside the block (main thread only) a first Ctrl-C, SIGTERM (a cluster scheduler's preemption notice)
        or SIGHUP (the terminal closed; not when ignored, as under nohup) asks the run to stop at the next step
        — the run saves its last completed epoch and returns — and a second one aborts at once
        (KeyboardInterrupt; ``abort_signal`` says which). ``stop_signal`` keeps which signal stopped it. The
        previous handlers are put back at the end of the block."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = [signal.SIGINT, signal.SIGTERM]
        if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
            signals.append(signal.SIGHUP)
        previous = {s: signal.signal(s, self._interrupt) for s in signals}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _interrupt(self, signum: int, frame: Any) -> None:
        if self._held is not None:  # inside hold_signals: handled once the file is in place
            self._held.append(signum)
            return
        _detach_from_terminal()  # the terminal closed (its SIGHUP): the run still saves and writes its files
        if self.stop_requested:
            self.abort_signal = signum
            raise KeyboardInterrupt
        self.stop_requested, self.stop_signal = True, signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        what = ("the run has ended, exiting once its outputs are written" if self.finishing
                else "stopping at the next step")
        try:
            self.progress.console.print(f"{name}: {what} (Ctrl-C again aborts)")
        except OSError:
            pass

    @contextmanager
    def hold_signals(self) -> Iterator[None]:
        """Signals that arrive inside the block (while a file is replaced) are handled after it."""
        if self._held is not None:
            yield
            return
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            for signum in held:
                self._interrupt(signum, None)


def _detach_from_terminal() -> None:
    """Point stdout and stderr, where they are a terminal that hung up, at /dev/null (as nohup would have), so
    that the rest of the run's output cannot fail it."""
    for fd in (1, 2):
        try:
            os.write(fd, b"")  # writes nothing: EIO only on a terminal that hung up (isatty is then False)
        except OSError as exc:
            if exc.errno != errno.EIO:
                continue
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)


def table(rows: list[dict[str, Any]], unit: str = "epoch", width: int = 10**6) -> Table:
    """The run's metrics, one row per (epoch, split); ``unit`` names the epoch column (UFM runs report
    iterations in it). Under 100 columns the table drops its vertical rules and shows 3 significant digits,
    so that a value such as 1.23e-05 stays whole in 80 columns."""
    compact = width < 100
    digits = 3 if compact else 4
    table = Table(title=f"metrics per {unit}", box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD)
    for col in (unit, "split", *TABLE_KEYS):
        table.add_column(col, justify="right", no_wrap=True)
    by: dict[tuple[int, str], dict[str, float]] = {}
    for r in rows:
        by.setdefault((r["epoch"], r["split"]), {})[r["key"]] = r["value"]
    for (epoch, split), m in sorted(by.items(), key=lambda item: (item[0][0], item[0][1] != "train")):
        if any(k in m for k in TABLE_KEYS):
            table.add_row(str(epoch), split, *("" if k not in m else f"{m[k]:.2f}" if k == "acc"  # percent
                                               else f"{m[k]:.{digits}g}" for k in TABLE_KEYS))
    return table


def nan_notes(rows: list[dict[str, Any]], keys: tuple[str, ...] = TABLE_KEYS) -> list[str]:
    """'key [split]: why it is NaN (epochs a–b)' for each reason a NaN of the table's keys came with."""
    seen: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        if r.get("reason") and r["key"] in keys:
            seen.setdefault((r["key"], r["split"], r["reason"]), []).append(r["epoch"])
    return [f"{key} [{split}]: {why} ({'epoch' if min(e) == max(e) else 'epochs'} "
            f"{min(e)}{'' if min(e) == max(e) else f'–{max(e)}'})" for (key, split, why), e in seen.items()]


def write_metrics(rows: list[dict[str, Any]], out: Path) -> None:
    """JSON list of {epoch, split, key, value[, reason]} (NaN/inf → null, with the reason a NaN came with) for
    a .json ``out``, or CSV with the columns epoch, split, key, value, reason for a .csv one (the CLI refuses
    other suffixes before training)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = [{**r, "value": r["value"] if math.isfinite(r["value"]) else None} for r in rows]

    def write(f: IO[str]) -> None:
        if out.suffix.lower() == ".csv":
            w = csv.DictWriter(f, fieldnames=["epoch", "split", "key", "value", "reason"])
            w.writeheader()
            w.writerows(clean)
        else:
            f.write(json.dumps(clean, indent=1))

    atomic_write(out, write)  # a signal or a kill mid-write leaves the previous file whole
