"""Request and response models of the HTTP API (pydantic v2)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

from nc_core.spec import Int, PositiveInt


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: POST /sweeps bodies that /docs offers in "Try it out" (each submits as it is; tests/test_api_openapi.py)
SWEEP_EXAMPLES = {
    "lr-sweep": {"summary": "a grid over the learning rate, two seeds (6 runs)",
                 "value": {"name": "lr-sweep", "base": {"epochs": 8, "data": {"name": "digits"}},
                           "grid": {"optim.lr": [0.01, 0.05, 0.1]}, "seeds": [0, 1]}},
    "loss-by-head": {"summary": "CE vs MSE × learned vs fixed simplex-ETF head, every epoch evaluated (8 runs)",
                     "value": {"name": "loss-by-head",
                               "base": {"epochs": 4, "data": {"name": "digits"}, "model": {"name": "mlp", "width": 64},
                                        "eval": {"every": 1}},
                               "grid": {"loss.name": ["ce", "mse"], "head.name": ["learned", "fixed_etf"]},
                               "seeds": [0, 1]}},
    "zipped": {"summary": "zip: learning rate and weight decay varied together (3 runs)",
               "value": {"name": "lr-wd-pairs", "base": {"epochs": 8, "data": {"name": "digits"}},
                         "zip": {"optim.lr": [0.01, 0.05, 0.1], "optim.weight_decay": [0.0, 5e-4, 1e-3]}}},
}


class SweepCreated(BaseModel):
    sweep_id: int
    runs: int = Field(description="runs inserted")
    duplicates: int = Field(description="expanded runs dropped because their spec_hash repeated")
    enqueued: bool = Field(description="False: the broker failed; runs stay queued and the reconciler re-sends them")


class SweepExtended(BaseModel):
    sweep_id: int
    added: int = Field(description="new runs inserted (spec_hash not yet in the sweep)")
    existing: int = Field(description="runs of the merged sweep that already existed (untouched)")
    enqueued: bool = Field(description="the added runs were sent to the broker; False when none was added, or "
                                       "the broker failed (they stay queued and the reconciler re-sends them)")


class ExtendRequest(_In):
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="axis path → values to add")
    seeds: list[Int] = Field(default_factory=list, description="seeds to add (each once)")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):  # as POST /sweeps refuses them
            raise ValueError("duplicate seeds")
        return seeds


class ValidateRequest(_In):
    epochs: list[PositiveInt] | None = Field(default=None,
                                             description="checkpoint epochs; null = every stored checkpoint")
    splits: list[Literal["train", "test"]] = Field(default_factory=lambda: ["train", "test"], min_length=1,
                                                   description="the splits to evaluate (default both)")

    @field_validator("epochs")
    @classmethod
    def _some_epochs(cls, epochs: list[int] | None) -> list[int] | None:
        if epochs is not None and not epochs:  # [] is no request for all: that is null
            raise ValueError("expected at least one epoch, or null for all stored checkpoints, got []")
        return epochs


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
    cancel_requested: int = Field(0, description="runs still unfinished (queued or running) whose cancel was "
                                                 "requested; a run already cancelled is not counted")
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
    environments: list[dict[str, Any]] = Field(
        default_factory=list, description="per attempt, oldest first: the device (and its model), torch's CPU thread "
        "count, torch and Python versions and host the run's numbers came from (another thread count or device "
        "sums in other orders: another run, as another seed would be), with `attempt` and `n`, the entry's place "
        "among all the run's attempts (1 first; attempt numbers start again after a retry, n does not; entries "
        "recorded before n count by their place in this list); empty for runs started before ncsweep recorded it")
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None = Field(description="start of the current attempt (null while queued)")
    finished_at: datetime | None
    updated_at: datetime

    @field_validator("environments", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

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
    queued_ahead: int | None = Field(None, description="a queued run: the queued runs before it, in the order the "
                                                       "broker hands them out (null otherwise)")


class RunPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[RunOut]


class RunSeries(BaseModel):
    """One run's series of one (split, key), as GET /runs/{id}/metrics gives it, plus the run's id."""

    run_id: int
    split: str
    key: str
    epochs: list[int]
    values: list[float | None] = Field(description="null: NaN/undefined (notes says why, where the suite did)")
    versions: list[int] = Field(description="the metric definition version of each value (docs/metrics.md)")
    notes: dict[str, str] = Field(description="epoch → why its value is null")


class SweepMetricsPage(BaseModel):
    sweep_id: int
    run_ids: list[int] = Field(description="the runs answered, ascending (those without metric rows too)")
    series: list[RunSeries] = Field(description="ordered by run_id, then split, key")
    next_after_run: int | None = Field(description="pass as after_run for the runs that follow; null: none follow")


class ActionResult(BaseModel):
    """Outcome of cancel/retry: how many runs changed, and how."""

    cancelled: int = Field(0, description="queued runs now cancelled")
    cancel_requested: int = Field(0, description="running runs told to stop at their next step")
    retried: int = Field(0, description="failed or cancelled runs queued again")
    enqueued: bool | None = Field(None, description="retry: the runs were sent to the broker; false when it "
                                  "failed (they stay queued and the reconciler re-sends them); null for a cancel")
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


class Problem(BaseModel):
    detail: str = Field(description="what was wrong, and what to do")


class Conflict(Problem):
    run_id: int | None = Field(None, description="an illegal status change: the run")
    status: str | None = Field(None, description="an illegal status change: the run's status")


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: the request part (body, query, path) then the field's path")
    msg: str = Field(description="what was expected and what was got")
    type: str = Field(description="the kind of problem, e.g. value_error, missing, json_invalid")
    field: str = Field(description="the field in dotted form, list positions as [i]: grid.optim.lr[1], seeds[0]")


class ValidationProblems(BaseModel):
    detail: list[ErrorItem] = Field(description="one item per problem (a sweep lists every bad value)")


_RESPONSES: dict[int, dict[str, Any]] = {
    401: {"model": Problem, "description": "no valid bearer token (NCSWEEP_AUTH_READS: also for reads)"},
    403: {"model": Problem, "description": "a read-only token on a mutating endpoint"},
    404: {"model": Problem, "description": "no sweep or run with that id"},
    409: {"model": Conflict, "description": "illegal in the current state (a finished run, nothing to retry, …); "
                                            "nothing was changed"},
    413: {"model": Problem, "description": "the request body is larger than NCSWEEP_MAX_BODY_BYTES; nothing was "
                                           "changed"},
    422: {"model": ValidationProblems, "description": "invalid request: one item per problem, each naming its field"},
    503: {"model": Problem, "description": "the database is unreachable; nothing was changed, retry after "
                                           "Retry-After seconds",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
}
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}
STREAMS_FULL = {503: {"model": Problem, "description": "the database is unreachable, or NCSWEEP_MAX_EVENT_STREAMS "
                                                     "streams are open already; retry after Retry-After seconds",
                     "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}}}
EVENT_STREAM = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                      "description": "server-sent events: 'id:', 'event:' (status, progress, metric, worker) and "
                                     "'data:' (the event's JSON) lines; ': ping' comments keep it open"}}


def problems(*codes: int, **more: dict[int, Any]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses=`` of a route: the error statuses it can answer (401 … 503, one description each,
    in this one place), plus ``ok`` (PNG, EVENT_STREAM) for its success."""
    return {**more.get("ok", {}), **{code: _RESPONSES[code] for code in codes}}
