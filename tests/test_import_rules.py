"""Import rules: the API never imports torch; training/metric code never imports the web/DB stack."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_SIDE = ["service.app", "service.routers.sweeps", "service.routers.runs", "service.routers.metrics",
            "service.auth", "service.enqueue", "nc_core.spec", "nc_core.sweep", "nc_core.settings", "nc_core.db",
            "nc_core.db.models", "nc_core.db.sweeps_repo", "nc_core.db.migrate"]
TRAINING_SIDE = ["nc_core.metrics", "nc_core.train", "nc_core.ufm", "nc_core.models", "nc_core.data",
                 "nc_core.heads", "nc_core.losses", "nc_core.etf"]


def _loaded_after(modules: list[str], banned: list[str]) -> dict[str, list[str]]:
    """Import each module in turn in one fresh interpreter; report banned modules newly loaded by each."""
    code = ("import sys, importlib, json\nout = {}\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            f"    out[m] = [b for b in {banned!r} if b in sys.modules]\n"
            "print(json.dumps(out))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_api_side_never_imports_torch():
    loaded = _loaded_after(API_SIDE, ["torch", "torchvision"])
    assert {m: b for m, b in loaded.items() if b} == {}, "first module that pulled torch in is the culprit"


def test_service_app_builds_without_torch():
    code = ("import sys; from nc_core.settings import Settings; from service.app import create_app; "
            "create_app(Settings(database_url='sqlite://')); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]


def test_training_side_never_imports_web_or_db():
    present = [m for m in TRAINING_SIDE if importlib.util.find_spec(m) is not None]
    loaded = _loaded_after(present, ["sqlalchemy", "celery", "fastapi", "starlette", "kombu"])
    assert {m: b for m, b in loaded.items() if b} == {}, "first module that pulled them in is the culprit"
