"""docker-compose.yml and Dockerfile checked by parsing: services, healthchecks, ordering, GPU reservation,
and every command, module and console script they name exists in this project."""
from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPENDENCIES = {re.split(r"[=<>\[ ]", d, maxsplit=1)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
# console scripts of dependencies the compose file may call
THIRD_PARTY = {"celery": "celery", "uvicorn": "uvicorn", "alembic": "alembic"}
IMAGE_TOOLS = {"redis-server", "redis-cli", "pg_isready", "CMD-SHELL"}  # inside the official images


def test_services_present():
    assert {"postgres", "redis", "migrate", "api", "worker-gpu0", "beat"} <= set(SERVICES)


def test_healthchecks():
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])
    assert SERVICES["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"] or "ping" in SERVICES["redis"]["healthcheck"]["test"]
    assert "--appendonly" in SERVICES["redis"]["command"] and "yes" in SERVICES["redis"]["command"]
    assert "/healthz" in " ".join(SERVICES["api"]["healthcheck"]["test"])


def test_depends_on_conditions():
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["restart"] == "no"
    for name in ("api", "worker-gpu0", "beat"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name


def test_one_worker_per_gpu_with_nvidia_reservation():
    workers = {n: s for n, s in SERVICES.items() if n.startswith("worker-gpu")}
    assert len(workers) >= 2
    for name, svc in workers.items():
        index = name.removeprefix("worker-gpu")
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["device_ids"] == [index]
        cmd = svc["command"]
        assert cmd[cmd.index("-c") + 1] == "1" and cmd[cmd.index("-P") + 1] == "prefork"
        assert cmd[cmd.index("--hostname") + 1] == f"ncsweep-gpu{index}@%h"


def _commands():
    for name, svc in SERVICES.items():
        for key in ("command",):
            if key in svc:
                yield name, svc[key]
        test = svc.get("healthcheck", {}).get("test")
        if test:
            yield name, test[1:] if test[0] in ("CMD", "CMD-SHELL") else test


def _module_exists(module: str) -> bool:
    top = module.split(".")[0]
    if (ROOT / top).is_dir() or (ROOT / f"{top}.py").is_file():
        path = ROOT / Path(*module.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("service,command", list(_commands()), ids=lambda x: x if isinstance(x, str) else "")
def test_named_commands_modules_and_scripts_exist(service, command):
    exe = command[0].split()[0]
    scripts = PYPROJECT["project"].get("scripts", {})
    if exe in IMAGE_TOOLS or exe.startswith("pg_isready"):
        return
    if exe == "python":
        if "-m" in command:
            assert _module_exists(command[command.index("-m") + 1])
        return
    if exe in scripts:
        module = scripts[exe].split(":")[0]
        assert _module_exists(module), f"console script {exe} -> {module}"
        return
    assert exe in THIRD_PARTY and THIRD_PARTY[exe] in DEPENDENCIES, f"{service}: unknown executable {exe!r}"
    if exe == "celery":
        app = command[command.index("-A") + 1]
        assert _module_exists(app), app
        queue = command[command.index("-Q") + 1]
        assert queue in ("celery", "ncsweep.control")
    if exe == "uvicorn":
        target = next(a for a in command[1:] if ":" in a)
        module, attr = target.split(":")
        assert _module_exists(module) and f"def {attr}(" in (ROOT / (module.replace(".", "/") + ".py")).read_text()
    if exe == "alembic":
        ini = (ROOT / "alembic.ini").read_text()
        location = re.search(r"^script_location\s*=\s*(\S+)", ini, re.M).group(1)
        assert (ROOT / location / "env.py").is_file() and list((ROOT / location / "versions").glob("*.py"))


def test_beat_schedule_and_control_queue():
    from worker.celery_app import CONTROL_QUEUE, make_celery
    from nc_core.settings import Settings

    app = make_celery(Settings())
    entry = next(iter(app.conf.beat_schedule.values()))
    assert entry["task"] == "ncsweep.reconcile" and entry["options"]["queue"] == CONTROL_QUEUE
    assert SERVICES["beat"]["command"][SERVICES["beat"]["command"].index("-Q") + 1] == CONTROL_QUEUE
    assert "--beat" in SERVICES["beat"]["command"]


def test_dockerfile_torch_variant_and_project_install():
    text = (ROOT / "Dockerfile").read_text()
    assert text.splitlines()[[i for i, l in enumerate(text.splitlines()) if l.startswith("FROM")][0]] == "FROM python:3.11-slim"
    assert "ARG TORCH_VARIANT=cpu" in text
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in text
    assert "pip install ." in text
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        for part in copied.split():
            assert (ROOT / part).exists(), part
    for line in re.findall(r"^COPY (.+?)\s+\S+$", text, re.M):
        for part in line.split():
            assert (ROOT / part).exists(), part
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_app_env_points_at_compose_services():
    env = SERVICES["api"]["environment"]
    assert "@postgres:5432/" in env["NCSWEEP_DATABASE_URL"] and "@redis:6379/" in env["NCSWEEP_BROKER_URL"]
    assert SERVICES["beat"]["environment"]["NCSWEEP_CONTROL"] == "1"


def test_the_containers_settings_allow_their_own_data_root_and_read_their_own_gpu(monkeypatch):
    # a spec's data.root under the datasets volume must pass the data-roots check; NVML inside a worker's
    # container sees only its reserved GPU, as index 0; the volumes' mount points exist for the non-root user
    from nc_core.settings import Settings

    env = SERVICES["api"]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    assert any(settings.data_root == root or root in settings.data_root.parents for root in settings.data_roots)
    for name, svc in SERVICES.items():
        if name.startswith("worker-gpu"):
            assert svc["environment"]["NCSWEEP_GPU_INDEX"] == "0", name
    mounts = {v.split(":")[1] for v in SERVICES["api"]["volumes"]}
    text = (ROOT / "Dockerfile").read_text()
    assert all(m in text.split("mkdir -p", 1)[1].split("&&", 1)[0] for m in mounts), mounts


def test_redis_needs_the_password_the_apps_and_its_healthcheck_use():
    redis, env = SERVICES["redis"], SERVICES["api"]["environment"]
    password = redis["command"][redis["command"].index("--requirepass") + 1]
    assert password == "${REDIS_PASSWORD:-ncsweep}" and redis["environment"]["REDISCLI_AUTH"] == password
    assert env["NCSWEEP_BROKER_URL"] == f"redis://:{password}@redis:6379/0"
    from kombu.utils.url import url_to_parts  # the broker URL as Celery reads it, once compose substitutes it

    assert url_to_parts("redis://:s3cret@redis:6379/0")[:5] == ("redis", "redis", 6379, None, "s3cret")


def test_the_remote_override_publishes_the_stores_only_with_passwords_set():
    remote = yaml.safe_load((ROOT / "docker-compose.remote.yml").read_text())["services"]
    assert remote["postgres"]["ports"] == ["5432:5432"] and remote["redis"]["ports"] == ["6379:6379"]
    assert remote["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    command = remote["redis"]["command"]
    assert command[:-1] == SERVICES["redis"]["command"][:-1] and command[-1].startswith("${REDIS_PASSWORD:?")
    assert "docker-compose.remote.yml" in (ROOT / "docker-compose.yml").read_text()
