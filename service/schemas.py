"""Request and response models of the HTTP API (pydantic v2)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from nc_core.spec import Int, PositiveInt


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SweepCreated(BaseModel):
    sweep_id: int
    runs: int = Field(description="runs inserted")
    duplicates: int = Field(description="expanded runs dropped because their spec_hash repeated")
    enqueued: bool = Field(description="False: the broker failed; runs stay queued and the reconciler re-sends them")


class SweepExtended(BaseModel):
    sweep_id: int
    added: int = Field(description="new runs inserted (spec_hash not yet in the sweep)")
    existing: int = Field(description="runs of the merged sweep that already existed (untouched)")
    enqueued: bool


class ExtendRequest(_In):
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="axis path → values to add")
    seeds: list[Int] = Field(default_factory=list, description="seeds to add")


class ValidateRequest(_In):
    epochs: list[PositiveInt] | None = Field(default=None,
                                             description="checkpoint epochs; null = every stored checkpoint")
    splits: list[Literal["train", "test"]] = Field(default_factory=lambda: ["train", "test"], min_length=1)


class SweepSummary(_Out):
    id: int
    name: str
    owner: str
    created_at: datetime
    axes: list[Any]
    runs: int = Field(0, description="the runs the sweep's grid defines (validate jobs not included)")
    counts: dict[str, int] = Field(default_factory=dict, description="runs per status")
    progress: float = Field(0.0, description="0..1, work done: the mean over runs of 1 if succeeded, else completed "
                                             "epochs / epochs (+ the current epoch's share while running); "
                                             "cancelled and failed runs count only the epochs they completed")
    validate_jobs: dict[str, int] = Field(default_factory=dict,
                                          description="validate jobs of the sweep's runs, per status")


class SweepDetail(SweepSummary):
    spec: dict[str, Any]
    cancel_requested: int = 0
    eta_s: float | None = Field(None, description="rough: remaining work / observed throughput; null if unknown")


class SweepPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[SweepSummary]


class RunOut(_Out):
    id: int
    sweep_id: int
    kind: str
    parent_run_id: int | None
    status: str
    cancel_requested: bool
    attempt: int = Field(description="the current attempt, 1..max_attempts; 0 until the first claim (a retry "
                                     "starts again from 0)")
    max_attempts: int
    seed: int
    grid: dict[str, Any]
    spec_hash: str
    epoch: int
    epochs_total: int
    start_epoch: int = Field(0, description="epochs completed when the current attempt started (its resume point)")
    step: int
    steps_total: int
    samples_per_s: float | None
    eta_s: float | None
    error: str | None
    worker_name: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None = Field(description="start of the current attempt (null while queued)")
    finished_at: datetime | None
    updated_at: datetime

    @computed_field(description="a running run: seconds since its worker last reported (heartbeats come every "
                                "heartbeat_seconds; a worker that died stays 'running' until its lease expires)")
    @property
    def silent_s(self) -> float | None:
        if self.status != "running":
            return None
        seen = self.updated_at if self.updated_at.tzinfo else self.updated_at.replace(tzinfo=timezone.utc)
        return round(max(0.0, (datetime.now(timezone.utc) - seen).total_seconds()), 1)


class RunDetail(RunOut):
    spec: dict[str, Any]
    options: dict[str, Any]


class RunPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[RunOut]


class ActionResult(BaseModel):
    """Outcome of cancel/retry: how many runs changed, and how."""

    cancelled: int = 0
    cancel_requested: int = 0
    retried: int = 0
    enqueued: bool | None = None
    skipped: dict[int, int] = Field(default_factory=dict, description="sweep retry: runs left as they are "
                                    "because a queued or running validate job reads their checkpoints → that job")


class WorkerOut(_Out):
    name: str
    host: str
    pid: int | None
    device: str
    gpu_index: int | None
    gpu_name: str | None
    util_percent: float | None
    memory_used: int | None
    memory_total: int | None
    temperature_c: float | None
    current_run_id: int | None
    status: str  # busy | idle | stopped | lost (no heartbeat for settings.worker_lost_after_seconds)
    started_at: datetime
    last_seen: datetime
    age_s: float  # seconds since the last heartbeat
    run: dict[str, Any] | None = None  # the current run's id, sweep, status, epoch/step, progress, ETA
