"""Take cancelled runs' waiting job messages out of the broker's Redis queues (best effort: admission drops the rest)."""
from __future__ import annotations

import logging
import uuid
from typing import Any, Iterable

from nc_core.broker_client import message_task_args, queue_keys

log = logging.getLogger(__name__)

JOB_QUEUE = "celery"  # worker.celery_app.TRAIN_QUEUE: send_task and the fast path put every job message there
#: the queue's list and kombu's priority sub-queues (``<queue>\x06\x16<priority>``; priority 0 is the list itself)
QUEUE_KEYS = queue_keys(JOB_QUEUE)
JOB_TASKS = frozenset({"ncsweep.train", "ncsweep.ufm", "ncsweep.validate"})  # service.enqueue.TASK_BY_KIND
SCAN_CHUNK = 1000  # messages per LRANGE: a long queue is read in pieces, not in one reply
REMOVE_BATCH = 5000  # messages per call of the removal script (each call walks the list once: ~2 µs an element)

#: {run id: {(queue key, exact message)}}: job messages found waiting in the queue lists
Waiting = dict[int, set[tuple[str, bytes]]]

# Atomic in Redis: no push or pop interleaves. Every element equal to one of the given messages becomes a
# tombstone (LSET), then the tombstones go (one LREM): one walk of the list, whatever the number of messages.
_REMOVE = """
local doomed = {}
for i = 2, #ARGV do doomed[ARGV[i]] = true end
local length, marked = redis.call('LLEN', KEYS[1]), 0
for start = 0, length - 1, 1000 do
  for j, item in ipairs(redis.call('LRANGE', KEYS[1], start, start + 999)) do
    if doomed[item] then
      redis.call('LSET', KEYS[1], start + j - 1, ARGV[1])
      marked = marked + 1
    end
  end
end
if marked > 0 then redis.call('LREM', KEYS[1], 0, ARGV[1]) end
return marked
"""


def job_run_id(raw: bytes) -> int | None:
    """The run id of an ncsweep job message (a train/ufm/validate task whose only argument is the run id, as
    both enqueue paths send it), else None: another task's message, or not a Celery message at all."""
    task, args = message_task_args(raw) or (None, None)
    if task in JOB_TASKS and isinstance(args, list) and len(args) == 1 and type(args[0]) is int:
        return args[0]
    return None


def find_waiting(client: Any, run_ids: Iterable[int]) -> Waiting:
    """The messages of ``run_ids`` waiting in the queue lists now. Read from the head in chunks while producers
    push at the head and workers pop at the tail: a push shifts the unread part towards the tail (a message may
    be read twice: kept once), a pop only shortens it, so no message present throughout is missed, unless another
    cancel's removal shifts unread ones into the part already read (those are left to admission)."""
    wanted, found = set(run_ids), {}
    if not wanted:
        return found
    for key in QUEUE_KEYS:
        start = 0
        while chunk := client.lrange(key, start, start + SCAN_CHUNK - 1):
            for raw in chunk:
                run_id = job_run_id(raw)
                if run_id in wanted:
                    found.setdefault(run_id, set()).add((key, raw))
            start += len(chunk)
    return found


def remove_waiting(client: Any, waiting: Waiting, run_ids: Iterable[int]) -> int:
    """Remove from their lists exactly the messages in ``waiting`` of the runs in ``run_ids``, where they still
    are (a worker may have taken one meanwhile: its admission drops it); returns how many went. A message sent
    after ``waiting`` was read (a retry's) is another string (a fresh task id): it stays."""
    by_key: dict[str, list[bytes]] = {}
    for run_id in set(run_ids) & set(waiting):
        for key, raw in waiting[run_id]:
            by_key.setdefault(key, []).append(raw)
    if not by_key:
        return 0
    script, removed = client.register_script(_REMOVE), 0
    tombstone = f"ncsweep-withdrawn:{uuid.uuid4()}"  # no message equals it
    for key, raws in by_key.items():
        for i in range(0, len(raws), REMOVE_BATCH):
            removed += int(script(keys=[key], args=[tombstone, *raws[i:i + REMOVE_BATCH]]))
    return removed


def safe_find_waiting(enqueuer: Any, run_ids: Iterable[int]) -> Waiting:
    """``enqueuer.find_waiting(run_ids)`` (enqueuers of other brokers, and test doubles, have none: {}); a broker
    error is logged, not raised: the cancel goes on, and workers' admission drops the messages it leaves."""
    find, run_ids = getattr(enqueuer, "find_waiting", None), list(run_ids)
    if find is None or not run_ids:
        return {}
    try:
        return find(run_ids)
    except Exception as exc:  # noqa: BLE001 - any broker error; the database stays the truth
        log.warning("cancel: could not read the broker's queue (%s); the messages of %d runs stay queued and "
                    "workers drop them unrun", exc, len(run_ids))
        return {}


def safe_withdraw(enqueuer: Any, waiting: Waiting, cancelled: Iterable[int]) -> int:
    """After the cancel's commit: ``enqueuer.withdraw(waiting, cancelled)``; a broker error is logged, not raised
    (the runs are cancelled all the same). Returns how many messages went."""
    cancelled = list(cancelled)
    if not waiting or not cancelled:
        return 0
    try:
        return enqueuer.withdraw(waiting, cancelled)
    except Exception as exc:  # noqa: BLE001 - any broker error; the database stays the truth
        log.warning("cancel: could not remove the messages of %d cancelled runs from the broker's queue (%s); "
                    "workers drop them unrun", len(cancelled), exc)
        return 0
