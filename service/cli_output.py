"""`ncsweep export` and `ncsweep plot`: a sweep's metric rows to a CSV/Parquet file, its plots to a PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from service.cli_args import check_png_out, export_format
from service.cli_context import err, invocation, out

# service.cli registers these commands on its app, each in its place in the listing of `ncsweep --help`


def export(ctx: typer.Context, sweep: int = typer.Argument(..., help="sweep id"),
           format: Optional[str] = typer.Option(None, "--format", help="csv | parquet (default: from --out's suffix)"),
           out_path: Path = typer.Option(..., "--out", help="output file, .csv or .parquet")):
    """Every metric row of a sweep with its run's axes and seed, as CSV or Parquet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from service.export import export_sweep

    format = export_format(out_path, format)
    columns = (TextColumn("exporting runs"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:  # a pipe: no bar
        task = bar.add_task("export", total=None)
        rows = export_sweep(invocation(ctx).client, sweep, format, out_path,
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
    out.print(f"wrote {rows} rows to {out_path}", highlight=False)


def plot(ctx: typer.Context, sweep: int = typer.Argument(..., help="sweep id"),
         kind: str = typer.Option("dynamics", "--kind", help="dynamics | heatmap | margins"),
         out_path: Path = typer.Option(..., "--out", help="the .png file to write"),
         keys: Optional[str] = typer.Option(None, "--keys", help="dynamics: comma-separated metric keys (default "
                                            "nc1,nc2_w,nc3,wh_b,acc)"),
         split: Optional[str] = typer.Option(None, "--split", help="train | test (default: NC metrics on train, "
                                             "acc on both; a heatmap: test, train for a UFM sweep)"),
         x: Optional[str] = typer.Option(None, "--x", help="heatmap: the sweep axis along x, e.g. model.width"),
         y: Optional[str] = typer.Option(None, "--y", help="heatmap: the sweep axis along y, e.g. loss.name"),
         key: str = typer.Option("acc", "--key", help="heatmap: the metric key"),
         mode: str = typer.Option("value", "--mode", help="heatmap: value | diff_vs | variance"),
         ref: Optional[str] = typer.Option(None, "--ref", help="heatmap diff_vs: AXIS:VALUE"),
         run: Optional[int] = typer.Option(None, "--run", help="margins: the run (one of the sweep's)"),
         group_by: Optional[str] = typer.Option(None, "--group-by", help="dynamics: comma-separated axes, a line per "
                                                "value of them (mean ± std over the runs of the other axes and "
                                                "seeds); default a line per configuration, up to 20, else per value "
                                                "of the first axis"),
         filter: list[str] = typer.Option([], "--filter", help="dynamics: only runs with AXIS=VALUE, e.g. "
                                          "model.width=64; repeat an AXIS for any of several values"),
         log: Optional[str] = typer.Option(None, "--log", help="dynamics: comma-separated metric keys on a log y "
                                           "axis, e.g. nc1,nc2_w,nc3, or all")):
    """Save a PNG: NC dynamics, a grid heatmap, or a run's cosine margins."""
    from service.cli_views import parse_filter

    check_png_out(out_path)
    filters = ",".join("=".join(parse_filter(f)) for f in filter) or None
    if kind != "dynamics" and (group_by or filters or log):
        raise typer.BadParameter(f"--group-by, --filter and --log apply to --kind dynamics, got --kind {kind}",
                                 param_hint="--group-by" if group_by else "--filter" if filters else "--log")
    if kind == "margins" and run is None:
        raise typer.BadParameter(f"--kind margins plots one run: expected --run RUN, a run of sweep {sweep} "
                                 f"(`ncsweep runs --sweep {sweep}` lists them)", param_hint="--run")
    if kind == "heatmap" and mode == "diff_vs" and not ref:
        raise typer.BadParameter("--ref is required with --mode diff_vs: expected AXIS:VALUE, the runs every "
                                 "cell is compared with, e.g. --ref loss.name:ce", param_hint="--ref")
    client = invocation(ctx).client
    if kind == "margins":
        owner = client.run(run).get("sweep_id")
        if owner != sweep:
            raise typer.BadParameter(f"run {run} belongs to sweep {owner}, not to sweep {sweep}", param_hint="--run")
    if kind == "dynamics":
        png = client.png(f"/sweeps/{sweep}/plots/dynamics.png", keys=keys, split=split, group_by=group_by,
                         filter=filters, log=log)
    elif kind == "heatmap":
        if not x or not y:
            raise typer.BadParameter("heatmap needs --x AXIS and --y AXIS (e.g. --x model.width --y loss.name, "
                                     "or --y seed)")
        png = client.png(f"/sweeps/{sweep}/plots/heatmap.png", x=x, y=y, key=key, split=split,
                         mode=mode, ref=ref)
    elif kind == "margins":
        png = client.png(f"/runs/{run}/plots/margins.png")
    else:
        raise typer.BadParameter(f"expected dynamics, heatmap or margins, got {kind!r}", param_hint="--kind")
    out_path.write_bytes(png)
    note = png_note(png)
    if note is not None:  # a figure that only says why nothing was drawn
        err.print(f"note: nothing to draw: {note}", highlight=False)
    out.print(f"wrote {out_path} ({len(png)} bytes)", highlight=False)


def png_note(png: bytes) -> str | None:
    """The message a figure with nothing to draw carries in its PNG text (service.plots.NOTE_KEY), else None."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return image.info.get("ncsweep-note")  # service.plots.NOTE_KEY (that module loads matplotlib); a text
        # chunk before the image data: read without decoding the image
