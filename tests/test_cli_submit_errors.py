"""`ncsweep submit` prints every problem of a sweep file: each bad grid value with its field, all non-finite numbers."""
from __future__ import annotations

from pathlib import Path

from test_cli import SQLITE, live, ncsweep  # noqa: F401 - live is a fixture

BAD_VALUES = """
name: bad-values
base: {epochs: 2, data: {name: gaussian}}
grid:
  loss.name: [ce, bogus]
  optim.lr: [0.1, -1, -2]
"""


@SQLITE
def test_submit_prints_every_bad_grid_value(live: str, capsys, tmp_path: Path) -> None:  # noqa: ANN001, F811
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD_VALUES)
    rc, out, err = ncsweep(capsys, "submit", spec)
    text = " ".join(err.split())
    assert rc == 1 and "HTTP 422" in text and "3 problems" in text and "Traceback" not in text, err
    for field, says in (("grid.loss.name[1]", "loss.name='bogus'"), ("grid.optim.lr[1]", "optim.lr=-1"),
                        ("grid.optim.lr[2]", "optim.lr=-2")):
        assert f"{field}: " in text and says in text, err
    assert err.index("grid.loss.name[1]") < err.index("grid.optim.lr[1]") < err.index("grid.optim.lr[2]")


@SQLITE
def test_submit_names_every_non_finite_number(live: str, capsys, tmp_path: Path) -> None:  # noqa: ANN001, F811
    spec = tmp_path / "inf.yaml"
    spec.write_text("name: inf\nbase: {optim: {lr: .inf}}\ngrid: {optim.momentum: [0.9, .nan, -.inf]}\n")
    rc, out, err = ncsweep(capsys, "submit", spec)
    text = " ".join(err.split())
    assert rc == 2, err
    for field, got in (("base.optim.lr", "inf"), ("grid.optim.momentum[1]", "nan"), ("grid.optim.momentum[2]", "-inf")):
        assert f"{field}: expected a finite number, got {got}" in text, err


@SQLITE
def test_submit_names_the_axis_value_it_ran_once(live: str, capsys, tmp_path: Path) -> None:  # noqa: ANN001, F811
    # [32, 64, 32] said "2 runs, 1 duplicates dropped": which value, of which axis, the user had to find out
    spec = tmp_path / "dup.yaml"
    spec.write_text("name: dup\nbase: {epochs: 1, data: {name: gaussian}}\ngrid: {model.width: [32, 64, 32]}\n")
    rc, out, err = ncsweep(capsys, "submit", spec)
    assert rc == 0 and out.rstrip().endswith(": 2 runs, 1 duplicate dropped"), out
    assert "grid.model.width[2] repeats grid.model.width[0] (32): its runs were submitted once" in " ".join(err.split())
