"""Run statuses and the one table of legal transitions."""
from __future__ import annotations

from typing import Iterable, Mapping

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})

# from-status -> allowed to-statuses. A finished run is immutable; a retry is a new attempt that
# re-queues it (FAILED/CANCELLED -> QUEUED) through `retry`, never through a worker write.
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    RUNNING: frozenset({QUEUED, SUCCEEDED, FAILED, CANCELLED}),  # QUEUED: lease expired, re-queued
    SUCCEEDED: frozenset(),
    FAILED: frozenset({QUEUED}),  # retry
    CANCELLED: frozenset({QUEUED}),  # retry
}


class IllegalTransition(ValueError):
    """A status change that the state machine forbids (HTTP 409)."""

    def __init__(self, run_id: int, current: str, target: str, message: str | None = None):
        """`message` replaces the generic wording where the caller can say it plainly (API retry/cancel)."""
        super().__init__(message or f"run {run_id}: cannot go from {current!r} to {target!r}; "
                                    f"allowed from {current!r}: {sorted(TRANSITIONS[current]) or 'none (finished)'}")
        self.run_id, self.current, self.target = run_id, current, target


def check_transition(run_id: int, current: str, target: str) -> None:
    if target not in TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(run_id, current, target)


def status_phrase(status: str) -> str:
    """A run's status in a plain sentence: 'is queued', 'is running', 'has already succeeded'."""
    return f"is {status}" if status in (QUEUED, RUNNING) else f"has already {status}"


#: Run kind → (what its progress counts, what its rate counts per second), as the CLI and dashboard show them.
RUN_UNITS = {"train": ("epoch", "samples/s"), "ufm": ("iteration", "it/s"), "validate": ("checkpoint", "ckpt/s")}


def metric_step(kinds: Iterable[str]) -> str:
    """What the ``epoch`` of metric rows counts for runs of these kinds, as tables and plot axes name it:
    'iteration' when they are all UFM runs, else 'epoch' (a validate job stores its parent's epochs)."""
    return "iteration" if set(kinds) == {"ufm"} else "epoch"


def default_split(kinds: Iterable[str]) -> str:
    """The split results and plots show by default for runs of these kinds: 'test', or 'train' when they are
    all UFM runs (a UFM has its free features and nothing else)."""
    return "train" if set(kinds) == {"ufm"} else "test"


#: What a result says when its values mix unfinished runs' last measured epochs with finished runs' final ones.
UNFINISHED_NOTE = "* includes unfinished runs (last measured epoch)"


def unfinished_runs(measured: Iterable[int], status: Mapping[int, str]) -> list[int]:
    """Of the runs behind a value (those that ``measured`` one: they have a stored row), the ones that have not
    succeeded (queued, running, cancelled, failed), in order: their last measured epoch may be short of the
    others' final one. One definition for /sweeps/{id}/results' ``unfinished_runs``, the heatmap's asterisks and
    the dashboard's cells."""
    return [r for r in measured if status[r] != SUCCEEDED]
