"""Metric series and sweep results (grouped, aggregated over seeds) on SQLite and PostgreSQL."""
from __future__ import annotations

import statistics

import pytest
from sqlalchemy import insert, select

from nc_core.db.models import Metric, Run
from nc_core.db.session import session_scope


@pytest.fixture
def sweep(app_client, db_url):  # noqa: ANN001, ANN201
    """2 losses × 2 widths × 3 seeds; metrics: acc/nc1 on test at epochs 1..3 (one run stops at 2)."""
    body = {"name": "m", "base": {"epochs": 3, "data": {"name": "gaussian"}},
            "grid": {"loss.name": ["ce", "mse"], "model.width": [2, 4]}, "seeds": [0, 1, 2]}
    sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    with session_scope(db_url) as s:
        runs = s.execute(select(Run.id, Run.grid, Run.seed).where(Run.sweep_id == sid).order_by(Run.id)).all()
        rows, expected = [], {}
        for i, (rid, grid, seed) in enumerate(runs):
            last = 2 if i == 0 else 3
            for epoch in range(1, last + 1):
                acc = 0.1 * epoch + 0.01 * seed + (0.2 if grid["loss.name"] == "mse" else 0) + 0.001 * grid["model.width"]
                nc1 = None if (i == 1 and epoch == last) else 1.0 / (epoch + seed)
                version = 2 if epoch == 3 else 1  # metric definitions of two releases
                rows += [dict(run_id=rid, epoch=epoch, split="test", key="acc", value=acc, metric_version=version),
                         dict(run_id=rid, epoch=epoch, split="test", key="nc1", value=nc1, metric_version=version),
                         dict(run_id=rid, epoch=epoch, split="train", key="acc", value=1.0, metric_version=version)]
                expected[(rid, epoch)] = (acc, nc1)
        s.execute(insert(Metric), rows)
    return sid, [r.id for r in runs], runs, expected


def test_run_metric_series(app_client, sweep):
    _, ids, _, expected = sweep
    out = app_client.get(f"/runs/{ids[2]}/metrics").json()
    assert [(s["split"], s["key"]) for s in out["series"]] == [("test", "acc"), ("test", "nc1"), ("train", "acc")]
    acc = out["series"][0]
    assert acc["epochs"] == [1, 2, 3] and acc["values"] == pytest.approx([expected[(ids[2], e)][0] for e in (1, 2, 3)])
    assert acc["versions"] == [1, 1, 2]  # each value says which metric definitions made it
    only = app_client.get(f"/runs/{ids[1]}/metrics", params={"split": "test", "key": "nc1"}).json()["series"]
    assert len(only) == 1 and only[0]["values"][-1] is None  # NaN stored as NULL comes back as null
    assert app_client.get(f"/runs/{ids[2]}/metrics", params={"key": "cdnv"}).json()["series"] == []  # not stored
    for params, field, says in (({"key": "nope"}, "key", "unknown metric key 'nope'; expected some of nc1,"),
                                ({"split": "foo"}, "split", "'train' or 'test'")):
        res = app_client.get(f"/runs/{ids[2]}/metrics", params=params)
        detail = res.json()["detail"][0]
        assert res.status_code == 422 and detail["field"] == field and says in detail["msg"], res.text


def test_run_metric_series_takes_keys_like_results(app_client, sweep):
    _, ids, _, _ = sweep
    url = f"/runs/{ids[2]}/metrics"
    series = lambda **p: [(s["split"], s["key"]) for s in app_client.get(url, params=p).json()["series"]]  # noqa: E731
    assert series(keys="nc1") == [("test", "nc1")]
    assert series(keys="acc, nc1", split="test") == [("test", "acc"), ("test", "nc1")]
    assert series(keys="acc") == series(key="acc") == [("test", "acc"), ("train", "acc")]
    assert len(series()) == 3  # no keys: every key; a blank keys= is a 422 as a blank key= is
    for params, field, says in (({"keys": "nc1,nope"}, "keys", "unknown metric key 'nope'"),
                                ({"keys": ""}, "keys", "expected one or more comma-separated metric keys"),
                                ({"keys": "nc1", "key": "acc"}, "keys", "not both")):
        res = app_client.get(url, params=params)
        assert res.status_code == 422 and res.json()["detail"][0]["field"] == field, res.text
        assert says in res.json()["detail"][0]["msg"]


@pytest.mark.parametrize("epoch", ["0", "00", "-1", "²", "4294967296", "9" * 5000])
def test_results_epoch_starts_at_1(app_client, sweep, epoch):
    resp = app_client.get(f"/sweeps/{sweep[0]}/results", params={"epoch": epoch})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"] == [{"loc": ["query", "epoch"], "field": "epoch", "type": "value_error",
                                      "msg": f"expected 'last' or an epoch >= 1, got {epoch!r}"}]


def test_results_aggregate_over_seeds_at_last_epoch(app_client, sweep):
    sid, ids, runs, expected = sweep
    out = app_client.get(f"/sweeps/{sid}/results", params={"keys": "acc,nc1", "split": "test"}).json()
    assert out["group_by"] == ["loss.name", "model.width"] and out["epoch"] == "last"
    assert [tuple(g["values"].values()) for g in out["groups"]] == [("ce", 2), ("ce", 4), ("mse", 2), ("mse", 4)]
    for g in out["groups"]:
        members = [r for r in runs if (r.grid["loss.name"], r.grid["model.width"]) == tuple(g["values"].values())]
        assert g["run_ids"] == [r.id for r in members] and g["runs"] == 3
        last = {r.id: 2 if r.id == ids[0] else 3 for r in members}
        accs = [expected[(r.id, last[r.id])][0] for r in members]
        a = g["metrics"]["acc"]
        assert a["mean"] == pytest.approx(statistics.mean(accs)) and a["std"] == pytest.approx(statistics.stdev(accs))
        assert (a["min"], a["max"], a["count"]) == (pytest.approx(min(accs)), pytest.approx(max(accs)), 3)
        ncs = [expected[(r.id, last[r.id])][1] for r in members]
        n = g["metrics"]["nc1"]
        assert n["count"] == sum(v is not None for v in ncs) and n["missing"] == sum(v is None for v in ncs)
        assert n["mean"] == pytest.approx(statistics.mean(v for v in ncs if v is not None))
        assert g["measured_epochs"] == sorted(set(last.values()))  # run ids[0] stopped at epoch 2
        assert g["unfinished_runs"] == g["run_ids"]  # none of these runs has succeeded (they are queued)


def test_equal_values_have_a_std_of_exactly_zero():
    from service.routers.metrics import aggregate

    assert aggregate([0.05, 0.05, 0.05])["std"] == 0.0  # a naive two-pass sum gave 8.5e-18
    assert aggregate([0.05, 0.05, 0.05])["mean"] == 0.05


def test_results_custom_grouping_epoch_and_single_run_std(app_client, sweep):
    sid, ids, runs, expected = sweep
    out = app_client.get(f"/sweeps/{sid}/results", params={"group_by": "loss.name", "keys": "acc", "epoch": 1}).json()
    assert out["epoch"] == 1 and [g["values"] for g in out["groups"]] == [{"loss.name": "ce"}, {"loss.name": "mse"}]
    ce = [expected[(r.id, 1)][0] for r in runs if r.grid["loss.name"] == "ce"]
    assert out["groups"][0]["metrics"]["acc"]["mean"] == pytest.approx(statistics.mean(ce))
    per_run = app_client.get(f"/sweeps/{sid}/results", params={"group_by": "loss.name,model.width,seed",
                                                                 "keys": "acc"}).json()
    assert len(per_run["groups"]) == 12
    assert all(g["metrics"]["acc"]["std"] is None and g["metrics"]["acc"]["count"] == 1 for g in per_run["groups"])
    train = app_client.get(f"/sweeps/{sid}/results", params={"split": "train"}).json()
    assert train["keys"] == ["acc"] and train["groups"][0]["metrics"]["acc"]["mean"] == 1.0


@pytest.mark.parametrize("params, field", [({"group_by": "model.widht"}, "group_by"), ({"epoch": "first"}, "epoch"),
                                           ({"split": "val"}, "split"), ({"keys": "acc,nc_1"}, "keys"),
                                           ({"epoch": "99"}, "epoch")])
def test_results_bad_params(app_client, sweep, params, field):
    resp = app_client.get(f"/sweeps/{sweep[0]}/results", params=params)
    assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == field
    assert app_client.get("/sweeps/999/results").status_code == 404


def test_results_errors_say_what_is_valid(app_client, sweep):
    detail = app_client.get(f"/sweeps/{sweep[0]}/results", params={"keys": "acc, nc_1"}).json()["detail"][0]
    assert detail["msg"].startswith("unknown metric key 'nc_1'; expected some of nc1, ")
    detail = app_client.get(f"/sweeps/{sweep[0]}/results", params={"epoch": "99"}).json()["detail"][0]
    assert detail["msg"] == f"99 is past the last epoch of every run of sweep {sweep[0]} (the longest has 3); " \
                            "expected 'last' or an epoch in 1..3"
    assert app_client.get(f"/sweeps/{sweep[0]}/results", params={"epoch": "3"}).status_code == 200


def test_an_undefined_metric_keeps_its_reason(app_client, db_url, sweep):
    # the metric suite says why a value is NaN; the worker stores it as the row's note, the API and CLI show it
    from rich.console import Console

    from nc_core.db import results_repo, runs_repo
    from nc_core.metrics import MetricDict
    from service.cli_views import run_detail

    _, ids, _, _ = sweep
    rid = ids[3]
    why = "class(es) [5, 6] have no sample in this split"
    with session_scope(db_url) as s:
        assert runs_repo.claim(s, rid, "w/1/abc", 60.0) is not None
    with session_scope(db_url) as s:
        metrics = MetricDict(nc1=float("nan"), nc3=float("nan"), acc=40.0)
        metrics.reasons.update(nc1=why, nc3=why)
        assert results_repo.upsert_metrics(s, rid, "w/1/abc", 4, "train", metrics, 1)
        later = MetricDict(nc1=0.5, nc3=float("nan"), acc=50.0)
        later.reasons.update(nc3="W is zero, cannot be normalised")
        assert results_repo.upsert_metrics(s, rid, "w/1/abc", 5, "train", later, 1)
    series = {(x["split"], x["key"]): x for x in app_client.get(f"/runs/{rid}/metrics").json()["series"]}
    assert series[("train", "nc1")]["notes"] == {"4": why} and series[("train", "nc1")]["values"][-2:] == [None, 0.5]
    assert series[("train", "nc3")]["notes"] == {"4": why, "5": "W is zero, cannot be normalised"}
    assert series[("train", "acc")]["notes"] == {} and series[("test", "acc")]["notes"] == {}
    rows = [{"epoch": e, "split": x["split"], "key": x["key"], "value": v, "note": x["notes"].get(str(e))}
            for x in series.values() for e, v in zip(x["epochs"], x["values"])]
    console = Console(width=160, record=True)
    console.print(run_detail(app_client.get(f"/runs/{rid}").json(), rows))
    text = " ".join(console.export_text().split())
    assert "nan nc3 [train]: W is zero, cannot be normalised" in text and why not in text  # nc1 is defined at 5


def test_the_trainers_training_keys_are_accepted_and_listed(app_client, db_url, sweep):
    # a train run stores lr, running_acc and running_loss on its train split: every route that takes keys serves them
    sid, ids, runs, _ = sweep
    training = {"lr": lambda seed: 0.05, "running_acc": lambda seed: 90.0 + seed, "running_loss": lambda seed: 0.1}
    with session_scope(db_url) as s:
        s.execute(insert(Metric), [dict(run_id=rid, epoch=3, split="train", key=k, value=f(seed))
                                   for rid, _, seed in runs for k, f in training.items()])
    url = f"/runs/{ids[2]}/metrics"
    for params in ({"keys": "lr"}, {"key": "lr"}, {"keys": "running_acc, running_loss"}):
        res = app_client.get(url, params=params)
        assert res.status_code == 200, res.text
        assert [s["key"] for s in res.json()["series"]] == sorted(params.get("keys", params.get("key")).split(", "))
    res = app_client.get(f"/sweeps/{sid}/results", params={"keys": "running_acc,lr", "split": "train"})
    assert res.status_code == 200, res.text
    acc = res.json()["groups"][0]["metrics"]["running_acc"]
    assert (acc["mean"], acc["std"], acc["count"]) == (pytest.approx(91.0), pytest.approx(1.0), 3)
    assert app_client.get(f"/sweeps/{sid}/plots/dynamics.png", params={"keys": "lr,running_loss"}).status_code == 200
    msg = app_client.get(url, params={"keys": "nc1,learning_rate"}).json()["detail"][0]["msg"]
    assert msg.startswith("unknown metric key 'learning_rate'; expected some of nc1, ")
    assert msg.endswith(", acc, loss, running_loss, running_acc, lr")


def test_every_key_the_trainers_store_is_a_stored_key(tmp_path, one_torch_thread):  # noqa: ANN001
    # what nc_core.train and nc_core.ufm report is what a run stores: check_metric_keys must accept all of it
    from nc_core.metric_keys import METRIC_KEYS, STORED_KEYS, TRAINING_KEYS, check_metric_keys
    from nc_core.spec import RunSpec
    from nc_core.train import run_spec
    from nc_core.training.report import NullReporter

    class Keys(NullReporter):
        def __init__(self) -> None:
            self.by_split: dict[str, set[str]] = {}

        def on_metrics(self, epoch: int, split: str, metrics: dict[str, float]) -> None:
            self.by_split.setdefault(split, set()).update(metrics)

    train, ufm = Keys(), Keys()
    run_spec(RunSpec.model_validate({"epochs": 1, "batch_size": 256, "device": "cpu", "data": {"name": "digits"},
                                     "model": {"name": "mlp", "width": 16, "depth": 1}}), train, workdir=tmp_path / "t")
    run_spec(RunSpec.model_validate({"kind": "ufm", "device": "cpu", "ufm": {"class_counts": [5, 5, 5], "dim": 4,
                                                                             "iterations": 20, "eval_every": 10}}),
             ufm, workdir=tmp_path / "u")
    stored = set().union(*train.by_split.values(), *ufm.by_split.values())
    check_metric_keys("keys", sorted(stored))
    assert stored <= set(STORED_KEYS) and train.by_split["train"] - set(METRIC_KEYS) == set(TRAINING_KEYS)
    assert train.by_split["test"] <= set(METRIC_KEYS) and ufm.by_split["train"] <= set(METRIC_KEYS)


def test_distributions_at_an_epoch_without_them_list_the_epochs_that_have_them(app_client, db_url, sweep):
    from nc_core.db.models import MetricDistribution

    _, ids, _, _ = sweep
    rid = ids[0]
    with session_scope(db_url) as s:
        rows = [dict(run_id=rid, epoch=e, split=split, key="cos_margin", values=[0.1, 0.5], n=2)
                for e, split in ((1, "test"), (3, "test"), (2, "train"))]
        s.execute(insert(MetricDistribution), rows)
    url = f"/runs/{rid}/distributions"
    at3 = app_client.get(url, params={"epoch": 3}).json()["items"]
    assert [(d["epoch"], d["split"], d["values"]) for d in at3] == [(3, "test", [0.1, 0.5])]
    for params, says in (({"epoch": 5}, f"run {rid} has no distributions at epoch 5; expected an epoch that has them: "
                                        "1, 2, 3"),
                         ({"epoch": 2, "split": "test", "key": "cos_margin"},
                          f"run {rid} has no split='test' key='cos_margin' distributions at epoch 2; expected an epoch "
                          "that has them: 1, 3")):
        resp = app_client.get(url, params=params)
        assert resp.status_code == 422 and resp.json()["detail"] == [{"loc": ["query", "epoch"], "field": "epoch",
                                                                      "msg": says, "type": "value_error"}], resp.text
    none = app_client.get(f"/runs/{ids[1]}/distributions", params={"epoch": 1})
    assert none.status_code == 422 and "it has none stored at any epoch" in none.json()["detail"][0]["msg"]
    assert app_client.get(f"/runs/{ids[1]}/distributions").json() == {"run_id": ids[1], "items": []}
    last = app_client.get(url).json()["items"]
    assert [(d["split"], d["epoch"]) for d in last] == [("test", 3), ("train", 2)]
