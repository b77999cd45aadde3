"""DBReporter: the trainer's Reporter protocol backed by fenced SQL writes and a lease-keeping thread."""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from nc_core.db import actions_repo, results_repo, runs_repo
from nc_core.db.session import session_scope

log = logging.getLogger(__name__)


#: SQLite errors that are no outage: a schema or statement bug, the same on every retry.
_NOT_TRANSIENT = ("no such table", "no such column", "has no column named", "syntax error", "no such function")


def transient_db_error(exc: BaseException | None) -> BaseException | None:
    """The transient database error behind ``exc`` (the database restarting, unreachable, a lost connection,
    SQLite's "database is locked"): ``exc`` itself or an exception it was raised from or while handling (a
    write that failed inside the trainer surfaces wrapped), else None. Transient: SQLAlchemy's OperationalError
    and InterfaceError (less SQLite's schema errors), DisconnectionError, any DBAPIError that invalidated its
    connection."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DisconnectionError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
            return exc
        if isinstance(exc, (OperationalError, InterfaceError)):
            return None if any(text in str(exc.orig) for text in _NOT_TRANSIENT) else exc
        exc = exc.__cause__ if exc.__cause__ is not None or exc.__suppress_context__ else exc.__context__
    return None


def write_retrying(url: str, write: Callable[[Any], Any], patience_s: float, what: str) -> Any:
    """``write(session)`` in a transaction of its own, retried while the database cannot be reached (a
    restart, a failover, a full connection pool, a lock) for up to ``patience_s`` seconds, then the error.
    An attempt that began inside that window and blocked past it (SQLite waits out its 30 s busy timeout
    before it says "database is locked") is retried once more, so one blocked attempt never uses up the
    window by itself. Every write passed here is idempotent (an UPSERT or a fenced UPDATE), so a retry after a
    lost commit is safe."""
    deadline, delay, extended = time.monotonic() + patience_s, 0.5, False
    while True:
        began = time.monotonic()
        try:
            with session_scope(url) as session:
                return write(session)
        except (DBAPIError, DisconnectionError) as exc:
            if transient_db_error(exc) is not exc:
                raise
            now, last = time.monotonic(), ""
            if now >= deadline:
                if extended or began >= deadline:
                    raise
                extended, last = True, " once more (the wait outlasted the retry window)"
            cause = type(getattr(exc, "orig", None) or exc).__name__
            waited = f" after waiting {now - began:.0f} s" if now - began >= 1 else ""
            log.warning("%s: database unreachable (%s%s); retrying%s in %.1f s", what, cause, waited, last, delay)
            time.sleep(delay)
            delay = min(5.0, delay * 2)


class DBReporter:
    """Progress is kept in memory and written (with the lease extension) every heartbeat_seconds by a
    background thread, so long evaluations keep the lease; between beats the thread reads the run's cancel
    flag every cancel_poll_seconds, so a cancel stops the job at its next step within about that long.
    should_stop() turns true on cancel, when the lease is lost, or once the worker is stopping (its
    supervisor created the file NCSWEEP_STOP_FILE names: ``interrupted``); metric and checkpoint writes are
    fenced by the lease."""

    def __init__(self, settings: Any, run_id: int, owner: str, *, metric_version: int | None = None,
                 batch_size: int | None = None, heartbeater: Any = None):
        self.settings, self.run_id, self.owner = settings, run_id, owner
        self.url = settings.resolved_database_url()
        self.metric_version = metric_version
        self.batch_size = batch_size
        self.heartbeater = heartbeater
        self.cancelled = False  # cancel requested by a user
        self.lease_lost = False
        self.interrupted = False  # the worker is stopping: the run goes back to the queue
        # a previous attempt may still hold the workdir: its lease had expired when this one claimed the run,
        # so it stops within a heartbeat of its next write; wait one lease for it before failing the run
        self.workdir_wait_s = float(settings.lease_seconds)
        self._stop_file = os.environ.get("NCSWEEP_STOP_FILE") or None
        self._progress: dict[str, Any] = {}
        self._epochs_total: int | None = None
        self._start_epoch = 0  # completed epochs this attempt resumed after
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-run-{run_id}", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "DBReporter":
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and flush the last progress (so a finished run shows its final epoch)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=float(self.settings.heartbeat_seconds) + 30)
        with self._lock:
            pending = bool(self._progress)
        if pending and not self.lease_lost:
            self.beat()

    def take_progress(self) -> dict[str, Any]:
        """The progress no beat could write yet (the database was away), now cleared: the job's final write
        carries it, so the run shows its last epoch once the database is back."""
        with self._lock:
            progress, self._progress = self._progress, {}
        return progress

    def _loop(self) -> None:
        period = float(self.settings.heartbeat_seconds)
        poll = min(period, float(self.settings.cancel_poll_seconds))
        due = time.monotonic() + period
        while not self._stop.wait(poll):
            if self._stop_file is not None and not self.interrupted and os.path.exists(self._stop_file):
                log.info("run %s: the worker is stopping; the run stops after its last completed epoch", self.run_id)
                self.interrupted = True
            if time.monotonic() >= due - 1e-3:
                self.beat()
                due = time.monotonic() + period
            elif not self.cancelled:
                self.poll_cancel()

    def poll_cancel(self) -> bool:
        """Read the run's cancel flag now (a beat confirms the lease); True once a cancel is seen."""
        try:
            with session_scope(self.url) as session:
                if runs_repo.cancel_requested(session, self.run_id):
                    self._classify(session)
        except Exception as exc:  # noqa: BLE001 - database briefly down: the next beat decides
            log.debug("run %s: cancel poll failed: %s", self.run_id, exc)
        return self.cancelled

    def beat(self) -> bool:
        """Extend the lease and write the latest progress now; False once the job must stop."""
        with self._lock:
            progress, self._progress = self._progress, {}
        try:
            with session_scope(self.url) as session:
                ok = runs_repo.heartbeat(session, self.run_id, self.owner, float(self.settings.lease_seconds),
                                         **progress)
                if not ok:
                    self._classify(session)
        except Exception as exc:  # database briefly down: keep training; the lease decides
            log.warning("run %s: heartbeat failed: %s", self.run_id, exc)
            with self._lock:
                self._progress = {**progress, **self._progress}
            return not self.should_stop()
        if self.heartbeater is not None and progress.get("samples_per_s") is not None:
            self.heartbeater.set_throughput(progress["samples_per_s"])
        return ok

    def _classify(self, session: Any) -> None:
        from nc_core.db.models import Run

        run = session.get(Run, self.run_id)
        if run is not None and run.status == "running" and run.lease_owner == self.owner and run.cancel_requested:
            if not self.cancelled:
                log.info("run %s: cancel requested; stopping at the next step", self.run_id)
            self.cancelled = True
        else:
            if not self.lease_lost:
                log.warning("run %s: lease lost to %s; stopping", self.run_id, getattr(run, "lease_owner", None))
            self.lease_lost = True

    # -- Reporter protocol -------------------------------------------------------------------------
    def on_resume(self, epoch: int) -> None:
        with self._lock:  # a resumed run shows the epochs it already has from the first heartbeat
            self._start_epoch = int(epoch)
            self._progress.update(epoch=int(epoch), step=0, start_epoch=int(epoch))

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        with self._lock:  # start_epoch: where this attempt began (0 without on_resume), for ETAs from started_at
            self._progress.update(epochs_total=int(total_epochs), steps_total=int(steps_per_epoch),
                                  start_epoch=self._start_epoch)
        self._epochs_total = int(total_epochs)

    def on_progress(self, epoch: int, step: int, steps_per_epoch: int, samples_per_s: float) -> None:
        with self._lock:
            p = self._progress
            done = epoch if step >= steps_per_epoch else max(0, epoch - 1)  # epoch is 1-based, in progress
            p.update(epoch=int(done), step=int(step), steps_total=int(steps_per_epoch))
            if samples_per_s and samples_per_s > 0:
                p["samples_per_s"] = float(samples_per_s)
                total = self._epochs_total
                if total and self.batch_size:
                    left = (int(total) - int(done)) * steps_per_epoch - (0 if step >= steps_per_epoch else step)
                    p["eta_s"] = max(0.0, left * self.batch_size / float(samples_per_s))

    def _write(self, what: str, write: Callable[[Any], Any]) -> Any:
        """A fenced write, retried through a database outage for up to half a lease; then the error stops the job
        and the runner gives the run back to the queue (see transient_db_error)."""
        return write_retrying(self.url, write, float(self.settings.lease_seconds) / 2, f"run {self.run_id}: {what}")

    def on_metrics(self, epoch: int, split: str, metrics: dict[str, float]) -> None:
        ok = self._write(f"metrics of epoch {epoch}/{split}", lambda session: results_repo.upsert_metrics(
            session, self.run_id, self.owner, epoch, split, metrics, self._version()))
        if not ok:
            self.lease_lost = True
            log.warning("run %s: metrics of epoch %s/%s discarded: lease lost", self.run_id, epoch, split)

    def on_distribution(self, epoch: int, split: str, key: str, values: list[float]) -> None:
        ok = self._write(f"{key} of epoch {epoch}/{split}", lambda session: results_repo.upsert_distribution(
            session, self.run_id, self.owner, epoch, split, key, values))
        if not ok:
            self.lease_lost = True
            log.warning("run %s: %s distribution of epoch %s/%s discarded: lease lost", self.run_id, key, epoch, split)

    def on_checkpoint(self, epoch: int, path: str, nbytes: int, sha256: str) -> None:
        def record(session: Any) -> bool:
            ok = results_repo.record_checkpoint(session, self.run_id, self.owner, epoch, str(path), nbytes, sha256)
            if ok:  # files gone since (deleted by hand, a crash between prune and on_pruned): off the table
                results_repo.forget_missing_checkpoints(session, self.run_id, self.owner, os.path.exists)
            return ok

        ok = self._write(f"checkpoint of epoch {epoch}", record)
        if not ok:
            self.lease_lost = True

    def on_pruned(self, epochs: list[int]) -> None:
        """keep_last deleted these epochs' files (after the newer checkpoint was recorded): the table lists only
        checkpoints that exist."""
        self._write(f"pruned checkpoints {epochs}", lambda session: results_repo.forget_missing_checkpoints(
            session, self.run_id, self.owner, os.path.exists))  # fenced: a lost lease forgets nothing

    def record_environment(self, entry: dict[str, Any]) -> None:
        """What this attempt runs with (nc_core.training.environment), appended to the run's ``environments``."""
        if not self._write("environment", lambda session: runs_repo.record_environment(
                session, self.run_id, self.owner, entry)):
            self.lease_lost = True
            log.warning("run %s: environment not recorded: lease lost", self.run_id)

    def should_stop(self) -> bool:
        return self.cancelled or self.lease_lost or self.interrupted

    def resumable_epochs(self) -> set[int]:
        """The epochs of the run's checkpoint rows: the checkpoints an attempt recorded while it held the lease.
        A newer file has no row when a fenced-out attempt wrote it after its epoch's metrics were discarded."""
        return set(self._write("checkpoint rows", lambda session: actions_repo.checkpoint_epochs(session, self.run_id)))

    def _version(self) -> int:
        if self.metric_version is None:
            try:
                from nc_core.metrics import METRIC_VERSION

                self.metric_version = int(METRIC_VERSION)
            except Exception:  # metrics package without a version: rows say version 1
                self.metric_version = 1
        return self.metric_version
