"""What the README and docs state, checked against the code: every module has a docstring, each NCSWEEP_ variable
and its default is the settings object's, every command line shown parses, every endpoint named exists."""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from nc_core.settings import Settings, env_name, warn_unknown_variables

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", ROOT / "docs" / "DESIGN.md", ROOT / "docs" / "metrics.md", ROOT / "bench" / "RESULTS.md"]


def test_every_module_has_a_docstring():
    packages = ("nc_core", "service", "worker", "migrations", "tests", "bench", "scripts")
    missing = [str(p.relative_to(ROOT)) for package in packages for p in sorted((ROOT / package).rglob("*.py"))
               if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, missing


def _config_rows() -> dict[str, str]:
    """README's configuration table: variable → the default it states (the cells split at ', ' pair up)."""
    rows: dict[str, str] = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) != 3 or not cells[0].startswith("`NCSWEEP_"):
            continue
        names = re.findall(r"`(NCSWEEP_[A-Z_]+)`", cells[0])
        defaults = re.findall(r"`([^`]*)`", cells[1])
        assert len(names) == len(defaults) or "<" in cells[1], line
        rows.update(zip(names, defaults if len(defaults) == len(names) else ["<…>"] * len(names)))
    return rows


def _same_default(stated: str, actual: object) -> bool:
    if isinstance(actual, bool):
        return stated == str(actual).lower()
    if isinstance(actual, (int, float)):
        return float(stated) == float(actual)
    if isinstance(actual, Path):
        return Path(stated).expanduser() == actual
    if isinstance(actual, list):
        return [Path(p).expanduser() for p in json.loads(stated)] == actual
    return stated == actual


def test_the_readme_lists_every_setting_with_its_default(monkeypatch):  # noqa: ANN001
    for name in [n for n in os.environ if n.upper().startswith("NCSWEEP_")]:  # the defaults, not this shell's
        monkeypatch.delenv(name)
    rows, settings = _config_rows(), Settings()
    assert set(rows) == {env_name(field) for field in Settings.model_fields}
    wrong = {name: stated for name, stated in rows.items() if "<" not in stated
             and not _same_default(stated, getattr(settings, name.removeprefix("NCSWEEP_").lower()))}
    assert not wrong, wrong


def test_every_variable_the_docs_name_is_read():
    named = set().union(*(re.findall(r"NCSWEEP_[A-Z][A-Z0-9_]*[A-Z0-9]", p.read_text()) for p in DOCS))
    assert "NCSWEEP_MAX_EVENT_STREAMS" in named and warn_unknown_variables({n: "1" for n in named}) == []


def _command_lines(prefix: str) -> list[list[str]]:
    """Each `prefix ...` command of the README's bash blocks, as arguments (comments and `;` split off)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            for part in line.split("#", 1)[0].split(";"):
                part = part.strip()
                if part.startswith(prefix + " "):
                    found.append(shlex.split(part)[len(prefix.split()):])
    return found


def _parse(command: Any, args: list[str], parent: Any = None) -> None:
    """Parse ``args`` as the command line would (options, types, their callbacks) without running anything; a
    usage error raises. (Typer's click is its own copy: groups are told by their resolve_command.)"""
    ctx = command.make_context(command.name or "ncsweep", list(args), parent=parent)
    if hasattr(command, "resolve_command"):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        assert rest, f"{args}: a command group without its command"
        _, sub, more = command.resolve_command(ctx, rest)
        _parse(sub, more, ctx)


def test_every_ncsweep_command_in_the_readme_parses(tmp_path, monkeypatch):  # noqa: ANN001
    from service.cli import app

    lines = _command_lines("ncsweep")
    assert len(lines) >= 25 and ["watch", "2"] in lines
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text("name: s\n")  # the file the README writes before `ncsweep submit`
    root = typer.main.get_command(app)
    for args in lines:
        _parse(root, args)  # a usage error names the line's problem


def test_every_single_run_command_in_the_readme_parses(tmp_path, monkeypatch):  # noqa: ANN001
    from nc_core.cli import app

    lines = [args[:args.index(">")] if ">" in args else args for args in _command_lines(".venv/bin/python -m nc_core")]
    assert [args[0] for args in lines] == ["example-spec", "run"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text("epochs: 1\n")  # the file the first command writes
    root = typer.main.get_command(app)
    for args in lines:
        _parse(root, args)


def _endpoints(cell: str) -> list[tuple[str, str]]:
    """(method, path with {} for each parameter) of each route a cell of the README's endpoint table names;
    `/retry` or `margins.png` after a full path is that path's sibling, with its method."""
    out: list[tuple[str, str]] = []
    for item in re.findall(r"`([^`]*)`", cell):
        found = re.fullmatch(r"(?:(GET|POST|DELETE) )?([\w/{}.-]+)(?:[?\[].*)?", item)
        if found is None:  # a request body such as {"keep_last": N}
            continue
        method, path = found.group(1), re.sub(r"\{[^}]*\}", "{}", found.group(2))
        if out and method is None and (not path.startswith("/") or path.count("/") == 1):
            method, path = out[-1][0], out[-1][1].rsplit("/", 1)[0] + "/" + path.lstrip("/")
        out.append((method or "", path))
    return out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_endpoint_the_readme_names_exists(app_client):  # noqa: ANN001
    cells = [re.split(r"(?<!\\)\|", line)[1] for line in README.splitlines()  # a \| inside a cell is no border
             if re.match(r"\| `(GET|POST|DELETE|/)", line)]
    named = [e for cell in cells for e in _endpoints(cell)]
    assert app_client.get("/no/such/route").text == '{"detail":"Not Found"}'
    assert len(named) >= 25 and ("POST", "/sweeps/{}/retry") in named and ("", "/ui") in named
    for method, path in named:  # on an empty database: id 1 is no sweep or run, a bare POST a 422, nothing changes
        query = {"sweep_id": 1} if path == "/events" else None  # a 404, not a stream that stays open
        resp = app_client.request(method or "GET", path.replace("{}", "1"), params=query)
        assert resp.status_code != 405 and resp.text != '{"detail":"Not Found"}', (method, path, resp.status_code)
