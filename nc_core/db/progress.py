"""Run and sweep progress as work done, and the ETA extrapolated from a run's current attempt (pure functions)."""
from __future__ import annotations

from nc_core.db.states import RUNNING, SUCCEEDED


def run_fraction(status: str, epoch: int, epochs_total: int, step: int = 0, steps_total: int = 0) -> float:
    """The share of a run's work that is done, 0..1: the one rule behind every progress figure (the API's
    sweep stats, `ncsweep watch`/`runs`/`show`, the dashboard's sweep list, sweep page and run page).

    A succeeded run counts 1. Every other run counts the epochs it completed (a UFM run its iterations, a
    validate job its checkpoints) over its total: a running run adds the finished share of the epoch it is in;
    a cancelled or failed run does not (a retry redoes that partial epoch from its checkpoint), so neither a
    cancel nor a failure counts as work done. A queued run counts what earlier attempts completed (a retry
    resumes after it). A sweep's progress is the mean of this over the runs its grid defines (validate jobs
    are not counted): a sweep whose runs were all cancelled shows the epochs they trained, not 100 %.
    ``sweeps_repo.sweep_stats`` computes the same rule in SQL.
    """
    if status == SUCCEEDED:
        return 1.0
    if not epochs_total or epochs_total <= 0:
        return 0.0
    within = min(step / steps_total, 1.0) if status == RUNNING and steps_total and steps_total > 0 else 0.0
    return max(0.0, min(1.0, (epoch + within) / epochs_total))


def sweep_fraction(fractions: list[float]) -> float:
    """A sweep's progress: the mean run_fraction of its train/UFM runs; 0 for a sweep without runs."""
    return sum(fractions) / len(fractions) if fractions else 0.0


def attempt_eta(elapsed_s: float, fraction: float, epochs_total: int, start_epoch: int = 0) -> float | None:
    """Seconds left for a running run without a reported ETA, extrapolated from its current attempt: the
    attempt started ``elapsed_s`` ago after ``start_epoch`` completed epochs (its resume point; 0 from scratch)
    and has reached ``fraction`` of the run since. None until the attempt has made progress, or when done."""
    if not epochs_total or epochs_total <= 0 or fraction >= 1:
        return None
    done = fraction * epochs_total - (start_epoch or 0)
    if done <= 0 or elapsed_s < 0:
        return None
    return elapsed_s * (1.0 - fraction) * epochs_total / done
