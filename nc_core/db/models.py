"""SQLAlchemy 2.0 tables: sweeps, runs, metric rows and distributions, checkpoints, workers, telemetry, tokens."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String,
                        Text, UniqueConstraint, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime: a naive one is UTC (every timestamp ncsweep writes is), an aware one
    is converted; None stays None."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp with time zone that reads back as an aware UTC datetime on every backend: SQLite keeps no
    zone and hands back naive values (the API then wrote them without one), PostgreSQL hands them back in the
    session's TimeZone (+02:00 on a server set so)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:  # noqa: ARG002
        return as_utc(value)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Sweep(Base):
    __tablename__ = "sweep"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the SweepSpec as submitted (json mode)
    axes: Mapped[list[Any]] = mapped_column(JSON, default=list)  # grid + zip axis paths, in order
    owner: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    runs: Mapped[list["Run"]] = relationship(back_populates="sweep", cascade="all, delete-orphan")


class Run(Base):
    __tablename__ = "run"
    __table_args__ = (
        UniqueConstraint("sweep_id", "kind", "spec_hash", "parent_run_id", name="uq_run_sweep_kind_hash"),
        # a sweep's own runs have no parent, and NULLs never collide in a UNIQUE constraint: this index is
        # what keeps one run per spec in a sweep
        Index("uq_run_primary_hash", "sweep_id", "kind", "spec_hash", unique=True,
              postgresql_where=text("parent_run_id IS NULL"), sqlite_where=text("parent_run_id IS NULL")),
        Index("ix_run_sweep_status", "sweep_id", "status"),
        Index("ix_run_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweep.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="train")  # train | validate | ufm
    parent_run_id: Mapped[int | None] = mapped_column(ForeignKey("run.id"), nullable=True)  # validate jobs
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # RunSpec.model_dump(mode="json")
    spec_hash: Mapped[str] = mapped_column(String(64))
    grid: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # axis path -> value (no seed)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # validate: epochs, splits
    # per attempt (the last MAX_ENVIRONMENTS): {attempt, worker, device, device_name, threads, torch, python, host}
    environments: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)

    status: Mapped[str] = mapped_column(String(16), default="queued")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    epoch: Mapped[int] = mapped_column(Integer, default=0)  # epochs completed
    # epochs already completed when the current attempt started (its resume checkpoint; 0 = from scratch)
    start_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    epochs_total: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)  # step within the current epoch
    steps_total: Mapped[int] = mapped_column(Integer, default=0)  # steps per epoch
    samples_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker_name: Mapped[str | None] = mapped_column(String(200), nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # current attempt
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    sweep: Mapped[Sweep] = relationship(back_populates="runs")


class Metric(Base):
    __tablename__ = "metric"
    # Column order serves the series query (run_id, split, key) ORDER BY epoch; upserts name the
    # same column set (ON CONFLICT matches by set, on PostgreSQL and SQLite).
    __table_args__ = (UniqueConstraint("run_id", "split", "key", "epoch", name="uq_metric_point"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # NULL = NaN / undefined
    note: Mapped[str | None] = mapped_column(String(300), nullable=True)  # why value is NULL (the suite's reason)
    metric_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MetricDistribution(Base):
    """A sorted per-sample distribution of one (run, epoch, split, key), e.g. cosine margins as quantiles."""

    __tablename__ = "metric_distribution"
    __table_args__ = (UniqueConstraint("run_id", "epoch", "split", "key", name="uq_metric_distribution"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(64))  # cos_margin
    values: Mapped[list[Any]] = mapped_column(JSON)  # ascending floats (null = NaN), at most 1001
    n: Mapped[int] = mapped_column(Integer)  # len(values)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoint"
    __table_args__ = (UniqueConstraint("run_id", "epoch", name="uq_checkpoint_run_epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Worker(Base):
    """Latest heartbeat per worker (one row per worker name)."""

    __tablename__ = "worker"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200), default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    device: Mapped[str] = mapped_column(String(32), default="cpu")  # cpu | cuda:N
    gpu_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gpu_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    util_percent: Mapped[float | None] = mapped_column(Float, nullable=True)  # GPU util, or CPU % without GPU
    memory_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # bytes (GPU, or RAM)
    memory_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    temperature_c: Mapped[float | None] = mapped_column(Float, nullable=True)
    current_run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="idle")  # idle | busy | stopped
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WorkerSample(Base):
    """Bounded per-run telemetry history (peak memory, throughput)."""

    __tablename__ = "worker_sample"
    __table_args__ = (Index("ix_worker_sample_run", "run_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    worker_name: Mapped[str] = mapped_column(String(200))
    run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    util_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    memory_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    samples_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    scope: Mapped[str] = mapped_column(String(16), default="write")  # read | write | admin
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Event(Base):
    """Append-only change feed (status changes, progress, new metric points) for SSE consumers."""

    __tablename__ = "event"
    # a sweep's events in id order: /events?sweep_id=&since= and a sweep's newest event (the plot cache)
    __table_args__ = (Index("ix_event_sweep_id_id", "sweep_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))  # status | progress | metric | worker
    sweep_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
