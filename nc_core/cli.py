"""Single-run CLI: `python -m nc_core run spec.yaml [--set k=v] [--out m.json|.csv]` and `example-spec`."""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nc_core.spec import RunSpec
from nc_core.sweep import set_path, spec_hash

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Run one neural-collapse RunSpec locally.")
TABLE_KEYS = ("acc", "loss", "nc1", "nc2_w", "nc3", "wh_b")

EXAMPLE_SPEC = """\
# A RunSpec: one training run. Every field has a default; `python -m nc_core run this.yaml`.
kind: train            # train | ufm (unconstrained-feature model, needs a `ufm:` section)
seed: 0
epochs: 30
batch_size: 128
device: auto           # auto | cpu | cuda
precision: fp32        # fp32 | bf16 (autocast)
deterministic: true    # torch.use_deterministic_algorithms; resumed runs reproduce bitwise on CPU
data:
  name: digits         # mnist | fashion_mnist | cifar10 | cifar100 | svhn | digits | gaussian
  augment: none        # none | crop_flip (per batch, on the device)
  # per_class: 100     # first n samples of each class
  # imbalance_factor: 0.1
model:
  name: mlp            # mlp | resnet18 | resnet34 | resnet50 | wide_resnet50 | vgg11..vgg19
  width: 64            # MLP hidden units / channel multiplier
  depth: 3
  # feature_dim: 10    # d (default: the architecture's natural width)
head:
  name: learned        # learned | fixed_etf | implicit_etf
  bias: true
  depth_linear: 1      # deep-linear head: bias-free layers before the classifier
loss:
  name: ce             # ce | mse | rescaled_mse | focal | label_smoothing
optim:
  name: sgd            # sgd | adam | adamw | lbfgs
  lr: 0.05
  momentum: 0.9
  weight_decay: 5.0e-4
  sep_decay: false     # true: λ_W = weight_decay on the head only, λ_H = feature_decay on features
  feature_decay: 1.0e-4
  # grad_clip: 2.0
schedule:
  name: multistep      # constant | step | multistep | cosine
  milestones: [0.5, 0.75]   # epochs (>= 1) or fractions of training (< 1)
  gamma: 0.1
eval:
  every: 5             # NC metrics every n epochs (the last epoch always)
  splits: [train, test]
checkpoint:
  every: 5
  keep_last: 2         # null keeps every checkpoint (needed to validate old epochs later)
"""


class CLIReporter:
    """Reporter that drives a rich progress bar and collects metric rows. ``unit`` "iteration" (a UFM
    run, one step per iteration) shows one bar with the iteration rate instead of epoch and step bars."""

    def __init__(self, progress: Progress, unit: str = "epoch"):
        self.progress = progress
        self.unit = unit
        self.rows: list[dict[str, Any]] = []
        self.epochs = progress.add_task(f"{unit}s", total=None)
        self.steps = progress.add_task("steps", total=None, visible=unit == "epoch")
        self._last = 0.0

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        self.progress.update(self.epochs, total=total_epochs)
        self.progress.update(self.steps, total=steps_per_epoch)

    def on_progress(self, epoch: int, step: int, steps_per_epoch: int, samples_per_s: float) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and step != steps_per_epoch:
            return
        self._last = now
        self.progress.update(self.epochs, completed=epoch - 1 + step / steps_per_epoch)
        if self.unit == "epoch":
            self.progress.update(self.steps, completed=step, description=f"steps ({samples_per_s:,.0f} samples/s)")
        else:  # one step per iteration: the rate is iterations per second
            self.progress.update(self.epochs, description=f"{self.unit}s ({samples_per_s:,.0f}/s)")

    def on_metrics(self, epoch: int, split: str, metrics: dict[str, float]) -> None:
        self.rows += [{"epoch": epoch, "split": split, "key": k, "value": float(v)} for k, v in metrics.items()]

    def on_checkpoint(self, epoch: int, path: str, nbytes: int, sha256: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def _fail(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(f"[bold red]error[/]: {line}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def load_spec(path: Path, overrides: list[str], console: Console) -> RunSpec:
    """YAML file + `--set path=value` overrides → validated RunSpec; errors name the field, exit 2."""
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        _fail(console, [f"{path}: {exc}"])
    if not isinstance(tree, dict):
        _fail(console, [f"{path}: expected a mapping of RunSpec fields, got {type(tree).__name__}"])
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            _fail(console, [f"--set {item!r}: expected path=value, e.g. loss.name=mse"])
        set_path(tree, key.strip(), yaml.safe_load(raw))
    try:
        return RunSpec.model_validate(tree)
    except ValidationError as exc:
        _fail(console, [_describe(err) for err in exc.errors()])
    raise AssertionError("unreachable")


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(x) for x in err.get("loc", ()))
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if not loc or msg.split(":")[0].split("=")[0].startswith(loc):  # message already names the field
        return msg
    return f"{loc}: {msg}"


def _table(rows: list[dict[str, Any]], unit: str = "epoch") -> Table:
    """The run's metrics, one row per (epoch, split); ``unit`` names the epoch column (UFM runs report
    iterations in it)."""
    table = Table(title=f"metrics per {unit}")
    for col in (unit, "split", *TABLE_KEYS):
        table.add_column(col, justify="right")
    by: dict[tuple[int, str], dict[str, float]] = {}
    for r in rows:
        by.setdefault((r["epoch"], r["split"]), {})[r["key"]] = r["value"]
    for (epoch, split), m in sorted(by.items(), key=lambda item: (item[0][0], item[0][1] != "train")):
        if any(k in m for k in TABLE_KEYS):
            table.add_row(str(epoch), split, *(f"{m[k]:.4g}" if k in m else "" for k in TABLE_KEYS))
    return table


def write_metrics(rows: list[dict[str, Any]], out: Path) -> None:
    """JSON list of {epoch, split, key, value} (NaN/inf → null) or CSV with the same columns."""
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = [{**r, "value": r["value"] if math.isfinite(r["value"]) else None} for r in rows]
    if out.suffix.lower() == ".csv":
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["epoch", "split", "key", "value"])
            w.writeheader()
            w.writerows(clean)
    else:
        out.write_text(json.dumps(clean, indent=1))


@app.command()
def run(spec_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="RunSpec YAML file"),
        workdir: Optional[Path] = typer.Option(None, help="checkpoint directory (default runs/<spec hash>)"),
        out: Optional[Path] = typer.Option(None, help="write all metrics to this .json or .csv file"),
        set_: list[str] = typer.Option([], "--set", help="override a field: --set loss.name=mse"),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="resume from the newest checkpoint")) -> None:
    """Validate SPEC_FILE, train it (resuming from WORKDIR), print a metric table, optionally write metrics."""
    console = Console()
    spec = load_spec(spec_file, set_, console)
    workdir = workdir or Path("runs") / spec_hash(spec)[:12]
    from nc_core.train import TrainingDiverged, fit, run_spec

    unit = "iteration" if spec.kind == "ufm" else "epoch"
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    summary, diverged = None, None
    with Progress(*cols, console=console, transient=False) as progress:
        reporter = CLIReporter(progress, unit)
        try:
            summary = fit(spec, reporter, workdir=workdir, resume=resume) if spec.kind == "train" else \
                run_spec(spec, reporter, workdir=workdir)
        except TrainingDiverged as exc:
            diverged = exc
    if reporter.rows:  # a diverged run keeps the metrics of the epochs it evaluated
        console.print(_table(reporter.rows, unit))
    if summary is not None:
        done = summary["epochs_done"]
        stopped = " (stopped)" if summary.get("stopped") else ""
        console.print(f"{done} {unit}{'' if done == 1 else 's'} done{stopped}; checkpoints in {workdir}")
    if out is not None and (reporter.rows or diverged is None):
        write_metrics(reporter.rows, out)
        console.print(f"wrote {len(reporter.rows)} metric rows to {out}")
    if diverged is not None:
        console.print(f"[bold red]diverged[/]: {diverged}")
        raise typer.Exit(1)


@app.command("example-spec")
def example_spec() -> None:
    """Print a commented example RunSpec YAML."""
    typer.echo(EXAMPLE_SPEC, nl=False)


def main() -> None:
    app(prog_name="python -m nc_core")
