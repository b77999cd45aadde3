"""Single-run CLI: `python -m nc_core run spec.yaml [--set k=v] [--out m.json|.csv]` and `example-spec`."""
from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nc_core.cli_examples import EXAMPLE_SPEC, EXAMPLE_UFM_SPEC
from nc_core.cli_report import HISTORY, TABLE_KEYS, CLIReporter, nan_notes, table, write_metrics
from nc_core.spec import RunSpec, field_paths
from nc_core.sweep import error_field, set_path, spec_hash
from nc_core.cli_files import make_workdir, out_path_problem, read_yaml_file, remove_if_empty, yaml_kind

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Run one neural-collapse RunSpec locally.")

def _fail(console: Console, lines: list[str]) -> None:
    """Print each line as an error (to ``console``: the run's stderr console) and exit 2."""
    for line in lines:
        console.print(f"[bold red]error[/]: {line}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def load_spec(path: Path, overrides: list[str], console: Console) -> RunSpec:
    """YAML file + `--set path=value` overrides → validated RunSpec; errors name the field, exit 2."""
    tree: Any = None
    try:
        tree = read_yaml_file(path, "a RunSpec YAML file")
    except ValueError as exc:
        _fail(console, [str(exc)])
    if not isinstance(tree, dict):
        _fail(console, [f"{path}: expected a mapping of RunSpec fields (`python -m nc_core example-spec` prints a "
                        f"commented one), got {yaml_kind(tree)}"])
    if _is_sweep(tree):
        _fail(console, [f"{path} is a sweep file (name, base, grid, seeds), not a RunSpec: submit it with "
                        f"`ncsweep submit {path}`; to train one of its runs here, put its `base:` fields (and one "
                        "value of each axis) in a RunSpec file"])
    leaves = set(field_paths())
    for item in overrides:
        key, eq, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not eq or not key or not all(p.isidentifier() for p in parts):
            _fail(console, [f"--set {item!r}: expected path=value with a dotted field path, e.g. loss.name=mse"])
        leaf = next((".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in leaves), None)
        if leaf is not None:
            _fail(console, [f"--set {item!r}: {leaf} is a field with a value, not a section of fields; expected "
                            f"--set {leaf}=VALUE"])
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or exc).strip()
            _fail(console, [f"--set {item!r}: the value {raw!r} is not valid YAML ({problem}); "
                            "quote it or write it as in the spec file"])
        set_path(tree, key, value)
    try:
        spec = RunSpec.model_validate(tree)
    except ValidationError as exc:
        _fail(console, [_describe(err) for err in exc.errors()])
    return spec


def _check_unread(spec: RunSpec, workdir: Path, resume: bool, console: Console) -> None:
    """Refuse a field this run would never read (exit 2) — unless the run resumes a workdir that was started
    with it (a spec written before ncsweep refused such fields): then a warning, and the run goes on."""
    from nc_core.spec_rules import unread_fields

    lines = [f"{field}: {why}" for field, why in unread_fields(spec).items()]
    if lines and resume and any((workdir / "ckpt").glob("epoch_*.pt")):
        for line in lines:
            console.print(f"[yellow]warning[/]: {escape(line)} (kept: {escape(str(workdir))} holds this spec's run)",
                          highlight=False, soft_wrap=True)
    elif lines:
        _fail(console, lines)


def _is_sweep(tree: dict[str, Any]) -> bool:
    """A sweep file's shape (a `base:` or `grid:`, or several of the sweep's own keys) rather than a RunSpec's."""
    from nc_core.sweep import SweepSpec

    own = set(SweepSpec.model_fields) - set(RunSpec.model_fields)
    return "base" in tree or "grid" in tree or len(own & set(tree)) >= 2


def _first_evaluation(spec: RunSpec) -> int:
    """The first epoch (iteration, for a UFM run) after which the run measures its metrics."""
    if spec.kind == "ufm":
        return min(spec.ufm.eval_every, spec.ufm.iterations)
    from nc_core.spec_rules import schedule_tests

    is_eval, _ = schedule_tests(spec)
    return next(e for e in range(1, spec.epochs + 1) if is_eval(e))


def check_out_path(out: Path, console: Console) -> None:
    """Refuse an --out path that cannot be written, before any training: wrong suffix, a directory, no parent."""
    problem = out_path_problem(out, (".json", ".csv"))
    if problem:
        _fail(console, [f"--out {str(out)!r}: {problem}"])


def _describe(err: dict[str, Any]) -> str:
    """One pydantic error as 'field: message' (a message that names its field already is kept as it is)."""
    loc, msg = error_field(err)
    given = err.get("input")
    if isinstance(given, dict) and "got " not in msg and err.get("type") != "extra_forbidden":
        text = json.dumps(given, default=str)  # a section where a value belongs: say what it got
        msg += f", got {text if len(text) <= 80 else text[:77] + '...'}"
    if not loc or msg.split(":")[0].split("=")[0].startswith(loc):
        return msg
    return f"{loc}: {msg}"


@app.command()
def run(spec_file: Path = typer.Argument(..., exists=True, dir_okay=False, metavar="SPEC_FILE",
                                         help="RunSpec YAML file"),
        workdir: Optional[Path] = typer.Option(None, metavar="DIR", help="checkpoint directory (default "
                                               "runs/<spec hash>)"),
        out: Optional[Path] = typer.Option(None, metavar="FILE", help="write all metrics to this .json or .csv file"),
        set_: list[str] = typer.Option([], "--set", metavar="FIELD=VALUE",
                                       help="override a field: --set loss.name=mse (repeatable)"),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="resume from the newest checkpoint"),
        debug: bool = typer.Option(False, "--debug", help="show the traceback of an error")) -> None:
    """Validate SPEC_FILE, train it (resuming from WORKDIR), print a metric table, optionally write metrics."""
    console, err = Console(), Console(stderr=True)  # the table and progress; errors (a pipe keeps them apart)
    if not console.is_terminal:  # a log (SLURM, nohup): whole rows rather than 80 columns
        console.width = max(console.width, 120)
    if out is not None:
        check_out_path(out, err)
    spec = load_spec(spec_file, set_, err)
    workdir = workdir or Path("runs") / spec_hash(spec)[:12]
    _check_unread(spec, Path(workdir), resume, err)
    try:  # the directories this run creates: removed if it fails leaving them empty
        created = make_workdir(Path(workdir))
    except ValueError as exc:
        _fail(err, [str(exc)])
    from nc_core.train import TrainingDiverged, run_spec

    unit = "iteration" if spec.kind == "ufm" else "epoch"
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    summary, diverged, failed = None, None, None
    progress = Progress(*cols, console=console, transient=False)
    reporter = CLIReporter(progress, unit, Path(workdir) / HISTORY)
    try:  # the stop handlers stay until the outputs are written: a signal cannot cut --out
        with reporter.ctrl_c_stops():
            with progress:
                try:
                    summary = run_spec(spec, reporter, workdir=workdir, resume=resume)
                except TrainingDiverged as exc:
                    diverged = exc
                except Exception as exc:  # missing data, a workdir of another spec, no CUDA, ...: one line
                    remove_if_empty(created)
                    if debug:
                        raise
                    failed = exc
                reporter.finishing = True
                if not any(task.visible for task in progress.tasks):  # no bar was shown: no empty line for them
                    progress.live.transient = True
                    progress.live.stop()
                    progress.disable = True  # its own stop would end a log with an empty line
            _report(console, err, spec, Path(workdir), out, reporter, summary, diverged, failed, resume)
    except KeyboardInterrupt:  # a second Ctrl-C (SIGTERM, SIGHUP): one line, no traceback
        remove_if_empty(created)
        _aborted(err, Path(workdir), reporter, resume)


def _aborted(err: Console, workdir: Path, reporter: CLIReporter, resume: bool = True) -> None:
    """Say that the run was aborted and from which epoch the same command resumes it; exit 128 + the signal."""
    from nc_core.training.checkpoint import list_checkpoints

    sig = reporter.abort_signal or signal.SIGINT
    name = "a second Ctrl-C" if sig == signal.SIGINT else signal.Signals(sig).name
    unit = reporter.unit
    try:
        saved = max(list_checkpoints(workdir), default=0)
    except OSError:
        saved = 0
    again = "the same command" if resume else "the command without --no-resume"  # --no-resume deletes them
    where = (f"{again} resumes the run after {unit} {saved}, its newest checkpoint" if saved
             else f"no checkpoint yet: the same command starts the run from {unit} 1")
    try:
        err.print(f"[bold red]aborted[/] by {name}: {where}", highlight=False, soft_wrap=True)
    except OSError:  # no terminal left to say it to
        pass
    raise typer.Exit(128 + sig)  # as a shell reports the signal


def _report(console: Console, err: Console, spec: RunSpec, workdir: Path, out: Optional[Path],
            reporter: CLIReporter, summary: Optional[dict], diverged: Optional[Exception],
            failed: Optional[Exception], resume: bool = True) -> None:
    """After the run: the metric table, what was done, the --out file; exit 1 (diverged, failed) or 128 +
    the signal that stopped it."""
    unit = reporter.unit
    if summary is not None and not summary.get("stopped") and summary["epochs_done"] == reporter.start_epoch > 0:
        console.print(f"nothing to train: {workdir} already holds all {reporter.start_epoch} {unit}s "
                      "(--no-resume trains again)")
        if not reporter.rows:  # no history (trained elsewhere): the last evaluated metrics, from the checkpoint
            for split, m in summary.get("final", {}).items():
                reporter.on_metrics(reporter.start_epoch, split, m)
    evaluated = any(r["key"] in TABLE_KEYS for r in reporter.rows)
    if evaluated:  # a diverged run keeps the metrics of the epochs it evaluated
        console.print(table(reporter.rows, unit, width=console.width))
        for note in nan_notes(reporter.rows):  # a NaN in the table says why
            console.print(f"nan {note}", style="dim", highlight=False, markup=False)
    elif reporter.rows:  # trained, but stopped before its first evaluation
        first = _first_evaluation(spec)
        console.print(f"no NC metrics yet: the first evaluation is after {unit} {first} (eval schedule)")
    if summary is not None:
        done = summary["epochs_done"]
        stopped = " (stopped)" if summary.get("stopped") else ""
        console.print(f"{done} {unit}{'' if done == 1 else 's'} done{stopped}; checkpoints in {workdir}")
    if out is not None and not reporter.rows and diverged is None and failed is None:
        console.print(f"--out {str(out)!r} not written: no {unit} completed yet")  # an earlier file stays as it was
    elif out is not None and reporter.rows:
        try:
            with reporter.hold_signals():  # a signal now is handled once the file is in place
                write_metrics(reporter.rows, out)
        except OSError as exc:
            err.print(f"[bold red]error[/]: --out {str(out)!r}: could not write it ({exc.strerror or exc}); "
                          f"every metric row is also in {workdir / HISTORY}", highlight=False)
            raise typer.Exit(1)
        console.print(f"wrote {len(reporter.rows)} metric rows to {out}")
    if diverged is not None:
        err.print(f"[bold red]diverged[/]: {escape(str(diverged))}", soft_wrap=True)  # a log greps whole lines
        raise typer.Exit(1)
    if failed is not None:
        err.print(f"[bold red]error[/]: {escape(str(failed))}", highlight=False, soft_wrap=True)
        if not isinstance(failed, (ValueError, OSError)):  # not one of the errors a spec or a file explains
            err.print("this error was not expected; run the same command with --debug to see where it came from",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if summary is not None and summary.get("stopped"):
        console.print(f"{'the same command' if resume else 'the command without --no-resume'} resumes the run "
                      f"from its last completed {unit}")
        raise typer.Exit(128 + (reporter.stop_signal or signal.SIGINT))  # as a shell reports the signal


@app.command("example-spec")
def example_spec(kind: str = typer.Option("train", "--kind", help="train | ufm")) -> None:
    """Print a commented example RunSpec YAML (a training run, or with --kind ufm an unconstrained-feature model)."""
    if kind not in ("train", "ufm"):
        raise typer.BadParameter(f"expected train or ufm, got {kind!r}", param_hint="--kind")
    typer.echo(EXAMPLE_SPEC if kind == "train" else EXAMPLE_UFM_SPEC, nl=False)


def main() -> None:
    from nc_core.cli_help import plain_flags

    plain_flags()
    app(prog_name="python -m nc_core")
