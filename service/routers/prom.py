"""GET /metrics: Prometheus exposition from a collector that reads the database at scrape time."""
from __future__ import annotations

import logging
from typing import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select

from nc_core.db import workers_repo
from nc_core.db.models import Run, as_utc
from nc_core.db.session import session_factory
from nc_core.db.states import FINISHED, QUEUED, STATUSES
from service.routers.events import app_settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["prometheus"])
BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)
REDIS_QUEUES = ("celery", "ncsweep.control")  # worker.celery_app TRAIN_QUEUE, CONTROL_QUEUE


def redis_queue_lengths(broker_url: str, queues: tuple[str, ...] = REDIS_QUEUES) -> dict[str, int] | None:
    """LLEN of each broker queue, or None when the broker is not Redis or not reachable (fast timeout)."""
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    try:
        from nc_core.broker_client import redis_client

        client = redis_client(broker_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return {q: int(client.llen(q)) for q in queues}
        finally:
            client.close()
    except Exception as exc:
        log.debug("broker %s unreachable for queue depth: %s", broker_url, exc)
        return None


class DBCollector:
    """Runs by status, queue depth (DB and Redis), workers by state, job durations of finished runs."""

    def __init__(self, settings):  # noqa: ANN001 - nc_core.settings.Settings
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        url = self.settings.resolved_database_url()
        with session_factory(url)() as session:
            counts = dict(session.execute(select(Run.status, func.count(Run.id)).group_by(Run.status)).all())
            workers = workers_repo.list_workers(session, self.settings.worker_lost_after_seconds)
            spans = session.execute(select(Run.status, Run.started_at, Run.finished_at).where(
                Run.status.in_(FINISHED), Run.started_at.is_not(None), Run.finished_at.is_not(None))).all()
        runs = GaugeMetricFamily("ncsweep_runs", "Runs by status", labels=["status"])
        for status in STATUSES:
            runs.add_metric([status], counts.get(status, 0))
        yield runs
        depth = GaugeMetricFamily("ncsweep_queue_depth", "Queued runs (source=db) and broker list length "
                                  "(source=redis) when the broker is reachable", labels=["source", "queue"])
        depth.add_metric(["db", "runs"], counts.get(QUEUED, 0))
        for queue, n in (redis_queue_lengths(self.settings.broker_url) or {}).items():
            depth.add_metric(["redis", queue], n)
        yield depth
        by_state = GaugeMetricFamily("ncsweep_workers", "Workers by heartbeat state", labels=["state"])
        for state in ("busy", "idle", "lost", "stopped"):
            by_state.add_metric([state], sum(w["status"] == state for w in workers))
        yield by_state
        yield GaugeMetricFamily("ncsweep_workers_alive", "Workers with a recent heartbeat",
                                value=sum(w["status"] in ("busy", "idle") for w in workers))
        yield from self._durations(spans)

    @staticmethod
    def _durations(spans: list) -> Iterator[Metric]:
        hist = HistogramMetricFamily("ncsweep_job_duration_seconds", "Wall time of finished runs",
                                     labels=["status"])
        for status in sorted(FINISHED):
            secs = [(as_utc(f) - as_utc(s)).total_seconds()
                    for st, s, f in spans if st == status]
            buckets = [(str(float(b)), sum(x <= b for x in secs)) for b in BUCKETS] + [("+Inf", len(secs))]
            hist.add_metric([status], buckets, sum_value=sum(secs))
        yield hist


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text format; the registry is built per app so tests and apps never share state."""
    registry = getattr(request.app.state, "prom_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DBCollector(app_settings(request)))
        request.app.state.prom_registry = registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
