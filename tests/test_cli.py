"""The `ncsweep` CLI against a live API (uvicorn in a thread, SQLite, recording enqueuer)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from helpers_stack import free_port
from nc_core.db import workers_repo
from nc_core.db.models import Run
from nc_core.db.session import session_scope
from service import cli
from test_api_runs import add_checkpoints
from test_events import serve
from test_plots import PNG_SIGNATURE, seed_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP_YAML = """
name: cli-test
base: {epochs: 2, data: {name: digits}}
grid:
  loss.name: [ce, mse]
  model.width: [16, 32]
seeds: [0, 1]
"""


@pytest.fixture
def live(app, db_url: str, write_token: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:  # noqa: ANN001
    """The API served on a free port; the CLI is pointed at it with the write token (SQLite only: fast)."""
    with serve(app) as url:
        monkeypatch.setenv("NCSWEEP_API_URL", url)
        monkeypatch.setenv("NCSWEEP_TOKEN", write_token)
        monkeypatch.setenv("NCSWEEP_DATABASE_URL", db_url)
        monkeypatch.setattr(cli.out, "width", 160)
        monkeypatch.setattr(cli.err, "width", 160)
        yield url


def ncsweep(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@SQLITE
def test_submit_runs_and_filters(live: str, capsys, tmp_path: Path) -> None:  # noqa: ANN001
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP_YAML)
    rc, out, _ = ncsweep(capsys, "submit", spec)
    assert rc == 0 and out.startswith("sweep ") and ": 8 runs" in out
    sid = int(out.split()[1].rstrip(":"))
    rc, out, _ = ncsweep(capsys, "runs", "--sweep", sid)
    assert rc == 0 and "8 runs" in out and out.count("queued") == 8
    rc, out, _ = ncsweep(capsys, "runs", "--sweep", sid, "--filter", "loss.name=mse", "--status", "queued")
    assert rc == 0 and "4 runs" in out and "loss=ce" not in out and "loss=mse" in out
    rc, out, _ = ncsweep(capsys, "runs", "--sweep", sid, "--filter", "loss.name=mse", "--filter", "loss.name=ce")
    assert rc == 0 and "8 runs" in out  # one axis repeated: any of its values
    rc, out, err = ncsweep(capsys, "runs", "--filter", "no.such=1")
    assert rc == 1 and "no.such" in err and "Traceback" not in err + out


@SQLITE
def test_submit_invalid_spec_names_the_field(live: str, capsys, tmp_path: Path) -> None:  # noqa: ANN001
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\ngrid: {loss.nam: [ce]}\n")
    rc, out, err = ncsweep(capsys, "submit", spec)
    assert rc == 1 and "HTTP 422" in err and "loss.nam" in err and "Traceback" not in err
    spec.write_text("name: bad\nbase: {model: {name: resnet18, width: 64}}\n")
    rc, out, err = ncsweep(capsys, "submit", spec)
    assert rc == 1 and "model.width: for resnet18" in err and "Value error" not in err, err
    spec.write_bytes(b"name: \xff\xfe\n")
    rc, out, err = ncsweep(capsys, "submit", spec)
    assert rc == 2 and "not UTF-8 text" in err and "bad.yaml" in err and "Traceback" not in err
    spec.write_text("name: one\nname: two\n")
    rc, out, err = ncsweep(capsys, "submit", spec)
    assert rc == 2 and "duplicate key 'name'" in err
    spec.write_text("name: inf\nbase: {optim: {lr: .inf}}\n")
    rc, out, err = ncsweep(capsys, "submit", spec)
    assert rc == 2 and "base.optim.lr: expected a finite number, got inf" in " ".join(err.split())
    spec.write_text("epochs: 3\ndata: {name: digits}\nloss: {name: mse}\n")  # a RunSpec, not a sweep
    rc, out, err = ncsweep(capsys, "submit", spec)
    assert rc == 2 and "looks like a RunSpec (one run), not a sweep" in " ".join(err.split())
    spec.write_text("name: single\nbase: {epochs: 1}\n")
    rc, out, err = ncsweep(capsys, "submit", spec)
    assert rc == 0 and out.endswith(": 1 run\n"), out


@SQLITE
def test_watch_once_results_workers(live: str, db_url: str, capsys) -> None:  # noqa: ANN001
    sid, runs = seed_sweep(db_url, statuses={0: "running", 1: "queued", 2: "failed"})
    with session_scope(db_url) as s:
        workers_repo.heartbeat(s, "gpu0@node1", "node1", 4242, "cuda:0",
                               {"gpu_name": "NVIDIA H100", "util_percent": 87.0, "memory_used": 30 * 2**30,
                                "memory_total": 80 * 2**30, "temperature_c": 61.0}, runs[0], "busy")
    rc, out, _ = ncsweep(capsys, "watch", sid, "--once")
    assert rc == 0 and f"sweep {sid}" in out and "running" in out and "gpu0@node1" in out and "87%" in out
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    (ROOT / "test-artifacts" / "watch.txt").write_text(f"$ ncsweep watch {sid} --once\n{out}")
    docs = ROOT / "docs" / "screenshots" / "watch.txt"  # for the README; rewritten only on request
    if os.environ.get("NCSWEEP_UPDATE_SCREENSHOTS") == "1" or not docs.exists():
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(f"$ ncsweep watch {sid} --once\n{out}")
    rc, out, _ = ncsweep(capsys, "results", sid, "--keys", "acc,nc1", "--split", "test")
    assert rc == 0 and "mean ± std" in out and "±" in out.split("mean ± std")[1] and "mse" in out
    rc, out, _ = ncsweep(capsys, "results", sid, "--group-by", "loss.name", "--keys", "acc")
    assert rc == 0 and "ce" in out and "model.width" not in out
    rc, out, _ = ncsweep(capsys, "results", sid)  # default: the headline keys, in their order, nothing else
    header = next(line for line in out.splitlines() if "┃ runs ┃" in line)
    assert rc == 0 and [c for c in ("acc", "nc1", "nc2_w", "nc3", "wh_b") if c in header] == ["acc", "nc1", "nc2_w",
                                                                                             "nc3", "wh_b"]
    assert "cos_margin_min" not in out and f"sweep {sid} results [test, last epoch]" in out
    rc, out, _ = ncsweep(capsys, "results", sid, "--keys", "all")
    assert rc == 0 and "┃ cos_margin_min " in out and max(map(len, out.splitlines())) <= 160  # 9 keys fit in 160
    rc, out, err = ncsweep(capsys, "results", sid, "--epoch", "1", "--keys", "acc")
    assert rc == 0 and "epoch 1]" in out and "±" in out
    queued, _ = seed_sweep(db_url, name="queued", statuses={i: "queued" for i in range(8)})
    rc, out, err = ncsweep(capsys, "results", queued)
    assert rc == 0 and f"no run of sweep {queued} has test metrics at their last epoch yet" in err
    rc, out, err = ncsweep(capsys, "results", sid, "--keys", "acc,accuracy")
    assert rc == 1 and "unknown metric key 'accuracy'" in err and "(field: keys)" in err
    rc, out, _ = ncsweep(capsys, "workers")
    assert rc == 0 and "gpu0@node1" in out and "busy" in out and "30.0/80.0 GiB" in out


@SQLITE
@pytest.mark.parametrize("terminal", [True, False], ids=["live", "pipe"])
def test_watch_exits_when_the_sweep_finishes(live: str, db_url: str, capsys, monkeypatch,  # noqa: ANN001
                                             terminal: bool) -> None:
    from service.client import Client

    monkeypatch.setattr(cli.out, "_force_terminal", terminal)
    sid, runs = seed_sweep(db_url, statuses={0: "running"})
    looks: list[str] = []  # the sweep's status at each GET /sweeps/{id} of the watch

    def sweep(self, sweep_id: int, fetch=Client.sweep) -> dict:  # noqa: ANN001
        if len(looks) == 3:  # the run finishes after the third refresh
            with session_scope(db_url) as s:
                s.get(Run, runs[0]).status = "succeeded"
        detail = fetch(self, sweep_id)
        looks.append("finished" if detail["counts"].get("running", 0) == 0 else "running")
        return detail
    monkeypatch.setattr(Client, "sweep", sweep)
    rc, out, _ = ncsweep(capsys, "watch", sid, "--interval", "0.01", "--timeout", "60")
    # it kept refreshing while the run ran, and stopped at the first view of the finished sweep
    assert rc == 0 and f"sweep {sid} finished" in out and looks == ["running"] * 3 + ["finished"], looks
    assert "┘sweep" not in out and (terminal or out.count("runs (") == 1)  # a pipe gets the final view once
    other, _ = seed_sweep(db_url, name="stuck", statuses={0: "running"})
    rc, _, err = ncsweep(capsys, "watch", other, "--interval", "0.1", "--timeout", "0.3")
    assert rc == 3 and "still running" in err


@SQLITE
def test_an_api_of_another_version_gets_no_traceback(live: str, db_url: str, capsys, tmp_path: Path,
                                                      monkeypatch) -> None:  # noqa: ANN001
    from service.client import Client

    sid, runs = seed_sweep(db_url, epochs=1)
    real_get = Client.get

    def older(self, path, **params):  # noqa: ANN001, ANN003, ANN202 - an API from before metric version 2
        body = real_get(self, path, **params)
        for s in body.get("series", []) if isinstance(body, dict) else []:
            s.pop("versions", None)
        return body

    monkeypatch.setattr(Client, "get", older)
    rc, _, err = ncsweep(capsys, "export", sid, "--out", tmp_path / "old.csv")
    rows = list(csv.DictReader((tmp_path / "old.csv").open()))
    assert rc == 0 and rows and {r["metric_version"] for r in rows} == {""}, err
    monkeypatch.setattr(Client, "get", lambda self, path, **params: {"series": [{"split": "test"}]})  # no epochs
    rc, out, err = ncsweep(capsys, "show", runs[0])
    assert rc == 1 and "Traceback" not in err and err.startswith("error: unexpected KeyError") and "version" in err


@SQLITE
def test_export_csv_and_parquet(live: str, db_url: str, capsys, tmp_path: Path) -> None:  # noqa: ANN001
    sid, _ = seed_sweep(db_url, epochs=2)
    rc, out, _ = ncsweep(capsys, "export", sid, "--format", "csv", "--out", tmp_path / "m.csv")
    assert rc == 0
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert len(rows) == 8 * 2 * 2 * 9  # runs × epochs × splits × keys
    assert set(rows[0]) == {"sweep_id", "run_id", "kind", "parent_run_id", "status", "seed", "env_device", "env_threads",
                            "env_torch", "loss.name", "model.width", "epoch", "split", "key", "value", "note",
                            "metric_version"}  # note: why a NaN value is undefined; env_*: the last attempt's
    assert {(r["env_device"], r["env_threads"]) for r in rows} == {("", "")}  # seeded rows: no attempt recorded
    assert {r["metric_version"] for r in rows} == {"1"}  # the seeded rows' definitions (docs/metrics.md, Versioning)
    assert {(r["kind"], r["parent_run_id"]) for r in rows} == {("train", "")}  # a validate job's rows say whose
    assert {r["loss.name"] for r in rows} == {"ce", "mse"}
    rc, _, _ = ncsweep(capsys, "export", sid, "--format", "parquet", "--out", tmp_path / "m.parquet")
    import pyarrow.parquet as pq

    assert rc == 0 and pq.read_table(tmp_path / "m.parquet").num_rows == len(rows)
    rc, _, err = ncsweep(capsys, "export", sid, "--format", "xlsx", "--out", tmp_path / "m.xlsx")
    assert rc != 0 and "csv or parquet" in err
    rc, _, _ = ncsweep(capsys, "export", sid, "--out", tmp_path / "inferred.parquet")  # format from the suffix
    assert rc == 0 and pq.read_table(tmp_path / "inferred.parquet").num_rows == len(rows)
    for args, says in ((["--format", "csv", "--out", tmp_path / "m2.parquet"], "ends in .parquet but --format is csv"),
                       (["--out", tmp_path / "m.txt"], "ending in .csv or .parquet"),
                       (["--out", tmp_path / "nowhere" / "m.csv"], "does not exist; create it first")):
        rc, _, err = ncsweep(capsys, "export", sid, *args)
        assert rc == 2 and says in " ".join(err.split()), err
    assert not (tmp_path / "m2.parquet").exists() and not (tmp_path / "nowhere").exists()


@SQLITE
def test_show_prints_a_runs_whole_error_and_last_metrics(live: str, db_url: str, capsys) -> None:  # noqa: ANN001
    sid, runs = seed_sweep(db_url, statuses={2: "failed"})
    long_error = ("MissingDataError: dataset 'mnist': files not found under data root /data (looked for "
                  "/data/MNIST/raw/train-images-idx3-ubyte). Fix: put the mnist files there")
    with session_scope(db_url) as s:
        s.get(Run, runs[2]).error = "Traceback (most recent call last):\n  ...\n" + long_error
    rc, out, _ = ncsweep(capsys, "runs", "--sweep", sid, "--status", "failed")
    assert rc == 0 and "MissingDataError: dataset 'mnist': files not found under da…" in out
    assert "the whole error of a run: ncsweep show RUN" in out
    rc, out, _ = ncsweep(capsys, "show", runs[2])
    text = " ".join(out.split())
    assert rc == 0 and long_error in text and f"{runs[2]} of sweep {sid}" in text and "failed" in text
    rc, out, _ = ncsweep(capsys, "show", runs[0])
    assert rc == 0 and "last measured metrics" in out and "error:" not in out and "nc2_w" in out
    rc, _, err = ncsweep(capsys, "show", 99999)
    assert rc == 1 and "HTTP 404" in err


@SQLITE
def test_cancel_and_retry(live: str, db_url: str, capsys) -> None:  # noqa: ANN001
    sid, runs = seed_sweep(db_url, statuses={0: "queued", 1: "queued", 2: "running"})
    rc, out, _ = ncsweep(capsys, "cancel", "--run", runs[0])
    assert rc == 0 and "cancelled: 1" in out
    rc, out, _ = ncsweep(capsys, "cancel", sid)
    assert rc == 0 and "cancelled: 1" in out and "cancel requested: 1" in out
    rc, out, _ = ncsweep(capsys, "retry", "--run", runs[0])
    assert rc == 0 and "retried: 1" in out
    rc, out, err = ncsweep(capsys, "retry", "--run", runs[5])  # succeeded: immutable
    assert rc == 1 and "HTTP 409" in err and "Traceback" not in err
    rc, _, err = ncsweep(capsys, "cancel")
    assert rc == 2 and "SWEEP id or --run" in err


@SQLITE
def test_validate_queues_a_job_and_explains_refusals(live: str, db_url: str, capsys) -> None:  # noqa: ANN001
    sid, runs = seed_sweep(db_url, statuses={0: "running"})
    add_checkpoints(db_url, runs[1], [2, 4])
    rc, out, _ = ncsweep(capsys, "validate", runs[1], "--epochs", "4", "--splits", "test")
    text = " ".join(out.split())
    assert rc == 0 and f"validate job of run {runs[1]} queued (epochs: 4; splits: test)" in text
    job = int(text.split(":")[0].split()[1])
    assert f"ncsweep show {job}" in text
    with session_scope(db_url) as s:
        row = s.get(Run, job)
        assert (row.kind, row.parent_run_id, row.status) == ("validate", runs[1], "queued")
    rc, _, err = ncsweep(capsys, "validate", runs[1], "--epochs", "4", "--splits", "test")
    assert rc == 1 and "HTTP 409" in err and f"run {job} is queued to validate" in err
    rc, _, err = ncsweep(capsys, "validate", runs[1], "--epochs", "3")
    assert rc == 1 and "no checkpoint for epochs [3]" in err and "stored epochs: [2, 4]" in err
    rc, _, err = ncsweep(capsys, "validate", runs[0])
    assert rc == 1 and "running; validate a finished run" in err
    rc, _, err = ncsweep(capsys, "validate", runs[1], "--splits", "val")
    assert rc == 1 and "HTTP 422" in err and "splits" in err and "Traceback" not in err
    rc, _, err = ncsweep(capsys, "validate", runs[1], "--epochs", "four")
    assert rc == 2 and "comma-separated integers for --epochs" in err


@SQLITE
def test_results_and_plot_take_the_trainers_training_keys(live: str, db_url: str, capsys,  # noqa: ANN001
                                                          tmp_path: Path) -> None:
    from nc_core.db.models import Metric

    sid, runs = seed_sweep(db_url, epochs=2)
    with session_scope(db_url) as s:  # what nc_core.train stores on the train split besides the NC keys
        s.add_all(Metric(run_id=rid, epoch=2, split="train", key=k, value=v) for rid in runs
                  for k, v in (("lr", 0.05), ("running_acc", 97.5), ("running_loss", 0.25)))
    rc, out, err = ncsweep(capsys, "results", sid, "--keys", "running_acc,lr", "--split", "train")
    assert rc == 0, err
    assert "running_acc" in out and "97.5" in out and "lr" in out and "0.05" in out
    rc, out, err = ncsweep(capsys, "plot", sid, "--kind", "dynamics", "--keys", "running_loss",
                           "--out", tmp_path / "r.png")
    assert rc == 0 and (tmp_path / "r.png").read_bytes()[:8] == PNG_SIGNATURE, err
    rc, _, err = ncsweep(capsys, "results", sid, "--keys", "learning_rate")
    assert rc == 1 and "unknown metric key 'learning_rate'" in err and "running_loss, running_acc, lr" in err


@SQLITE
def test_plot_commands(live: str, db_url: str, capsys, tmp_path: Path) -> None:  # noqa: ANN001
    sid, runs = seed_sweep(db_url)
    cases = {"dyn.png": ["--kind", "dynamics"], "heat.png": ["--kind", "heatmap", "--x", "model.width", "--y", "seed",
                                                             "--mode", "diff_vs", "--ref", "loss.name:ce"],
             "marg.png": ["--kind", "margins", "--run", runs[0]]}
    for name, extra in cases.items():
        rc, out, err = ncsweep(capsys, "plot", sid, *extra, "--out", tmp_path / name)
        assert rc == 0, err
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE
    rc, _, err = ncsweep(capsys, "plot", sid, "--kind", "heatmap", "--out", tmp_path / "x.png")
    assert rc == 2 and "--x AXIS" in err
    rc, _, err = ncsweep(capsys, "plot", sid, "--kind", "dynamics", "--out", tmp_path / "dyn.pdf")
    assert rc == 2 and "expected a .png file name" in err
    other, other_runs = seed_sweep(db_url, name="other")
    rc, _, err = ncsweep(capsys, "plot", sid, "--kind", "margins", "--run", other_runs[0], "--out", tmp_path / "m.png")
    assert rc == 2 and f"run {other_runs[0]} belongs to sweep {other}, not to sweep {sid}" in " ".join(err.split())
    rc, _, err = ncsweep(capsys, "plot", sid, "--kind", "heatmap", "--x", "model.width", "--y", "seed", "--key",
                         "accuracy", "--out", tmp_path / "h.png")
    assert rc == 1 and "unknown metric key 'accuracy'" in err and not (tmp_path / "h.png").exists()


@SQLITE
def test_a_plot_with_nothing_to_draw_says_why(live: str, db_url: str, capsys, tmp_path: Path) -> None:  # noqa: ANN001
    sid, _ = seed_sweep(db_url)  # every run succeeded; none stored nc2_w_gof
    rc, out, err = ncsweep(capsys, "plot", sid, "--keys", "nc2_w_gof", "--out", tmp_path / "gof.png")
    assert rc == 0 and "wrote" in out and (tmp_path / "gof.png").read_bytes()[:8] == PNG_SIGNATURE
    assert f"note: nothing to draw: sweep {sid}: none of its 8 finished runs stored a value of nc2_w_gof" \
        in " ".join(err.split()), err
    running, _ = seed_sweep(db_url, name="running", statuses={0: "running"})
    rc, _, err = ncsweep(capsys, "plot", running, "--keys", "nc2_w_gof", "--out", tmp_path / "later.png")
    assert rc == 0 and f"sweep {running}: no stored values yet for nc2_w_gof" in " ".join(err.split()), err
    rc, _, err = ncsweep(capsys, "plot", sid, "--keys", "nc1", "--out", tmp_path / "nc1.png")
    assert rc == 0 and "nothing to draw" not in err  # a drawn figure carries no note
    rc, _, err = ncsweep(capsys, "export", 10**6, "--out", tmp_path / "none.csv")
    assert rc == 1 and err.startswith("error") and not err.startswith("\n"), repr(err)  # no bar's blank line first


@SQLITE
def test_token_create_saves_and_is_used(db_url: str, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("NCSWEEP_DATABASE_URL", db_url)
    monkeypatch.delenv("NCSWEEP_TOKEN", raising=False)
    rc, out, err = ncsweep(capsys, "--home", tmp_path / "home", "token", "create", "--name", "ci", "--scope", "read",
                           "--save")
    token = out.strip()
    assert rc == 0 and token.startswith("ncs_") and "saved to" in err and "replaces" not in err
    assert (tmp_path / "home" / "token").stat().st_mode & 0o777 == 0o600
    rc, out, err = ncsweep(capsys, "--home", tmp_path / "home", "token", "create", "--name", "ci2", "--scope", "read",
                           "--save")  # a second --save overwrites the first: say so
    assert rc == 0 and "it replaces the token that was there; a read token cannot do what a broader one did" in \
        " ".join(err.split())
    token = out.strip()
    rc, out, err = ncsweep(capsys, "--home", tmp_path / "home2", "token", "create")
    assert rc == 0 and out.startswith("ncs_") and "not saved" in err and "--save" in err
    from nc_core.settings import Settings
    from service.client import resolve_token

    assert resolve_token(Settings(home=tmp_path / "home")) == token
    from service.client import resolve_api_url

    (tmp_path / "home" / "api_url").write_text("http://127.0.0.1:9999\n")  # written by `ncsweep up`
    assert resolve_api_url(Settings(home=tmp_path / "home")) == "http://127.0.0.1:9999"
    assert resolve_api_url(Settings(home=tmp_path / "home", api_url="http://x:1")) == "http://x:1"
    rc, _, err = ncsweep(capsys, "token", "create", "--scope", "root")
    assert rc == 2 and "read, write, admin" in err


@SQLITE
def test_tokens_are_listed_without_secrets_and_revoked_by_value_or_name(db_url: str, tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:  # noqa: ANN001
    from sqlalchemy import select

    from nc_core.db.models import ApiToken
    from nc_core.db.session import session_scope

    monkeypatch.setenv("NCSWEEP_DATABASE_URL", db_url)
    tokens = [ncsweep(capsys, "token", "create", "--name", name, "--scope", "read")[1].strip()
              for name in ("alice", "bob", "bob")]
    rc, out, _ = ncsweep(capsys, "token", "list")
    assert rc == 0 and "alice" in out and out.count("bob") == 2 and not any(t in out for t in tokens)
    rc, out, _ = ncsweep(capsys, "token", "revoke", tokens[0])
    assert rc == 0 and "revoked 1 token" in out
    rc, out, _ = ncsweep(capsys, "token", "revoke", "--name", "bob")
    assert rc == 0 and "revoked 2 tokens named 'bob'" in out
    with session_scope(db_url) as s:
        assert all(s.scalars(select(ApiToken.revoked)))
    rc, _, err = ncsweep(capsys, "token", "revoke", "--name", "bob")  # none left
    assert rc == 2 and "no live token named 'bob'" in err
    rc, _, err = ncsweep(capsys, "token", "revoke", "ncs_unknown")
    assert rc == 2 and "no such token" in err
    rc, _, err = ncsweep(capsys, "token", "revoke")
    assert rc == 2 and "expected a TOKEN or --name NAME" in " ".join(err.split())


def test_unreachable_api_is_one_readable_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "NCSWEEP_API_URL": url, "NCSWEEP_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "service.cli", "workers"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 1
    assert f"cannot reach the ncsweep API at {url}: is `ncsweep up` running?" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_api_url_without_a_scheme_is_one_line(capsys, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(cli.err, "width", 200)
    rc, out, err = ncsweep(capsys, "--api", "localhost:8765", "workers")
    assert rc == 1 and "expected http://HOST:PORT" in err and "Traceback" not in err + out


def test_help_of_stack_commands(capsys) -> None:  # noqa: ANN001
    for cmd, flag in (("up", "--no-example"), ("worker", "--gpus"), ("watch", "--once"), ("plot", "--kind")):
        rc, out, _ = ncsweep(capsys, cmd, "--help")
        assert rc == 0 and flag in out
    rc, _, err = ncsweep(capsys, "worker", "--gpus", "0,x")
    assert rc == 2 and "comma-separated integers" in err


def test_status_words_stay_whole_on_an_80_column_terminal() -> None:
    from rich.console import Console

    from service.cli_views import runs_table, watch_view

    runs = [{"id": i, "status": st, "grid": {"loss.name": "label_smoothing", "model.width": 128}, "seed": 2,
             "epoch": 3, "epochs_total": 12, "steps_total": 10, "step": 5, "samples_per_s": 12345.0, "sweep_id": 1,
             "kind": "train"} for i, st in enumerate(["succeeded", "cancelled", "running"])]
    console = Console(width=80, record=True)
    console.print(watch_view({"id": 1, "name": "widths-by-loss", "progress": 0.3, "eta_s": 10}, runs, []))
    console.print(runs_table(runs[:1]))
    text = console.export_text()
    assert "│ succeeded │" in text and "│ cancelled │" in text and "succee…" not in text
    assert "1 run" in text and "1 runs" not in text


def test_watch_names_what_each_kind_of_run_counts() -> None:
    # a UFM counts full-batch iterations (its rate is iterations/s), a validate job checkpoints
    from rich.console import Console

    from service.cli_views import watch_view

    def row(i: int, kind: str) -> dict:
        return {"id": i, "status": "running", "grid": {"ufm.lambda_w": 0.001}, "seed": 0, "epoch": 300,
                "epochs_total": 1000, "steps_total": 1, "step": 1, "samples_per_s": 632.0, "sweep_id": 1, "kind": kind}

    def text(runs: list) -> str:
        console = Console(width=140, record=True)
        console.print(watch_view({"id": 1, "name": "u", "progress": 0.3, "eta_s": 10}, runs, []))
        return console.export_text()

    only_ufm = text([row(1, "ufm"), row(2, "ufm")])
    assert "iteration" in only_ufm and "it/s" in only_ufm and "samples/s" not in only_ufm
    mixed = text([row(1, "train"), row(2, "ufm")])
    assert "┃ rate" in mixed and "632 samples/s" in mixed and "632 it/s" in mixed
    with_job = text([row(1, "train"), {**row(2, "validate"), "parent_run_id": 1}])  # a validate job: its own table
    assert "┃ rate" not in with_job and "┃ samples/s" in with_job and "┃ ckpt/s" in with_job and "run 1" in with_job


def test_results_table_goes_long_when_the_keys_do_not_fit() -> None:
    from rich.console import Console

    from nc_core.sweep import short_names
    from service.cli_results import results_table

    assert short_names(["loss.name", "model.width", "optim.lr"]) == ["loss", "width", "lr"]
    assert short_names(["loss.name", "model.name"]) == ["loss", "model"]
    assert short_names(["head.depth_linear", "ufm.depth_linear", "seed"]) == ["head.depth_linear",
                                                                                "ufm.depth_linear", "seed"]
    metrics = {k: {"mean": 0.123456, "std": 0.0123, "count": 3} for k in ("acc", "nc1", "nc2_w", "nc3", "wh_b")}
    body = {"group_by": ["loss.name", "model.width"], "keys": list(metrics),
            "groups": [{"values": {"loss.name": "label_smoothing", "model.width": 128}, "runs": 3, "metrics": metrics}]}
    for width, long in ((160, False), (80, True)):
        console = Console(width=width, record=True)
        console.print(results_table(body, 2, "test", 8, width=width))
        text = console.export_text()
        assert "sweep 2 results [test, epoch 8]" in " ".join(text.split()) and "…" not in text
        assert ("┃ key" in text) == long and text.count("0.123±0.012") == 5 and "label_smoothing" in text
        assert max(map(len, text.splitlines())) <= width


def test_only_running_runs_show_an_eta() -> None:
    # a cancelled run keeps the last ETA its worker wrote; watch must not show it as time left
    from service.cli_views import run_eta

    base = {"epoch": 3, "epochs_total": 12, "steps_total": 10, "step": 5, "eta_s": 803.0}
    assert run_eta({**base, "status": "running"}) == 803.0
    for status in ("cancelled", "failed", "succeeded", "queued"):
        assert run_eta({**base, "status": status}) is None, status


def test_a_ufm_run_and_sweep_are_shown_in_iterations() -> None:
    from rich.console import Console

    from service.cli_results import results_hint, results_table
    from service.cli_views import run_detail

    def text(renderable) -> str:  # noqa: ANN001
        console = Console(width=160, record=True)
        console.print(renderable)
        return " ".join(console.export_text().split())

    run = {"id": 7, "sweep_id": 2, "kind": "ufm", "status": "succeeded", "grid": {}, "spec": {}, "epoch": 700,
           "epochs_total": 700, "attempt": 1, "max_attempts": 3}
    metrics = [{"split": "train", "key": "nc1", "epoch": 700, "value": 1e-4}]
    shown = text(run_detail(run, metrics))
    assert "iteration 700/700, 100%" in shown and "┃ split ┃ iteration ┃" in shown and "epoch" not in shown
    assert "epoch 4/4" in text(run_detail({**run, "kind": "train", "epoch": 4, "epochs_total": 4}, metrics))
    empty = {"group_by": ["ufm.lambda_w"], "keys": ["nc1"], "unit": "iteration",
             "groups": [{"values": {"ufm.lambda_w": 0.01}, "runs": 1, "metrics": {"nc1": {"count": 0}}}]}
    assert "results [train, last iteration]" in text(results_table(empty, 2, "train"))
    assert "results [train, iteration 500]" in text(results_table(empty, 2, "train", 500))
    assert results_hint(empty, 2, "train", "500") == ("no run of sweep 2 has train metrics at iteration 500 "
                                                       "(a run measures only the iterations of its eval schedule)")
    assert "results [test, last epoch]" in text(results_table({**empty, "unit": "epoch"}, 2, "test"))


def test_results_at_last_say_when_runs_are_unfinished_or_epochs_differ() -> None:
    from service.cli_results import results_caveat

    body = {"unit": "epoch", "groups": [{"measured_epochs": [3000], "unfinished_runs": []},
                                        {"measured_epochs": [1500, 3000], "unfinished_runs": [51, 52]}]}
    assert results_caveat(body) == ("note: 2 run(s) behind these values have not succeeded (run 51, 52); the values "
                                    "come from epochs 1500–3000, each run's last measurement of each key; --epoch 1500 "
                                    "compares every run at one epoch")
    assert results_caveat({"unit": "epoch", "groups": [{"measured_epochs": [20], "unfinished_runs": []}]}) is None
    at_25 = {"unit": "epoch", "groups": [{"measured_epochs": [25], "unfinished_runs": [18]}]}  # --epoch 25
    assert results_caveat(at_25) == "note: 1 run(s) behind these values have not succeeded (run 18)"


def test_a_running_run_whose_worker_went_silent_says_so() -> None:
    from rich.console import Console

    from service.cli_views import runs_table

    def text(rows: list[dict]) -> str:
        console = Console(width=200, record=True)
        console.print(runs_table(rows))
        return console.export_text()

    run = {"id": 56, "sweep_id": 1, "status": "running", "grid": {}, "seed": 0, "epoch": 655, "epochs_total": 3000}
    assert "silent" not in text([{**run, "silent_s": 4.0}])
    assert "running (silent 95 s: worker lost?)" in text([{**run, "silent_s": 95.0}])
    assert "silent" not in text([{**run, "status": "queued", "silent_s": None}])
    from service.cli_views import watch_view

    view = Console(width=200, record=True)
    view.print(watch_view({"id": 1, "progress": 0.2, "eta_s": 50}, [{**run, "silent_s": 95.0, "eta_s": 17}], []))
    row = next(line for line in view.export_text().splitlines() if "silent 95 s" in line)
    assert row.rstrip(" │").endswith("?")  # no ETA from a worker that stopped reporting


def test_show_lists_the_spec_fields_that_differ_from_the_defaults() -> None:
    from nc_core.spec import RunSpec
    from service.cli_views import spec_changes

    spec = RunSpec.model_validate({"seed": 3, "epochs": 30, "optim": {"lr": 0.1}, "eval": {"splits": ["test"]},
                                   "data": {"name": "digits"}, "model": {"width": 256}}).model_dump(mode="json")
    assert spec_changes(spec) == 'epochs=30 model.width=256 optim.lr=0.1 eval.splits=["test"]'  # not 256.0
    assert spec_changes(RunSpec().model_dump(mode="json")) == "every field at its default"


def test_a_retry_line_names_the_runs_it_left_for_their_validate_jobs() -> None:
    from service.cli_actions import action_line

    line = action_line("retry", {"cancelled": 0, "cancel_requested": 0, "retried": 2, "enqueued": True,
                                 "skipped": {"5": 9}})
    assert line == "retry: retried: 2, sent to the workers, skipped: run 5 (its validate job 9 reads its checkpoints)"
    unsent = action_line("retry", {"retried": 1, "enqueued": False})  # said in words, not as a Python bool
    assert unsent == "retry: retried: 1, saved, but the broker was unreachable: the reconciler will send it"
    assert action_line("retry", {"retried": 0, "skipped": {}}) == "retry: nothing to do"


def test_show_says_cancel_requested_only_of_a_run_still_stopping() -> None:
    from rich.console import Console

    from service.cli_views import run_detail

    def status_line(run: dict) -> str:
        console = Console(width=160, record=True)
        console.print(run_detail(run, []))
        return next(line for line in console.export_text().splitlines() if line.startswith("status"))

    run = {"id": 7, "sweep_id": 2, "kind": "train", "grid": {}, "spec": {}, "epoch": 2, "epochs_total": 9,
           "attempt": 1, "max_attempts": 3, "cancel_requested": True}
    assert "cancel requested: it stops at its next step" in status_line({**run, "status": "running"})
    # queued with the flag (a run given back while its cancel was requested): no worker starts it
    assert "cancel requested: it is cancelled before it starts" in status_line({**run, "status": "queued"})
    # a queued run cancelled, or a running one that has stopped since: the flag stays set, the run is just cancelled
    assert "cancel" in status_line({**run, "status": "cancelled"})
    assert "requested" not in status_line({**run, "status": "cancelled"})


@SQLITE
def test_sweeps_lists_the_newest_first_with_their_runs_and_progress(live: str, db_url: str, capsys) -> None:  # noqa: ANN001
    rc, out, _ = ncsweep(capsys, "sweeps")
    assert rc == 0 and "0 sweeps" in out and "ncsweep submit sweep.yaml" in " ".join(out.split())
    first, _ = seed_sweep(db_url, name="widths")  # 8 runs, all succeeded
    second, _ = seed_sweep(db_url, name="losses", statuses={0: "running", 1: "failed"})
    rc, out, _ = ncsweep(capsys, "sweeps")
    lines = [line for line in out.splitlines() if "widths" in line or "losses" in line]
    assert rc == 0 and "2 sweeps" in out and len(lines) == 2 and "losses" in lines[0], out  # newest first
    assert "100%" in lines[1] and "succeeded 8" in " ".join(lines[1].split())
    assert "failed 1" in lines[0] and "running 1" in lines[0] and "succeeded 6" in lines[0]
    rc, out, err = ncsweep(capsys, "sweeps", "--limit", "1")
    assert rc == 0 and "sweeps (1 of 2)" in out and "losses" in out and "widths" not in out
    assert "showing the newest 1 of 2 sweeps (--limit 1)" in err
    rc, out, _ = ncsweep(capsys, "sweeps", "--json")
    import json

    page = json.loads(out)
    assert rc == 0 and [s["id"] for s in page["items"]] == [second, first] and page["total"] == 2
    rc, _, err = ncsweep(capsys, "sweeps", "--limit", "0")
    assert rc == 2 and "--limit" in err


@SQLITE
def test_sweeps_and_watch_show_names_with_brackets_as_written(live: str, db_url: str, capsys) -> None:  # noqa: ANN001
    # the name went into the table as rich markup: "lr [red]" lost its tag, "[/b]" stopped the whole listing
    # with "error: unexpected MarkupError"
    seed_sweep(db_url, name="lr [red] sweep")
    seed_sweep(db_url, name="grid [/b] x", widths=(32,))
    rc, out, err = ncsweep(capsys, "sweeps")
    flat = " ".join(out.split())
    assert rc == 0 and "lr [red] sweep" in flat and "grid [/b] x" in flat, err
    from rich.console import Console

    from service.cli_views import watch_view

    console = Console(width=120, record=True)  # `ncsweep watch` of that sweep: its header line, the same way
    console.print(watch_view({"id": 2, "name": "grid [/b] x", "progress": 0.5, "eta_s": 10}, [], []))
    assert "sweep 2 grid [/b] x" in console.export_text()
