"""`ncsweep results` and GET /sweeps/{id}/results, as a user audit found them wanting: each cell at its own
precision, a title that says what was pooled (and that the std is the sample std), the runs behind a cell, true
words when nothing was measured, spec-field filters, and --json."""
from __future__ import annotations

import json
import os

from rich.console import Console
from sqlalchemy import delete, update

from nc_core.db.models import Metric
from nc_core.db.session import session_scope
from service.cli_results import results_table, shown_results
from test_cli import SQLITE, live, ncsweep  # noqa: F401 - fixture
from test_plots import seed_sweep


def flat(text: str) -> str:
    return " ".join(text.split())


def rendered(body: dict, width: int = 160) -> str:
    console = Console(width=width, record=True)
    console.print(results_table(body, 2, "test"))
    return console.export_text()


def agg(mean: float | None, std: float | None, count: int, missing: int = 0) -> dict:
    return {"mean": mean, "std": std, "min": None, "max": None, "count": count, "missing": missing}


def group(loss: str, runs: int, **metrics: dict) -> dict:
    return {"values": {"loss.name": loss}, "runs": runs, "measured_epochs": [4], "unfinished_runs": [],
            "statuses": {"succeeded": runs}, "metrics": metrics}


# -- 1. precision per cell ------------------------------------------------------------------------------------------

def test_a_small_mean_keeps_its_digits_beside_a_large_one_in_its_column() -> None:
    body = {"group_by": ["loss.name"], "keys": ["nc1"], "unit": "epoch",
            "groups": [group("ce", 3, nc1=agg(1523.4, 40.2, 3)), group("mse", 3, nc1=agg(0.1009, 0.0057, 3))]}
    text = rendered(body)
    assert "0.1009±0.0057" in text and "1523±40" in text, text
    assert "0.1±0.0" not in text


def test_cell_text_shows_the_std_to_2_significant_digits() -> None:
    from service.cli_results_text import cell_text

    cases = {(0.1009, 0.0057): "0.1009±0.0057", (1523.4, 40.2): "1523±40", (98.24, 0.5657): "98.24±0.57",
             (0.123456, 0.0123): "0.123±0.012", (1.371, 0.269): "1.37±0.27", (0.002, 0.05): "0.002±0.050",
             (15234.5, 31.2): "1.5234e4±3.1e1", (3e-9, 1e-9): "3.0e-9±1.0e-9", (0.05, 0.0): "0.05000±0",
             (97.8, None): "97.80", (2.5e-5, None): "2.500e-5", (0.5, 1e-12): "0.500000±1.0e-12"}
    assert {k: cell_text({"mean": k[0], "std": k[1]}) for k in cases} == cases
    assert cell_text(None) == "" and cell_text({"mean": None, "count": 0, "missing": 0}) == ""
    assert cell_text({"mean": None, "count": 0, "missing": 2}) == "NaN"  # stored, but NaN in every run


# -- 2. what the ± is over ------------------------------------------------------------------------------------------

@SQLITE
def test_the_title_says_what_was_pooled_and_the_sample_std(live, db_url, capsys) -> None:  # noqa: ANN001, F811
    sid, _ = seed_sweep(db_url)
    rc, out, _ = ncsweep(capsys, "results", sid, "--keys", "acc")
    assert rc == 0 and out.splitlines()[0] == (f"sweep {sid} results [test, last epoch] (mean ± std over seeds; "
                                               "sample std, ddof 1)"), out
    rc, out, _ = ncsweep(capsys, "results", sid, "--group-by", "loss.name", "--keys", "acc")
    assert rc == 0 and out.splitlines()[0] == (f"sweep {sid} results [test, last epoch] (mean ± std; width, seeds "
                                               "pooled; sample std, ddof 1)"), out
    rc, out, _ = ncsweep(capsys, "results", sid, "--group-by", "loss.name,model.width,seed", "--keys", "acc")
    assert rc == 0 and "(mean ± std over each group's runs; sample std, ddof 1)" in out.splitlines()[0], out


@SQLITE
def test_the_api_docs_say_the_std_is_ddof_1(app_client) -> None:  # noqa: ANN001
    doc = app_client.get("/openapi.json").json()["paths"]["/sweeps/{sweep_id}/results"]["get"]["description"]
    assert "ddof = 1" in flat(doc)


# -- 3. the runs behind a cell --------------------------------------------------------------------------------------

def test_a_cell_over_fewer_runs_than_its_row_says_so() -> None:
    body = {"group_by": ["loss.name"], "keys": ["acc", "nc1"], "unit": "epoch",
            "groups": [group("ce", 3, acc=agg(98.0, 0.31, 3), nc1=agg(0.1009, 0.0057, 2, missing=1)),
                       group("mse", 3, acc=agg(95.0, 0.5, 3), nc1=agg(0.2, 0.01, 3))]}
    text = rendered(body)
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.startswith("│")}
    assert rows["ce"].endswith(" (n=2) │") and "(n=" not in rows["mse"], text  # acc: all 3 runs, no mark
    assert "(n=k): the mean of k runs only; the row's other runs have NaN or no value of that key" in flat(text)
    assert "(n=k)" not in rendered({**body, "groups": body["groups"][1:]})  # no such cell: no footnote


@SQLITE
def test_a_nan_run_shows_in_its_cell_count(live, db_url, capsys) -> None:  # noqa: ANN001, F811
    sid, runs = seed_sweep(db_url)
    with session_scope(db_url) as s:  # run 0's last nc1 on test is NaN: its group's nc1 is the other seed's alone
        s.execute(update(Metric).where(Metric.run_id == runs[0], Metric.key == "nc1", Metric.epoch == 4,
                                       Metric.split == "test").values(value=None))
    rc, out, _ = ncsweep(capsys, "results", sid, "--keys", "acc,nc1")
    row = next(line for line in out.splitlines() if line.startswith("│ ce ") and " 32 " in line)
    assert rc == 0 and row.count("(n=1)") == 1 and "│    2 │" in row, out
    assert "(n=k): the mean of k runs only; the row's other runs have NaN or no value of that key" in flat(out)


# -- 4. true words when nothing was measured ------------------------------------------------------------------------

@SQLITE
def test_an_epoch_the_finished_runs_never_measured(live, db_url, capsys) -> None:  # noqa: ANN001, F811
    sid, runs = seed_sweep(db_url)  # 8 succeeded runs; no metric rows at epoch 3 (not an eval epoch)
    with session_scope(db_url) as s:
        s.execute(delete(Metric).where(Metric.run_id.in_(runs), Metric.epoch == 3))
    rc, out, err = ncsweep(capsys, "results", sid, "--epoch", "3")
    assert rc == 0 and "no finished results yet" not in out and "no test metrics at epoch 3" in out, out
    assert f"no run of sweep {sid} has test metrics at epoch 3" in flat(err)
    assert "none of its 8 run(s) is queued or running (8 succeeded)" in flat(err)
    assert "its runs have them at epochs 1, 2, 4" in flat(err), err


@SQLITE
def test_groups_whose_runs_all_failed_are_not_said_to_come_yet(live, db_url, capsys) -> None:  # noqa: ANN001, F811
    sid, runs = seed_sweep(db_url, statuses={i: "failed" for i in range(4, 8)})  # every mse run failed
    with session_scope(db_url) as s:
        s.execute(delete(Metric).where(Metric.run_id.in_(runs[4:])))
    rc, out, err = ncsweep(capsys, "results", sid)
    assert rc == 0 and "mse" not in out and "yet" not in err, err
    assert ("2 of 4 groups have no run with test metrics (not shown; --all-groups lists them): their runs ended "
            "without them (4 failed)") in flat(err)


@SQLITE
def test_a_key_no_run_measured_is_not_blamed_on_the_eval_splits(live, db_url, capsys) -> None:  # noqa: ANN001, F811
    # the runs have test metrics, only not this key: the hint named eval.splits, as if no test split was measured
    sid, _ = seed_sweep(db_url)
    rc, out, err = ncsweep(capsys, "results", sid, "--keys", "nc2_w_gof")
    assert rc == 0 and "eval.splits" not in err and "no test metrics" not in flat(err), err
    assert (f"no run of sweep {sid} has a test value of nc2_w_gof, and none is queued or running: of its 8 run(s), "
            f"8 succeeded without one (`ncsweep results {sid} --keys all` lists the keys they have)") in flat(err), err
    rc, out, err = ncsweep(capsys, "results", sid, "--keys", "nc2_w_gof,nc3_wh_gof")
    assert "has a test value of nc2_w_gof or nc3_wh_gof" in flat(err), err


def test_the_note_tells_groups_still_to_come_from_those_that_ended() -> None:
    measured = group("ce", 2, acc=agg(90.0, None, 1))
    queued = {**group("mse", 2, acc=agg(None, None, 0)), "measured_epochs": [], "statuses": {"queued": 2}}
    failed = {**group("l1", 2, acc=agg(None, None, 0)), "measured_epochs": [],
              "statuses": {"failed": 1, "cancelled": 1}}
    body = {"group_by": ["loss.name"], "keys": ["acc"], "unit": "epoch", "groups": [measured, queued, failed]}
    _, notes = shown_results(body, "test", "last")
    assert notes == ["2 of 3 groups have no run with test metrics (not shown; --all-groups lists them): 1 has runs "
                     "queued or running; 1 has only runs that ended without them (1 failed, 1 cancelled)"]
    _, notes = shown_results({**body, "groups": [measured, queued]}, "test", "last")
    assert notes == ["1 of 2 groups have no run with test metrics yet (not shown; --all-groups lists them)"]


# -- 5. spec-field filters ------------------------------------------------------------------------------------------

def test_results_honour_spec_field_filters_as_runs_do(app_client, db_url) -> None:  # noqa: ANN001
    sid, _ = seed_sweep(db_url)
    url = f"/sweeps/{sid}/results"
    body = app_client.get(url, params={"loss.name": "mse", "keys": "acc"}).json()
    assert [g["values"] for g in body["groups"]] == [{"loss.name": "mse", "model.width": 32},
                                                     {"loss.name": "mse", "model.width": 64}]
    assert body["filters"] == {"loss.name": ["mse"]}
    listed = app_client.get("/runs", params={"sweep_id": sid, "loss.name": "mse"}).json()["items"]
    assert sorted(r for g in body["groups"] for r in g["run_ids"]) == sorted(r["id"] for r in listed)
    both = app_client.get(url, params=[("loss.name", "mse"), ("loss.name", "ce"), ("model.width", "64"),
                                       ("group_by", "loss.name")]).json()
    assert [(g["values"], g["runs"]) for g in both["groups"]] == [({"loss.name": "ce"}, 2), ({"loss.name": "mse"}, 2)]
    assert app_client.get(url, params={"model.width": "999"}).json()["groups"] == []
    for params, field, says in (({"loss.nam": "mse"}, "loss.nam", "unknown parameter: expected group_by, keys, "
                                 "split, epoch or a spec field filter such as loss.name=mse"),
                                ({"kind": "train"}, "kind", "unknown parameter"),
                                ({"model.width": "wide"}, "model.width", "expected a number"),
                                ({"loss.name": "msee"}, "loss.name", "expected one of")):
        res = app_client.get(url, params=params)
        assert res.status_code == 422 and res.json()["detail"][0]["field"] == field, res.text
        assert says in res.json()["detail"][0]["msg"], res.text


@SQLITE
def test_cli_results_filter_option(live, db_url, capsys) -> None:  # noqa: ANN001, F811
    sid, _ = seed_sweep(db_url)
    rc, out, _ = ncsweep(capsys, "results", sid, "--filter", "loss.name=mse", "--filter", "model.width=64")
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert rc == 0 and len(rows) == 1 and "mse" in rows[0] and " 64 " in rows[0], out
    assert out.splitlines()[0].endswith("(mean ± std over seeds; sample std, ddof 1; only loss.name=mse, "
                                        "model.width=64)"), out
    rc, out, _ = ncsweep(capsys, "results", sid, "--group-by", "loss.name", "--filter", "model.width=64")
    assert rc == 0 and "(mean ± std over seeds; sample std, ddof 1; only model.width=64)" in out.splitlines()[0]
    rc, out, _ = ncsweep(capsys, "results", sid, "--filter", "model.width=999")
    assert rc == 0 and "no run of the sweep matches the filters" in out, out
    rc, _, err = ncsweep(capsys, "results", sid, "--filter", "loss.nam=mse")
    assert rc == 1 and "loss.nam" in err and "Traceback" not in err, err
    rc, _, err = ncsweep(capsys, "results", sid, "--filter", "epoch=3")
    assert rc == 2 and "use --epoch" in flat(err), err


@SQLITE
def test_a_misspelt_field_gets_the_nearest_one_everywhere_a_field_is_named(app_client, db_url) -> None:  # noqa: ANN001
    # `submit` said "did you mean 'loss.name'?" for a misspelt axis; a filter, a group_by or a heatmap axis did not
    sid, _ = seed_sweep(db_url)
    for url, params, field in ((f"/sweeps/{sid}/results", {"model.widht": "64"}, "model.widht"),
                               ("/runs", {"sweep_id": sid, "model.widht": "64"}, "model.widht"),
                               (f"/sweeps/{sid}/results", {"group_by": "model.widht"}, "group_by"),
                               (f"/sweeps/{sid}/plots/heatmap.png", {"x": "model.widht", "y": "loss.name"}, "x")):
        res = app_client.get(url, params=params)
        item = res.json()["detail"][0]
        assert res.status_code == 422 and item["field"] == field, res.text
        assert "did you mean 'model.width'?" in item["msg"], (url, item)
    res = app_client.get(f"/sweeps/{sid}/plots/heatmap.png", params={"x": "optim.lrr", "y": "loss.name"})
    assert "expected an axis of sweep" in res.json()["detail"][0]["msg"] and "model.width" in res.text, res.text


# -- 6. --json ------------------------------------------------------------------------------------------------------

@SQLITE
def test_cli_results_json_prints_the_api_response(live, db_url, capsys) -> None:  # noqa: ANN001, F811
    from service.client import Client

    sid, _ = seed_sweep(db_url)
    rc, out, err = ncsweep(capsys, "results", sid, "--json", "--keys", "acc,nc1", "--filter", "loss.name=ce")
    assert rc == 0 and "┃" not in out and err == ""
    body = json.loads(out)
    client = Client(live, os.environ["NCSWEEP_TOKEN"])
    assert body == client.get(f"/sweeps/{sid}/results", keys="acc,nc1", **{"loss.name": "ce"})
    assert body["keys"] == ["acc", "nc1"] and {g["values"]["loss.name"] for g in body["groups"]} == {"ce"}
