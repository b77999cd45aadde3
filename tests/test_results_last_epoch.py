"""/sweeps/{id}/results at 'last': each key's own last epoch per run, on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import insert, select, update

from nc_core.db import sweeps_repo
from nc_core.db.models import Metric, Run
from nc_core.db.session import session_scope
from nc_core.metric_keys import TRAINING_KEYS

KEYS = sorted(("acc", "nc1", *TRAINING_KEYS))


def _value(key: str, split: str, epoch: int, seed: int) -> float:
    """A value that says where it came from: key, split, epoch and seed all change it."""
    return 1000 * seed + 10 * epoch + (0.5 if split == "test" else 0.0) + KEYS.index(key) / 100


@pytest.fixture
def stopped_between_evals(app_client, db_url):  # noqa: ANN001, ANN201
    """eval.every 2 over 6 epochs, two seeds: seed 0 succeeded (eval at 2, 4, 6), seed 1 cancelled after epoch 5
    (eval at 2, 4; training keys at 1..5 on train, as nc_core/train.py stores them)."""
    body = {"name": "stopped", "base": {"epochs": 6, "eval": {"every": 2}, "data": {"name": "gaussian"}},
            "seeds": [0, 1]}
    sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    with session_scope(db_url) as s:
        finished, stopped = s.scalars(select(Run.id).where(Run.sweep_id == sid).order_by(Run.seed)).all()
        s.execute(update(Run).where(Run.id == finished).values(status="succeeded", epoch=6))
        s.execute(update(Run).where(Run.id == stopped).values(status="cancelled", epoch=5))
        rows = []
        for rid, seed, last in ((finished, 0, 6), (stopped, 1, 5)):
            for epoch in range(1, last + 1):
                rows += [dict(run_id=rid, epoch=epoch, split="train", key=k, value=_value(k, "train", epoch, seed))
                         for k in TRAINING_KEYS]
                if epoch % 2 == 0:
                    rows += [dict(run_id=rid, epoch=epoch, split=sp, key=k, value=_value(k, sp, epoch, seed))
                             for sp in ("train", "test") for k in ("acc", "nc1")]
        s.execute(insert(Metric), rows)
    return sid, finished, stopped


def _by_seed(body: dict) -> dict[int, dict]:
    return {g["values"]["seed"]: g for g in body["groups"]}


def test_a_run_stopped_between_eval_epochs_keeps_its_last_evaluation(app_client, stopped_between_evals):
    sid, finished, stopped = stopped_between_evals
    body = app_client.get(f"/sweeps/{sid}/results", params={"split": "train", "group_by": "seed"}).json()
    assert body["keys"] == KEYS
    groups = _by_seed(body)
    cancelled = groups[1]
    for key in ("acc", "nc1"):  # the last evaluation (epoch 4), not nothing at epoch 5
        m = cancelled["metrics"][key]
        assert (m["count"], m["missing"], m["mean"]) == (1, 0, pytest.approx(_value(key, "train", 4, 1))), key
    for key in TRAINING_KEYS:  # the training keys of its last epoch
        assert cancelled["metrics"][key]["mean"] == pytest.approx(_value(key, "train", 5, 1)), key
    assert cancelled["measured_epochs"] == [4, 5] and cancelled["unfinished_runs"] == [stopped]
    done = groups[0]
    assert done["measured_epochs"] == [6] and done["unfinished_runs"] == []
    assert done["metrics"]["nc1"]["mean"] == pytest.approx(_value("nc1", "train", 6, 0))


def test_keys_asked_for_and_an_explicit_epoch(app_client, stopped_between_evals):
    sid, _, stopped = stopped_between_evals
    url = f"/sweeps/{sid}/results"
    only = _by_seed(app_client.get(url, params={"split": "train", "group_by": "seed", "keys": "acc,nc1"}).json())
    assert only[1]["metrics"]["acc"]["mean"] == pytest.approx(_value("acc", "train", 4, 1))
    assert only[1]["measured_epochs"] == [4]  # only the keys asked for say where the values come from
    test = _by_seed(app_client.get(url, params={"group_by": "seed"}).json())  # default split: test
    assert test[1]["metrics"]["nc1"]["mean"] == pytest.approx(_value("nc1", "test", 4, 1))
    assert set(test[1]["metrics"]) == {"acc", "nc1"}
    at_5 = _by_seed(app_client.get(url, params={"split": "train", "group_by": "seed", "epoch": 5,
                                                "keys": "acc,lr"}).json())
    assert at_5[1]["metrics"]["acc"]["count"] == 0 and at_5[1]["metrics"]["lr"]["count"] == 1  # no eval at 5
    assert at_5[1]["measured_epochs"] == [5] and at_5[0]["measured_epochs"] == [5]


def test_latest_values_of_given_runs(db_url, stopped_between_evals):
    """What a caller holding runs (plots' final values, the dashboard's cells) asks for, by run id."""
    _, finished, stopped = stopped_between_evals
    with session_scope(db_url) as s:
        rows = sweeps_repo.latest_values(s, "train", ["nc1", "running_loss"], run_ids=[stopped, finished])
        expected = [(rid, key, pytest.approx(_value(key, "train", epoch, seed)), epoch)
                    for rid, seed, key, epoch in ((stopped, 1, "nc1", 4), (stopped, 1, "running_loss", 5),
                                                  (finished, 0, "nc1", 6), (finished, 0, "running_loss", 6))]
        assert sorted(rows) == sorted(expected, key=lambda row: row[:2])
        assert sweeps_repo.latest_values(s, "test", ["running_loss"], run_ids=[stopped]) == []
        assert sweeps_repo.latest_values(s, "test", ["acc"], run_ids=[]) == []
