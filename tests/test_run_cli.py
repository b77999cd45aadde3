"""`python -m nc_core run/example-spec` in-process with typer's CliRunner on a tiny digits MLP."""
from __future__ import annotations

import csv
import json
import signal

import pytest
import yaml
from typer.testing import CliRunner

from nc_core.cli import app
from nc_core.cli_report import CLIReporter
from nc_core.spec import RunSpec


pytestmark = pytest.mark.usefixtures("one_torch_thread")


runner = CliRunner()
TINY = {"epochs": 2, "device": "cpu", "data": {"name": "digits"}, "model": {"name": "mlp", "width": 32, "depth": 2},
        "eval": {"splits": ["train", "test"]}}


def write_spec(tmp_path, tree=TINY):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_run_writes_json_metrics_and_prints_table(tmp_path):
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "metrics per epoch" in res.output and "nc2_w" in res.output
    assert "2 epochs done" in res.output
    rows = json.loads(out.read_text())
    assert {(r["epoch"], r["split"]) for r in rows} == {(1, "train"), (1, "test"), (2, "train"), (2, "test")}
    assert all(set(r) == {"epoch", "split", "key", "value"} for r in rows)
    assert any(r["key"] == "nc1" for r in rows)
    assert (tmp_path / "w" / "ckpt" / "epoch_0002.pt").exists()


def test_run_with_set_override_and_csv(tmp_path):
    out = tmp_path / "m.csv"
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w"), "--out", str(out),
                              "--set", "loss.name=mse", "--set", "epochs=1"])
    assert res.exit_code == 0, res.output
    assert "1 epoch done" in res.output  # singular
    rows = list(csv.DictReader(out.open()))
    assert {r["epoch"] for r in rows} == {"1"} and {"epoch", "split", "key", "value", "reason"} == set(rows[0])


def test_a_nan_metric_says_why_in_the_table_and_the_files(tmp_path):
    # 10 training samples of 10 gaussian classes, every label redrawn: some class has none, so its mean (and nc1)
    # is undefined
    tree = {**TINY, "epochs": 1, "data": {"name": "gaussian", "train_size": 10, "test_size": 50, "label_noise": 1.0}}
    for out in (tmp_path / "m.csv", tmp_path / "m.json"):
        res = runner.invoke(app, ["run", str(write_spec(tmp_path, tree)), "--workdir", str(tmp_path / out.suffix[1:]),
                                  "--out", str(out)])
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.split())
        assert "nan nc1 [train]: class(es) [" in text and "have no sample in this split (epoch 1)" in text, text
        rows = list(csv.DictReader(out.open())) if out.suffix == ".csv" else json.loads(out.read_text())
        nc1 = next(r for r in rows if r["key"] == "nc1" and r["split"] == "train")
        assert nc1["value"] in ("", None) and "have no sample in this split" in nc1["reason"]
        test_nc1 = next(r for r in rows if r["key"] == "nc1" and r["split"] == "test")
        assert test_nc1["value"] not in ("", None) and not test_nc1.get("reason")


def test_invalid_spec_names_the_field_and_exits_2(tmp_path):
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--set", "loss.name=bogus"])
    assert res.exit_code == 2
    assert "loss.name" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--set", "optim.lr=-1"])
    assert res.exit_code == 2 and "optim.lr" in res.output
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--set", "nonsense"])
    assert res.exit_code == 2 and "path=value" in res.output


def test_example_spec_is_a_valid_runspec():
    res = runner.invoke(app, ["example-spec"])
    assert res.exit_code == 0
    assert "#" in res.output  # commented
    spec = RunSpec.model_validate(yaml.safe_load(res.output))
    assert spec.kind == "train"
    res = runner.invoke(app, ["example-spec", "--kind", "ufm"])
    spec = RunSpec.model_validate(yaml.safe_load(res.output))  # a UFM template that validates as printed
    assert res.exit_code == 0 and spec.kind == "ufm" and spec.ufm.class_counts == [100, 100, 100, 100]
    res = runner.invoke(app, ["example-spec", "--kind", "ufn"])
    assert res.exit_code == 2 and "expected train or ufm, got 'ufn'" in " ".join(res.output.split())


def test_ufm_run_reports_iterations(tmp_path):
    tree = {"kind": "ufm", "device": "cpu", "ufm": {"class_counts": [20, 20, 20], "dim": 8, "iterations": 40,
                                                    "eval_every": 20}}
    res = runner.invoke(app, ["run", str(write_spec(tmp_path, tree)), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    assert "metrics per iteration" in res.output and "40 iterations done" in res.output
    assert "metrics per epoch" not in res.output


def test_ufm_run_resumes_refuses_another_spec_and_restarts_with_no_resume(tmp_path):
    tree = {"kind": "ufm", "device": "cpu", "ufm": {"class_counts": [20, 20, 20], "dim": 8, "iterations": 40,
                                                    "eval_every": 20}}
    spec, work = write_spec(tmp_path, tree), ["--workdir", str(tmp_path / "w")]
    assert runner.invoke(app, ["run", str(spec), *work]).exit_code == 0
    again = runner.invoke(app, ["run", str(spec), *work])
    assert again.exit_code == 0 and "nothing to train" in again.output and "all 40 iterations" in again.output, \
        again.output
    other = runner.invoke(app, ["run", str(spec), *work, "--set", "ufm.lr=0.05"])
    assert other.exit_code == 1 and "different spec" in other.output and "--no-resume" in other.output, other.output
    fresh = runner.invoke(app, ["run", str(spec), *work, "--set", "ufm.lr=0.05", "--no-resume"])
    assert fresh.exit_code == 0 and "40 iterations done" in fresh.output, fresh.output


def test_diverged_run_keeps_its_evaluated_epochs_and_exits_1(tmp_path):
    """Epoch 1 trains at lr 0.05 and is evaluated; the step schedule then multiplies lr by 1e8."""
    out = tmp_path / "m.json"
    tree = {**TINY, "epochs": 3, "loss": {"name": "mse"}, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.0},
            "schedule": {"name": "step", "step_size": 1, "gamma": 1e8}}
    res = runner.invoke(app, ["run", str(write_spec(tmp_path, tree)), "--workdir", str(tmp_path / "w"),
                              "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "diverged" in res.output and "epoch 2" in res.output and "Traceback" not in res.output
    rows = json.loads(out.read_text())
    assert {r["epoch"] for r in rows} == {1} and any(r["key"] == "nc1" for r in rows)


def _ctrl_c_after_epoch(monkeypatch, epoch: int, times: int = 1, sig: int = signal.SIGINT) -> None:
    """Press Ctrl-C (or send ``sig``) ``times`` times once the metrics of ``epoch`` are reported (a real
    signal to this process)."""
    real = CLIReporter.on_metrics

    def on_metrics(self, e, split, metrics):  # noqa: ANN001, ANN202
        real(self, e, split, metrics)
        if e == epoch and split == "train":
            for _ in range(times):
                signal.raise_signal(sig)

    monkeypatch.setattr(CLIReporter, "on_metrics", on_metrics)


def test_ctrl_c_stops_and_the_same_command_resumes_with_the_whole_history(tmp_path, monkeypatch):
    out = tmp_path / "m.json"
    tree = {**TINY, "epochs": 4, "eval": {"every": 1, "splits": ["train", "test"]}, "checkpoint": {"every": 1}}
    args = ["run", str(write_spec(tmp_path, tree)), "--workdir", str(tmp_path / "w"), "--out", str(out)]
    with monkeypatch.context() as m:
        _ctrl_c_after_epoch(m, 2)
        res = runner.invoke(app, args)
    assert res.exit_code == 130, res.output
    assert "2 epochs done (stopped)" in res.output and "resumes" in res.output
    assert {r["epoch"] for r in json.loads(out.read_text())} == {1, 2}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "resuming after epoch 2 of 4" in res.output and "4 epochs done" in res.output
    rows = json.loads(out.read_text())
    assert sorted({r["epoch"] for r in rows}) == [1, 2, 3, 4]
    assert len(rows) == len({(r["epoch"], r["split"], r["key"]) for r in rows})  # no row twice
    res = runner.invoke(app, args)  # finished: nothing to train, the table and --out from the history
    assert res.exit_code == 0 and "nothing to train" in res.output
    assert json.loads(out.read_text()) == rows


def test_a_stop_before_the_first_evaluation_says_when_it_comes_and_keeps_an_earlier_out_file(tmp_path, monkeypatch):
    out = tmp_path / "m.csv"
    out.write_text("epoch,split,key,value,reason\n1,train,acc,99.0,\n")  # what an earlier run wrote
    tree = {**TINY, "epochs": 4, "eval": {"every": 3, "splits": ["train"]}}
    args = ["run", str(write_spec(tmp_path, tree)), "--workdir", str(tmp_path / "w"), "--out", str(out)]
    with monkeypatch.context() as m:
        real = CLIReporter.on_start
        m.setattr(CLIReporter, "on_start", lambda self, *a: (real(self, *a), signal.raise_signal(signal.SIGINT)))
        res = runner.invoke(app, args)
    assert res.exit_code == 130 and "0 epochs done (stopped)" in res.output, res.output
    assert "not written: no epoch completed yet" in res.output and "99.0" in out.read_text()  # not emptied
    with monkeypatch.context() as m:
        _ctrl_c_after_epoch(m, 1)
        res = runner.invoke(app, args)
    assert res.exit_code == 130 and "metrics per epoch" not in res.output, res.output  # no empty table
    assert "no NC metrics yet: the first evaluation is after epoch 3" in " ".join(res.output.split())


def test_second_ctrl_c_aborts(tmp_path, monkeypatch):
    _ctrl_c_after_epoch(monkeypatch, 1, times=2)
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 130 and "2 epochs done" not in res.output and "Traceback" not in res.output
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("name", ["m.parquet", "m", "outdir"])
def test_out_must_be_a_json_or_csv_file_and_is_checked_before_training(tmp_path, name):
    (tmp_path / "outdir.json").mkdir()
    out = tmp_path / ("outdir.json" if name == "outdir" else name)
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w"), "--out", str(out)])
    assert res.exit_code == 2 and "--out" in res.output and ".json or .csv" in res.output, res.output
    assert not (tmp_path / "w").exists()  # nothing trained


@pytest.mark.parametrize("where", ["missing_dir", "file_as_dir"])
def test_out_in_a_directory_that_does_not_exist_is_refused_before_training(tmp_path, where):
    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / ("nowhere" if where == "missing_dir" else "file") / "m.json"
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w"), "--out", str(out)])
    assert res.exit_code == 2 and "does not exist; create it first" in res.output, res.output
    assert not (tmp_path / "w").exists() and not (tmp_path / "nowhere").exists()


def test_an_unwritable_out_directory_is_refused_before_training_even_for_root(tmp_path):
    # /proc takes no new files whoever asks (os.access would pass root); --workdir: a --workdir file is refused too
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w"),
                              "--out", "/proc/ncsweep-m.json"])
    assert res.exit_code == 2 and "cannot write in '/proc'" in " ".join(res.output.split()), res.output
    assert not (tmp_path / "w").exists()
    (tmp_path / "afile").write_text("")
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "afile")])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "workdir: expected a directory for the checkpoints, got a file" in text, text


def test_unwritable_out_says_where_the_metrics_are(tmp_path, monkeypatch):
    import nc_core.cli as cli

    def disk_full(rows, out):  # noqa: ANN001 - the write fails after training (disk full, NFS gone, ...)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "write_metrics", disk_full)
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w"),
                              "--out", str(tmp_path / "m.json")])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "could not write" in text and "metrics.jsonl" in text, res.output
    assert "No space left" in text
    assert "Traceback" not in res.output and (tmp_path / "w" / "metrics.jsonl").stat().st_size > 0


@pytest.mark.parametrize("args, expected", [
    (["--set", "epochs=[1"], "--set 'epochs=[1': the value '[1' is not valid YAML"),
    (["--set", "epochs=@"], "is not valid YAML"),
    (["--set", ".=3"], "expected path=value with a dotted field path"),
    (["--set", "epochs=true"], "epochs: expected a number, got the boolean true"),
    (["--set", "optim.lr=false"], "optim.lr: expected a number, got the boolean false"),
    (["--set", "model.name=resnet18", "--set", "model.width=64"], "model.width: for resnet18 it is a channel"),
    (["--set", "model.widht=64"], "model.widht: unknown field; did you mean 'width'? expected one of batch_norm, "
                                  "depth, feature_dim, name, stem, temperature, width"),
    (["--set", "loss.name=cee"], "loss.name: Input should be 'ce', 'mse', 'rescaled_mse', 'focal' or "
                                 "'label_smoothing', got 'cee'"),
    (["--set", "eval=[1, 2]"], "eval: Input should be a valid dictionary, got [1, 2]"),
    (["--set", "eval.splits=test"], "eval.splits: Input should be a valid list, got 'test'"),
])
def test_bad_overrides_are_one_line_errors_naming_the_field(tmp_path, args, expected):
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w"), *args])
    assert res.exit_code == 2 and expected in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)


@pytest.mark.parametrize("content, expected", [
    (b"\xff\xfeepochs: 2\n", "not UTF-8 text"), (b"epochs: 2\nseed: 1\nepochs: 3\n", "duplicate key 'epochs'"),
    (b"", "got an empty document"), (b"# epochs: 5\n\n", "got an empty document"),  # not a silent default run
    (b"- epochs: 2\n", "got a list"), (b"epochs: [2\nseed: 1\n", 'spec.yaml", line 1')])  # the file, by name
def test_unreadable_or_ambiguous_spec_files_are_refused(tmp_path, content, expected):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    res = runner.invoke(app, ["run", str(path), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 2 and expected in res.output and str(path) in " ".join(res.output.split()), res.output
    assert not (tmp_path / "w").exists()


def test_missing_data_is_one_error_naming_where_it_looked(tmp_path):
    tree = {**TINY, "data": {"name": "mnist", "root": str(tmp_path / "no[bold]data")}}  # brackets: text, not markup
    res = runner.invoke(app, ["run", str(write_spec(tmp_path, tree)), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 1 and "error" in res.output and "no[bold]data/MNIST" in res.output, res.output
    assert len([line for line in res.output.splitlines() if line.startswith("error:")]) == 1
    assert "download" in res.output and "Traceback" not in res.output
    assert "0/?" not in res.output and "epochs" not in res.output  # no empty progress bars before the error
    assert res.stdout == "" and res.stderr.startswith("error: dataset 'mnist'")  # not even an empty line


def test_errors_go_to_stderr_and_the_table_to_stdout(tmp_path):
    res = runner.invoke(app, ["run", str(write_spec(tmp_path, {**TINY, "epochs": 0}))])
    assert res.exit_code == 2 and res.stdout == "" and res.stderr.startswith("error: epochs:"), res.output
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 0 and res.stderr == "" and "2 epochs done" in res.stdout, res.output


def test_a_workdir_of_another_spec_is_refused_without_a_traceback(tmp_path):
    args = ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w")]
    assert runner.invoke(app, args).exit_code == 0
    other = write_spec(tmp_path, {**TINY, "model": {"name": "mlp", "width": 16, "depth": 2}})
    res = runner.invoke(app, ["run", str(other), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 1 and "different spec" in res.output and "--no-resume" in res.output, res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["run", str(other), "--workdir", str(tmp_path / "w"), "--debug"])
    assert isinstance(res.exception, ValueError)  # --debug lets the error (and its traceback) through


def test_sigterm_stops_like_ctrl_c(tmp_path, monkeypatch):
    _ctrl_c_after_epoch(monkeypatch, 1, sig=signal.SIGTERM)  # a scheduler's preemption notice
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 128 + signal.SIGTERM and "SIGTERM: stopping" in res.output, res.output
    assert "1 epoch done (stopped)" in res.output and (tmp_path / "w" / "ckpt" / "epoch_0001.pt").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_metric_table_keeps_small_values_whole_in_80_columns():
    from rich.console import Console

    from nc_core.cli_report import table

    values = {"acc": 99.99, "loss": -1.23456e-05, "nc1": 1.23456e-05, "nc2_w": 0.123456, "nc3": 1.2345e-7,
              "wh_b": 123.456}
    rows = [{"epoch": e, "split": s, "key": k, "value": v} for e in (1, 300) for s in ("train", "test")
            for k, v in values.items()]
    for width, shown in ((80, ("99.99", "-1.23e-05", "1.23e-07")), (120, ("99.99", "-1.235e-05", "1.235e-07"))):
        console = Console(width=width, record=True)
        console.print(table(rows, "iteration", width=width))
        text = console.export_text()
        assert "…" not in text and all(text.count(v) == 4 for v in shown), text
        assert max(map(len, text.splitlines())) <= width


def _commands(group, prefix=()):  # noqa: ANN001, ANN202 - click objects
    """(path, click command) of every leaf command under a click group."""
    for name, cmd in getattr(group, "commands", {}).items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


@pytest.mark.parametrize("which", ["nc_core", "ncsweep"])
def test_every_option_of_both_clis_says_what_it_does_and_flags_show_no_type(which):
    import typer

    from nc_core.cli_help import plain_flags
    from service.cli import app as service_app

    cli_app = app if which == "nc_core" else service_app
    group = typer.main.get_command(cli_app)
    undocumented = [f"{' '.join(path)} {p.opts[0]}" for path, cmd in _commands(group) for p in cmd.params
                    if p.param_type_name == "option" and not (p.help or "").strip()]
    assert undocumented == []
    plain_flags()
    for path, _ in _commands(group):
        res = CliRunner().invoke(cli_app, [*path, "--help"], terminal_width=140)
        assert res.exit_code == 0 and "<bool>" not in res.output, (path, res.output)


@pytest.mark.parametrize("setup", ["missing_data", "no_cuda"])
def test_a_run_that_fails_before_training_leaves_no_empty_workdir(tmp_path, monkeypatch, setup):
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tree = {**TINY, "data": {"name": "mnist", "root": str(tmp_path / "nodata")}} if setup == "missing_data" else \
        {**TINY, "device": "cuda"}
    res = runner.invoke(app, ["run", str(write_spec(tmp_path, tree))])  # the default workdir: runs/<spec hash>
    assert res.exit_code == 1 and res.stderr.startswith("error: "), res.output
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))
    (tmp_path / "mine").mkdir()  # a workdir that was there before stays, even empty
    res = runner.invoke(app, ["run", str(write_spec(tmp_path, tree)), "--workdir", str(tmp_path / "mine")])
    assert res.exit_code == 1 and (tmp_path / "mine").is_dir()


def test_a_failure_after_checkpoints_keeps_the_workdir(tmp_path, monkeypatch):
    args = ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w")]
    _ctrl_c_after_epoch(monkeypatch, 1)
    assert runner.invoke(app, args).exit_code == 128 + signal.SIGINT
    monkeypatch.undo()
    other = write_spec(tmp_path, {**TINY, "seed": 5})  # refused: the workdir holds another spec's checkpoints
    res = runner.invoke(app, ["run", str(other), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 1 and (tmp_path / "w" / "ckpt" / "epoch_0001.pt").exists()
    from nc_core.cli_files import remove_if_empty

    remove_if_empty([tmp_path / "w"])  # even when asked to: it holds checkpoints and metrics
    assert (tmp_path / "w" / "ckpt" / "epoch_0001.pt").exists() and (tmp_path / "w" / "metrics.jsonl").exists()


def test_messages_speak_of_the_command_line_not_of_python(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = runner.invoke(app, ["run", str(write_spec(tmp_path, {**TINY, "device": "cuda"})), "--workdir",
                              str(tmp_path / "w")])
    text = " ".join(res.stderr.split())
    assert res.exit_code == 1 and "device: cuda was asked for, but this machine has no GPU" in text, text
    assert "RuntimeError" not in text and "is_available" not in text and "--debug" not in text
    args = ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w2")]
    _ctrl_c_after_epoch(monkeypatch, 1)
    runner.invoke(app, args)
    monkeypatch.undo()
    res = runner.invoke(app, ["run", str(write_spec(tmp_path, {**TINY, "seed": 5})), "--workdir", str(tmp_path / "w2")])
    text = " ".join(res.output.split())
    assert "use another --workdir, or --no-resume to DELETE them" in text and "resume=False" not in text, text


@pytest.mark.parametrize("where, expected", [
    ("{tmp}/file/w", "--workdir '{tmp}/file/w': cannot create the directory (Not a directory)"),
    ("/proc/ncsweep-w", "--workdir '/proc/ncsweep-w': cannot create the directory (No such file or directory)")])
def test_a_workdir_that_cannot_be_one_is_named_before_training(tmp_path, where, expected):
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", where.format(tmp=tmp_path)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and expected.format(tmp=tmp_path) in text and "Errno" not in text, text


def test_a_set_path_below_a_value_field_says_so_and_a_section_given_for_a_value_is_echoed(tmp_path):
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--set", "model.width.x=3"])
    assert res.exit_code == 2 and "--set 'model.width.x=3': model.width is a field with a value, not a section of " \
                                  "fields; expected --set model.width=VALUE" in " ".join(res.output.split()), res.output
    res = runner.invoke(app, ["run", str(write_spec(tmp_path, {**TINY, "model": {"width": {"x": 3}}}))])
    assert res.exit_code == 2 and 'model.width: Input should be a valid number, got {"x": 3}' in res.output, res.output


def test_a_sweep_file_is_named_as_one_and_sent_to_ncsweep_submit(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: s\nbase: {epochs: 1}\ngrid: {loss.name: [ce, mse]}\nseeds: [0, 1]\n")
    res = runner.invoke(app, ["run", str(path), "--workdir", str(tmp_path / "w")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and f"{path} is a sweep file (name, base, grid, seeds), not a RunSpec: submit it " \
                                  f"with `ncsweep submit {path}`" in text, text
    assert "unknown field" not in text and text.count("error:") == 1
    res = runner.invoke(app, ["run", str(write_spec(tmp_path, {**TINY, "seeds": [0, 1]}))])  # a RunSpec's typo
    assert res.exit_code == 2 and "seeds: unknown field; did you mean 'seed'?" in res.output
