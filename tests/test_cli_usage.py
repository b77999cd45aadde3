"""`ncsweep` options checked before anything runs, counts that match the API's, and messages in the CLI's terms."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from nc_core.db.models import Run
from nc_core.db.session import session_scope
from service import cli
from test_api_runs import add_checkpoints
from test_cli import SQLITE, live, ncsweep  # noqa: F401 - live is a fixture
from test_plots import seed_sweep


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("args, says", [
    (["up", "--workers", "0"], "Invalid value for '--workers': expected an integer of at least 1, got 0"),
    (["up", "--workers", "-1"], "Invalid value for '--workers': expected an integer of at least 1, got -1"),
    (["up", "--port", "99999"], "Invalid value for '--port': expected 1..65535, got 99999"),
    (["up", "--port", "0"], "Invalid value for '--port': expected 1..65535, got 0"),
    (["worker", "--cpu", "0"], "Invalid value for '--cpu': expected an integer of at least 1, got 0"),
    (["runs", "--limit", "0"], "Invalid value for '--limit': expected an integer of at least 1, got 0"),
    (["runs", "--limit", "-1"], "Invalid value for '--limit': expected an integer of at least 1, got -1"),
])
def test_numeric_options_out_of_range_are_usage_errors_before_anything_starts(capsys, monkeypatch, args,  # noqa: ANN001
                                                                               says) -> None:
    from service import embedded
    from worker import launch

    monkeypatch.setattr(embedded, "main", lambda **kw: pytest.fail(f"the stack must not start: {kw}"))
    monkeypatch.setattr(launch, "main", lambda *a, **kw: pytest.fail(f"no worker may start: {a}"))
    rc, out, err = ncsweep(capsys, *args)
    assert rc == 2 and says in flat(err) and "Traceback" not in err + out, err


def test_the_stack_itself_refuses_workers_and_ports_out_of_range(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from service import embedded

    for kwargs, says in (({"workers": 0}, "--workers: expected at least 1 CPU worker, got 0"),
                         ({"api_port": 99999}, "--port: expected 1..65535, got 99999")):
        assert embedded.main(tmp_path / "home", example=False, keep_running=False, **kwargs) == 1
        assert says in flat(capsys.readouterr().out)
    assert not (tmp_path / "home").exists()


def test_home_that_is_a_file_is_named_as_such(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from service import embedded

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\n")
    assert embedded.main(spec, example=False, keep_running=False) == 1
    out = flat(capsys.readouterr().out)
    assert f"--home: {spec} is a file, expected a directory" in out and "Errno" not in out, out


def test_an_unexpected_local_error_does_not_blame_the_api_version(capsys, monkeypatch) -> None:  # noqa: ANN001
    from service import embedded

    def broken(**_kwargs):  # noqa: ANN003, ANN202 - a local failure, no API involved
        raise OverflowError("bind(): port must be 0-65535.")

    monkeypatch.setattr(embedded, "main", broken)
    rc, _, err = ncsweep(capsys, "up", "--no-example")
    text = flat(err)
    assert rc == 1 and "error: unexpected OverflowError: bind(): port must be 0-65535." in text, err
    assert "version" not in text and "NCSWEEP_DEBUG=1 shows the traceback" in text


@SQLITE
def test_runs_says_how_many_match_and_refuses_an_unknown_sweep(live: str, db_url: str, capsys) -> None:  # noqa: ANN001
    sid, runs = seed_sweep(db_url)  # 8 runs
    rc, out, err = ncsweep(capsys, "runs", "--sweep", sid, "--limit", "3")
    assert rc == 0 and "runs (3 of 8)" in out and "3 runs" not in out, out
    assert "showing the first 3 of 8 matching runs (--limit 3)" in err
    assert [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")] == list(map(str, runs[:3]))
    rc, out, err = ncsweep(capsys, "runs", "--sweep", sid)
    assert rc == 0 and "8 runs" in out and "of 8" not in out and not err
    rc, out, err = ncsweep(capsys, "runs", "--sweep", 99999)
    assert rc == 1 and "HTTP 404" in err and "runs" not in out, (out, err)
    rc, out, err = ncsweep(capsys, "runs", "--sweep", sid, "--status", "failed")  # a sweep without such runs
    assert rc == 0 and "0 runs" in out


@SQLITE
def test_watch_counts_runs_as_the_api_does_and_shows_validate_jobs_apart(live: str, db_url: str,  # noqa: ANN001
                                                                         capsys) -> None:
    sid, runs = seed_sweep(db_url)  # 8 succeeded runs
    add_checkpoints(db_url, runs[1], [2, 4])
    rc, out, _ = ncsweep(capsys, "validate", runs[1])
    job = int(out.split(":")[0].split()[1])
    with session_scope(db_url) as s:
        row = s.get(Run, job)
        row.status, row.epoch, row.epochs_total, row.samples_per_s = "succeeded", 2, 2, 7.0
    detail = httpx.get(f"{live}/sweeps/{sid}").json()
    assert detail["counts"] == {"succeeded": 8} and detail["validate_jobs"] == {"succeeded": 1}
    rc, out, _ = ncsweep(capsys, "watch", sid, "--once")
    text = flat(out)
    assert rc == 0 and "succeeded 8" in text and "succeeded 9" not in text, out
    assert "runs (8 of 8)" in text and "validate jobs (1 of 1)" in text and "validate jobs: succeeded 1" in text
    runs_header = next(line for line in out.splitlines() if "┃ run " in line)
    assert "epoch" in runs_header and "samples/s" in runs_header and "rate" not in runs_header
    jobs_header = next(line for line in out.splitlines() if "┃ job " in line)
    assert "┃ validates ┃" in jobs_header and "checkpoint" in jobs_header and "ckpt/s" in jobs_header
    job_row = next(line for line in out.splitlines() if line.startswith(f"│ {job} "))
    assert f"│ run {runs[1]} " in job_row and "│ 2/2 " in job_row and "│ 7 " in job_row


@SQLITE
def test_results_cells_match_their_std_and_the_title_says_what_was_pooled(live: str, db_url: str, capsys,  # noqa: ANN001
                                                                            monkeypatch) -> None:
    sid, _ = seed_sweep(db_url)
    monkeypatch.setattr(cli.out, "width", 80)  # a pipe's 80 columns
    rc, out, _ = ncsweep(capsys, "results", sid, "--group-by", "loss.name", "--keys", "acc,nc1")
    lines = out.splitlines()
    assert rc == 0 and lines[0] == (f"sweep {sid} results [test, last epoch] (mean ± std; width, seeds pooled; "
                                    "sample std, ddof 1)"), out
    header = next(line for line in lines if line.startswith("┃"))
    assert [c.strip() for c in header.strip("┃").split("┃")] == ["loss", "runs", "acc", "nc1"]
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in lines if line.startswith("│")]
    for row in rows:  # each cell: its mean to the decimal place of its std's second significant digit
        for cell in row[2:]:
            mean, std = cell.split("±")
            assert len(mean.split(".")[1]) == len(std.split(".")[1]) and len(std.replace(".", "").lstrip("0")) == 2, row
    assert all(row[1] == "4" for row in rows)  # 4 runs per loss, each measured


def test_results_format_is_chosen_per_column_from_its_magnitude() -> None:
    from service.cli_results import column_decimals, mean_std

    acc = [{"mean": 98.0, "std": 0.31}, {"mean": 97.84, "std": 0.9}]
    assert [mean_std(m, column_decimals(acc)) for m in acc] == ["98.0±0.3", "97.8±0.9"]
    wh_b = [{"mean": 1.2, "std": 0.19}, {"mean": 1.331, "std": 0.32}, {"mean": 0.595, "std": 0.141}]
    assert [mean_std(m, column_decimals(wh_b)) for m in wh_b] == ["1.200±0.190", "1.331±0.320", "0.595±0.141"]
    small = [{"mean": 0.0123, "std": 0.001}, {"mean": 1e-4, "std": None}]
    assert [mean_std(m, column_decimals(small)) for m in small] == ["0.0123±0.0010", "0.0001"]
    assert mean_std({"mean": 3e-9, "std": 1e-9}, column_decimals([{"mean": 3e-9}])) == "3.00e-09±1.00e-09"
    assert mean_std(None, 3) == "" and mean_std({"count": 0}, 3, "—") == "—"


def test_the_example_table_uses_the_same_formats_and_count_column_as_the_readme() -> None:
    from rich.console import Console

    from service.examples import RESULT_KEYS, print_results

    def agg(mean: float, std: float) -> dict:
        return {"mean": mean, "std": std, "count": 2}

    values = {"ce": [(98.2, 0.6), (0.11, 0.001), (0.361, 0.011), (0.368, 0.015), (1.371, 0.269)],  # README's
              "mse": [(95.1, 0.6), (0.345, 0.004), (0.331, 0.026), (0.133, 0.017), (0.315, 0.0)]}
    groups = [{"values": {"loss.name": loss, "model.width": 64}, "runs": 2,
               "metrics": {k: agg(*v) for k, v in zip(RESULT_KEYS, rows)}} for loss, rows in values.items()]

    class FakeClient:
        def results(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            return {"group_by": ["loss.name", "model.width"], "groups": groups}

        def iter_runs(self, **kwargs):  # noqa: ANN003, ANN202
            return iter([])

    console = Console(width=120, record=True)  # the width `ncsweep up` gives a pipe or a log
    print_results(FakeClient(), 1, console)
    text = console.export_text()
    assert text.splitlines()[0] == "sweep 1: test split, last epoch, mean ± std over seeds"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for line in ("│ ce              │ 64    │    2 │ 98.2±0.6 │ 0.110±0.001 │ 0.361±0.011 │ 0.368±0.015 │ "
                 "1.371±0.269 │", "┃ loss            ┃ width ┃ runs ┃      acc ┃         nc1 ┃       nc2_w ┃   "
                 "      nc3 ┃        wh_b ┃"):
        assert line in readme
    assert "│ ce   │ 64    │    2 │ 98.2±0.6 │ 0.110±0.001 │ 0.361±0.011 │ 0.368±0.015 │ 1.371±0.269 │" in text, text
    assert "│ mse  │ 64    │    2 │ 95.1±0.6 │ 0.345±0.004 │ 0.331±0.026 │ 0.133±0.017 │ 0.315±0.000 │" in text, text
    assert "┃ loss ┃ width ┃ runs ┃      acc ┃" in text


@SQLITE
def test_results_of_a_sweep_whose_runs_all_failed_says_so(live: str, db_url: str, capsys) -> None:  # noqa: ANN001
    sid, _ = seed_sweep(db_url, losses=("ce",), widths=(32,), seeds=(0,), statuses={0: "queued"})
    with session_scope(db_url) as s:
        s.query(Run).filter(Run.sweep_id == sid).update({"status": "failed", "error": "MissingDataError: no mnist"})
    rc, out, err = ncsweep(capsys, "results", sid)
    text = flat(err)
    assert rc == 0 and "yet" not in text, err
    assert f"no run of sweep {sid} has test metrics, and none is queued or running: of its 1 run(s), 1 failed " \
           "before measuring any" in text and f"ncsweep runs --sweep {sid}" in text, err
    queued, _ = seed_sweep(db_url, name="queued", statuses={i: "queued" for i in range(8)})
    rc, out, err = ncsweep(capsys, "results", queued)
    assert rc == 0 and f"no run of sweep {queued} has test metrics at their last epoch yet: 8 of its 8 run(s) are " \
                       "queued or running" in flat(err)


@SQLITE
def test_plot_margins_needs_a_run_of_the_sweep_and_diff_vs_needs_ref(live: str, db_url: str, capsys,  # noqa: ANN001
                                                                      tmp_path: Path) -> None:
    sid, runs = seed_sweep(db_url)
    rc, _, err = ncsweep(capsys, "plot", sid, "--kind", "margins", "--out", tmp_path / "m.png")
    assert rc == 2 and "--kind margins plots one run: expected --run RUN, a run of sweep" in flat(err), err
    assert not (tmp_path / "m.png").exists()
    rc, _, err = ncsweep(capsys, "plot", sid, "--kind", "heatmap", "--x", "model.width", "--y", "seed", "--mode",
                         "diff_vs", "--out", tmp_path / "d.png")
    text = flat(err)
    assert rc == 2 and "--ref is required with --mode diff_vs: expected AXIS:VALUE" in text and "None" not in text, err


@SQLITE
def test_a_mistyped_top_level_sweep_key_gets_a_suggestion(live: str, write_token: str, capsys,  # noqa: ANN001
                                                          tmp_path: Path) -> None:
    spec = tmp_path / "typo.yaml"
    spec.write_text("name: typo\nbase: {epochs: 1}\ngird: {loss.name: [ce, mse]}\n")
    rc, _, err = ncsweep(capsys, "submit", spec)
    text = flat(err)
    assert rc == 1 and "HTTP 422" in text and "did you mean 'grid'?" in text, err
    assert "expected one of name, base, grid, zip, seeds, max_runs" in text and "(field: gird)" in text
    resp = httpx.post(f"{live}/sweeps", json={"name": "t", "epochs": 3, "seeds": ["x"]},
                      headers={"Authorization": f"Bearer {write_token}"})  # beside the sweep's other problems
    items = {item["field"]: item["msg"] for item in resp.json()["detail"]}
    assert resp.status_code == 422 and set(items) == {"epochs", "seeds[0]"}, items
    assert items["epochs"].startswith("unknown field; a run's field goes under 'base'; expected one of name, base")


def test_the_example_reuse_line_speaks_of_the_cli_option_only(monkeypatch) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from rich.console import Console

    import service.client
    from service import examples

    class FakeClient:
        def __init__(self, *args) -> None:  # noqa: ANN002
            pass

        def sweeps(self, limit: int = 100) -> list:
            return [{"id": 1, "name": examples.load_example()["name"]}]

        def sweep(self, sweep_id: int) -> dict:
            return {"id": 1, "runs": 16, "counts": {"succeeded": 16}, "spec": examples.load_example()}

    monkeypatch.setattr(service.client, "Client", FakeClient)
    monkeypatch.setattr(examples, "follow", lambda *args: None)
    monkeypatch.setattr(examples, "print_results", lambda *args: None)
    console = Console(width=200, record=True)
    examples.run_example(SimpleNamespace(resolved_api_url=lambda: "http://x", token=""), console)
    text = console.export_text()
    assert "reusing example sweep 1 (finished); pass --fresh for a new one" in text and "fresh=True" not in text


@pytest.mark.parametrize("command", ["up", "worker", "submit", "results", "plot", "export", "runs", "validate"])
def test_help_speaks_of_options_and_variables_not_of_python_names(capsys, command: str) -> None:  # noqa: ANN001
    # `up --help` said "--home  state directory (default: settings.home)"
    rc = cli.main([command, "--help"])
    text = flat(capsys.readouterr().out)
    assert rc == 0 and "settings." not in text and "nc_core." not in text, text
    if command == "up":
        assert "NCSWEEP_HOME" in text.replace("│", "").replace(" ", ""), text
