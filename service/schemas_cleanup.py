"""Request and response models of DELETE /sweeps/{id} and POST /sweeps/{id}/prune (reclaiming disk)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from nc_core.spec_types import int_in


class PruneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_last: int_in(ge=0) = Field(description="checkpoints kept per finished run, the newest; 0 keeps none")


class _Files(BaseModel):
    checkpoint_files: int = Field(description="checkpoint files (epoch_NNNN.pt) removed")
    bytes_freed: int = Field(description="bytes of the files removed (checkpoints, their sidecars, …)")
    not_removed: list[str] = Field(default_factory=list, description="'path: why' of each file or folder that could "
                                   "not be removed (left in place; its rows are deleted all the same)")


class SweepDeleted(_Files):
    sweep_id: int
    runs: int = Field(description="runs deleted: train and ufm runs and validate jobs")
    metric_rows: int
    distribution_rows: int
    checkpoint_rows: int
    event_rows: int = Field(description="change-feed events of the sweep and its runs")
    telemetry_rows: int = Field(description="worker_sample rows of its runs")
    folders: int = Field(description="artifact folders <artifacts>/run_<id>/ removed")


class SweepPruned(_Files):
    sweep_id: int
    keep_last: int
    runs: int = Field(description="finished train/ufm runs pruned to keep_last (skipped ones not counted)")
    runs_pruned: int = Field(description="of those, the runs that had more and lost some")
    checkpoint_rows: int = Field(description="checkpoint rows deleted (metrics stay)")
    skipped: dict[int, int] = Field(default_factory=dict, description="runs left as they are because a queued or "
                                    "running validate job reads their checkpoints → that job")
    unfinished: int = Field(0, description="queued or running runs of the sweep, not touched")
