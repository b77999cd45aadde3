"""Reconciler: re-queue runs whose lease expired (or fail them), re-send lost messages, prune old events."""
from __future__ import annotations

import json
import logging
import threading
import time
from datetime import timedelta
from typing import Any

from nc_core.db import events_repo, runs_repo
from nc_core.db.session import session_scope
from nc_core.settings import Settings, get_settings

log = logging.getLogger(__name__)
RESEND_AFTER_S = 60.0  # a queued run untouched this long may have lost its message
_APPS: dict[str, Any] = {}


def celery_app_for(settings: Settings) -> Any:
    """One Celery app per broker URL in this process (made on first use: no I/O until a message is sent)."""
    if settings.broker_url not in _APPS:
        from worker.celery_app import make_celery

        _APPS[settings.broker_url] = make_celery(settings)
    return _APPS[settings.broker_url]


def reconcile_once(settings: Settings | None = None, *, resend_after_s: float = RESEND_AFTER_S,
                   app: Any = None) -> dict[str, Any]:
    """One pass; returns {'requeued': ids, 'failed': ids, 'cancelled': ids, 'resent': ids, 'pruned_events':
    count}. 'cancelled': queued runs whose cancel was requested and that no worker ended within the grace
    period (resend_after_s) — they have no message to make one do it (runs_repo.cancel_stale_requested)."""
    settings = settings or get_settings()
    app = app or celery_app_for(settings)
    url = settings.resolved_database_url()
    now = runs_repo.utcnow()
    with session_scope(url) as session:
        requeued, failed = runs_repo.requeue_expired(session, now, settings.max_attempts)
        kinds = runs_repo.kinds(session, requeued)
        cancelled = runs_repo.cancel_stale_requested(session, now - timedelta(seconds=resend_after_s))
    if cancelled:
        log.warning("cancelled queued runs whose cancel was requested but that no worker ended: %s", cancelled)
    if requeued:
        from worker.celery_app import send_runs

        send_runs(app, [(rid, kinds.get(rid, "train")) for rid in requeued])
        log.info("re-queued runs with expired leases: %s", requeued)
    if failed:
        log.warning("runs ended when their worker was lost (failed on their last attempt, or cancelled as "
                    "requested): %s", failed)
    resent = resend_lost(settings, app, now - timedelta(seconds=resend_after_s),
                         held_after=time.time() - resend_after_s)
    return {"requeued": requeued, "failed": failed, "cancelled": cancelled, "resent": resent,
            "pruned_events": prune_old_events(settings)}


def prune_old_events(settings: Settings) -> int:
    """Delete change-feed events older than settings.event_retention_seconds (0 keeps them all); returns how
    many went (a bounded batch a pass: events_repo.prune_events)."""
    if settings.event_retention_seconds <= 0:
        return 0
    with session_scope(settings.resolved_database_url()) as session:
        return events_repo.prune_events(session, settings.event_retention_seconds)


def resend_lost(settings: Settings, app: Any, older_than: Any, held_after: float | None = None) -> list[int]:
    """Re-send queued runs older than `older_than` whose id is in no broker message (duplicates are
    harmless: the claim drops them). Inspects Redis only when the queue is shorter than the backlog.
    A message a worker received after `held_after` (epoch seconds) counts as present: that worker is
    starting the job (a fresh Celery child takes seconds) and will claim the run."""
    url = settings.resolved_database_url()
    with session_scope(url) as session:
        stale = runs_repo.stale_queued(session, older_than)
        backlog = runs_repo.count_queued(session) if stale else 0
    if not stale:
        return []
    present = broker_run_ids(settings.broker_url, backlog, held_after=held_after)
    lost = [(rid, kind) for rid, kind in stale if present is None or rid not in present]
    if lost:
        from worker.celery_app import send_runs

        send_runs(app, lost)
        log.warning("re-sent %d queued runs whose message was missing from the broker", len(lost))
    with session_scope(url) as session:
        runs_repo.touch(session, [rid for rid, _ in stale])
    return [rid for rid, _ in lost]


def broker_run_ids(broker_url: str, backlog: int, queue: str = "celery",
                   held_after: float | None = None) -> set[int] | None:
    """Run ids waiting in the Redis queue; a cheap length check skips the scan when every queued run can
    have a message. Unacked (delivered) messages count only when delivered after `held_after` (kombu's
    `unacked_index` holds the delivery time): a worker claims within seconds of delivery, so a run still
    queued whose message was delivered before the grace period lost its worker (the message would come
    back only after the visibility timeout). None when the broker cannot be inspected (then re-send all)."""
    from nc_core.broker_client import queue_keys, redis_client

    try:
        client = redis_client(broker_url, socket_timeout=5)
        keys = queue_keys(queue)
        if sum(client.llen(k) for k in keys) >= backlog:
            return _AllPresent()
        payloads = [m for k in keys for m in client.lrange(k, 0, -1)]
        if held_after is not None:
            tags = client.zrangebyscore("unacked_index", held_after, "+inf")
            payloads += [_unacked_payload(v) for v in (client.hmget("unacked", tags) if tags else []) if v]
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot inspect the broker (%s); re-sending every stale queued run", exc)
        return None
    return {rid for rid in map(_run_id_of, payloads) if rid is not None}


class _AllPresent(set):
    def __contains__(self, item: object) -> bool:
        return True


def _unacked_payload(value: bytes) -> Any:
    """kombu stores an unacked delivery as JSON [message, exchange, routing_key]."""
    try:
        return json.loads(value)[0]
    except Exception:  # noqa: BLE001 - not one of ours
        return None


def _run_id_of(message: Any) -> int | None:
    """The run id of a Celery message (raw JSON bytes or an already parsed dict), else None."""
    from nc_core.broker_client import message_task_args

    _, args = message_task_args(message) or (None, None)
    try:
        return int(args[0])
    except Exception:  # noqa: BLE001 - not one of ours
        return None


def run_forever(settings: Settings | None = None, interval: float = 5.0,
                stop: threading.Event | None = None, resend_after_s: float = RESEND_AFTER_S) -> None:
    """Reconcile every `interval` seconds until `stop` is set (the embedded stack's loop)."""
    settings = settings or get_settings()
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            summary = reconcile_once(settings, resend_after_s=resend_after_s)
            if any(summary.values()):
                log.info("reconcile: %s", summary)
        except Exception as exc:  # noqa: BLE001 - database or broker down: try again next tick
            log.warning("reconcile pass failed: %s", exc)
        stop.wait(interval)


def main() -> None:
    """`python -m worker.reconciler`: the production reconciler loop without Celery beat."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    run_forever(settings, max(2.0, float(settings.heartbeat_seconds)))


if __name__ == "__main__":
    main()
