"""Thin Celery tasks: each takes a run id and hands it to the runner (ids only over Redis)."""
from __future__ import annotations

from celery import shared_task

from worker.admission import JobTask


@shared_task(name="ncsweep.train", base=JobTask, bind=True, ignore_result=True)
def train(self, run_id: int) -> str:  # noqa: ANN001
    from worker.runner import execute

    return execute(int(run_id), "train", hostname=self.request.hostname)


@shared_task(name="ncsweep.validate", base=JobTask, bind=True, ignore_result=True)
def validate(self, run_id: int) -> str:  # noqa: ANN001
    from worker.runner import execute

    return execute(int(run_id), "validate", hostname=self.request.hostname)


@shared_task(name="ncsweep.ufm", base=JobTask, bind=True, ignore_result=True)
def ufm(self, run_id: int) -> str:  # noqa: ANN001
    from worker.runner import execute

    return execute(int(run_id), "ufm", hostname=self.request.hostname)


@shared_task(name="ncsweep.reconcile", ignore_result=True)
def reconcile() -> dict:
    """One reconciler pass (scheduled by beat on the control queue)."""
    from worker.reconciler import reconcile_once

    return reconcile_once()
