"""Messages of runs no claim could take are dropped in the worker's main process (no job process forked)."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from tests.helpers_stack import ApiServer, CeleryWorker, RedisServer, make_settings, sqlite_db
from tests.test_faults import FINISHED, run_row, spec, submit, wait_status

pytestmark = pytest.mark.integration


def _message(args):
    return SimpleNamespace(decode=lambda: (args, {}, {}))


def test_run_id_of_reads_a_single_integer_argument():
    from worker.admission import run_id_of

    assert run_id_of(_message([7])) == 7
    for other in ([], [7, 8], ["7"], [True], [None]):
        assert run_id_of(_message(other)) is None
    assert run_id_of(SimpleNamespace(decode=lambda: (_ for _ in ()).throw(ValueError("bad body")))) is None


@pytest.fixture
def local(tmp_path):
    """Redis, SQLite and the API, and a worker not yet started (messages wait for it in the queue)."""
    redis = RedisServer(tmp_path / "redis").start()
    settings = make_settings(tmp_path, sqlite_db(tmp_path), redis.url())
    api = ApiServer(settings).start()
    worker = CeleryWorker(settings, "admit")
    yield {"api": api, "url": settings.resolved_database_url(), "workers": [worker]}
    worker.stop()
    api.stop()
    redis.stop()


def test_messages_of_cancelled_runs_cost_no_job_process(local):
    # a cancel whose removal of its messages from the queue missed them (Redis unreachable at the cancel, a
    # message in flight) leaves them to the workers; each used to fork a job process (~5 s of child
    # replacement) only to find its run cancelled, so a sweep submitted after it waited behind all of them
    from nc_core.db import actions_repo
    from nc_core.db.session import session_scope

    (worker,) = local["workers"]
    stale = submit(local, "cancelled", spec(50), seeds=list(range(6)))
    with session_scope(local["url"]) as s:  # the database's cancel alone: the messages stay in the queue
        assert actions_repo.cancel_sweep(s, run_row(local, stale[0]).sweep_id)[0]["cancelled"] == 6
    (rid,) = submit(local, "after", spec(2, eval_every=1, train_size=400))
    worker.start()  # meets the six stale messages first
    done = wait_status(local, rid, FINISHED, 120)
    assert done.status == "succeeded", done.error
    log = worker.tail(2000)
    dropped = {int(m) for m in re.findall(r"MainProcess\] run (\d+): not claimable \(taken or finished\); "
                                          r"message dropped before forking", log)}
    assert dropped == set(stale), log
    assert not re.search(r"ForkPoolWorker[^\]]*\] run \d+: not claimable", log), log
    assert all(run_row(local, r).status == "cancelled" for r in stale)


def test_a_queued_run_whose_cancel_was_requested_is_cancelled_by_the_main_process(local):
    from nc_core.db.models import Run
    from nc_core.db.session import session_scope

    (worker,) = local["workers"]
    (rid,) = submit(local, "flagged", spec(50))
    with session_scope(local["url"]) as s:  # the state a cancel racing a claim can leave behind
        s.get(Run, rid).cancel_requested = True
    worker.start()
    done = wait_status(local, rid, FINISHED, 60)
    assert (done.status, done.attempt) == ("cancelled", 0)
    assert re.search(rf"MainProcess\] run {rid}: not claimable \(cancelled\); message dropped", worker.tail(400))
