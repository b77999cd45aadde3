"""Settings that make no sense are refused, misspelt NCSWEEP_ variables are named, configuration mistakes are one line."""
from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from nc_core.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch):  # noqa: ANN001, ANN201
    """No NCSWEEP_ variable of the surrounding shell, a fresh get_settings() before and after."""
    import os

    import nc_core.settings as settings_module

    for name in [n for n in os.environ if n.upper().startswith("NCSWEEP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(settings_module, "_WARNED", set())  # each test sees its own warnings
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


# -- defect 2: constraints ---------------------------------------------------------------------------------------
def test_the_auditors_nonsense_is_refused_naming_each_variable():
    with pytest.raises(ValidationError) as info:
        Settings(heartbeat_seconds=300, lease_seconds=-5, max_attempts=0, cancel_poll_seconds=0, max_body_bytes=-1,
                 max_runs_per_sweep=0, visibility_timeout=10)
    text = str(info.value)
    for name in ("LEASE_SECONDS", "MAX_ATTEMPTS", "CANCEL_POLL_SECONDS", "MAX_BODY_BYTES", "MAX_RUNS_PER_SWEEP"):
        assert f"NCSWEEP_{name}: expected a number greater than 0, got" in text, name


_COUNTS = ("max_attempts", "max_body_bytes", "max_runs_per_sweep", "visibility_timeout")  # integers: no NaN
_PERIODS = ("lease_seconds", "heartbeat_seconds", "cancel_poll_seconds", "worker_lost_after_seconds")


@pytest.mark.parametrize("field, value", [(f, v) for f in _COUNTS + _PERIODS for v in (0, -1, float("nan"))
                                          if not (f in _COUNTS and v != v)])
def test_each_count_and_period_must_be_positive(field, value):  # noqa: ANN001
    with pytest.raises(ValidationError, match=rf"NCSWEEP_{field.upper()}: expected a number greater than 0, got"):
        Settings(**{field: value})


def test_a_lease_shorter_than_two_heartbeats_names_both_variables(clean_env):
    clean_env.setenv("NCSWEEP_LEASE_SECONDS", "3")  # with the default heartbeat of 5: every run "worker lost"
    with pytest.raises(ValueError) as info:
        get_settings()
    message = str(info.value)
    assert type(info.value).__name__ == "ConfigError"
    assert message.startswith("NCSWEEP_LEASE_SECONDS: expected at least 2 × NCSWEEP_HEARTBEAT_SECONDS = 10")
    assert message.endswith("got 3") and "\n" not in message
    with pytest.raises(ValidationError, match="NCSWEEP_LEASE_SECONDS: expected at least 2 × NCSWEEP_HEARTBEAT"):
        Settings(lease_seconds=9.9, heartbeat_seconds=5)


def test_a_visibility_timeout_below_the_lease_is_refused():
    with pytest.raises(ValidationError, match=r"NCSWEEP_VISIBILITY_TIMEOUT: expected at least NCSWEEP_LEASE_SECONDS "
                                              r"= 120 .*got 10"):
        Settings(visibility_timeout=10)


def test_sensible_values_and_those_the_tests_use_stay_valid():
    Settings()
    Settings(lease_seconds=120, heartbeat_seconds=60)  # exactly two beats per lease
    Settings(lease_seconds=3.0, heartbeat_seconds=0.5, visibility_timeout=12345, worker_lost_after_seconds=0.2)
    Settings(heartbeat_seconds=30, cancel_poll_seconds=0.05, event_retention_seconds=0)


def test_a_validation_error_does_not_show_the_database_password():
    with pytest.raises(ValidationError) as info:
        Settings(database_url="postgresql+psycopg://u:s3cret@db/x", lease_seconds=1)
    assert "s3cret" not in str(info.value)


# -- defect 3: unknown variables ---------------------------------------------------------------------------------
def test_a_misspelt_variable_logs_one_warning_with_a_suggestion(clean_env, caplog):
    clean_env.setenv("NCSWEEP_DATABSE_URL", "postgresql+psycopg://db/x")
    clean_env.setenv("NCSWEEP_ZZZZ_QQQQ", "1")
    with caplog.at_level(logging.WARNING, logger="nc_core.settings"):
        settings = get_settings()
    assert settings.database_url == ""  # still ignored: the warning says so
    lines = [r.getMessage() for r in caplog.records if r.name == "nc_core.settings"]
    assert lines == ["unknown environment variable NCSWEEP_DATABSE_URL ignored (did you mean NCSWEEP_DATABASE_URL?)",
                     "unknown environment variable NCSWEEP_ZZZZ_QQQQ ignored"], lines
    caplog.clear()
    get_settings.cache_clear()
    with caplog.at_level(logging.WARNING, logger="nc_core.settings"):
        get_settings()  # once a process: `ncsweep up` reads its settings more than once
    assert [r for r in caplog.records if r.name == "nc_core.settings"] == []


def test_every_ncsweep_variable_the_repository_reads_is_known():
    names: set[str] = set()
    for pattern in ("*.py", "*.sh", "*.yml", "Dockerfile"):
        for path in ROOT.rglob(pattern):
            if ".venv" in path.parts or "site-packages" in path.parts or path.name.startswith("test_config_"):
                continue
            names |= set(re.findall(r"NCSWEEP_[A-Z][A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")))
    assert {"NCSWEEP_DEBUG", "NCSWEEP_CONTROL", "NCSWEEP_GPU_INDEX", "NCSWEEP_DATABASE_URL"} <= names
    from nc_core.settings import warn_unknown_variables

    assert warn_unknown_variables({name: "1" for name in names}) == []


# -- defect 4: one line for a configuration mistake --------------------------------------------------------------
def test_config_error_names_the_variable_expected_and_got(clean_env):
    clean_env.setenv("NCSWEEP_DATA_ROOTS", "/data")
    with pytest.raises(ValueError, match=re.escape('NCSWEEP_DATA_ROOTS: expected a JSON list such as ["/data"], '
                                                    "got '/data'")):
        get_settings()
    clean_env.setenv("NCSWEEP_DATA_ROOTS", '["/data"]')
    clean_env.setenv("NCSWEEP_MAX_ATTEMPTS", "abc")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="^NCSWEEP_MAX_ATTEMPTS: expected a valid integer, got 'abc'$"):
        get_settings()


def test_config_error_explains_database_urls():
    from sqlalchemy import create_engine

    from nc_core.settings import config_error

    with pytest.raises(Exception) as info:
        create_engine("postgres://u:s3cret@db/x")
    why = config_error(info.value, "postgres://u:s3cret@db/x")
    assert why.startswith("NCSWEEP_DATABASE_URL: expected an SQLAlchemy URL such as postgresql+psycopg://")
    assert "got 'postgres://u:***@db/x'" in why and "postgresql+psycopg://" in why and "s3cret" not in why
    assert config_error(KeyError("x")) is None and config_error(ValueError("spec")) is None


def _cli(capsys, *args: str) -> tuple[int, str]:  # noqa: ANN001
    from service import cli

    rc = cli.main(list(args))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("name, value, expected", [
    ("NCSWEEP_DATA_ROOTS", "/data", 'NCSWEEP_DATA_ROOTS: expected a JSON list such as ["/data"], got \'/data\''),
    ("NCSWEEP_MAX_ATTEMPTS", "abc", "NCSWEEP_MAX_ATTEMPTS: expected a valid integer, got 'abc'"),
    ("NCSWEEP_LEASE_SECONDS", "3", "NCSWEEP_LEASE_SECONDS: expected at least 2 × NCSWEEP_HEARTBEAT_SECONDS"),
])
def test_the_cli_says_a_bad_setting_in_one_line(clean_env, capsys, name, value, expected):  # noqa: ANN001
    clean_env.setenv(name, value)
    rc, err = _cli(capsys, "runs")
    assert rc == 1 and err.startswith(f"error: {expected}"), err
    assert len(err.strip().splitlines()) == 1 and "bug in ncsweep" not in err


def test_the_cli_says_a_bad_database_url_in_one_line(clean_env, capsys, tmp_path):  # noqa: ANN001
    clean_env.setenv("NCSWEEP_HOME", str(tmp_path))
    clean_env.setenv("NCSWEEP_DATABASE_URL", "postgres://u:s3cret@127.0.0.1:5432/x")
    rc, err = _cli(capsys, "token", "list")
    assert rc == 1 and err.startswith("error: NCSWEEP_DATABASE_URL: expected an SQLAlchemy URL"), err
    assert "postgresql+psycopg://" in err and "s3cret" not in err and "bug in ncsweep" not in err


def test_the_cli_says_an_unreachable_database_in_one_line(clean_env, capsys, tmp_path):  # noqa: ANN001
    clean_env.setenv("NCSWEEP_HOME", str(tmp_path))
    url = f"postgresql+psycopg://postgres:s3cret@127.0.0.1:1/fixprod_{uuid.uuid4().hex[:8]}"  # nothing on port 1
    clean_env.setenv("NCSWEEP_DATABASE_URL", url)
    rc, err = _cli(capsys, "token", "list")
    assert rc == 1 and err.startswith("error: NCSWEEP_DATABASE_URL: expected a database that accepts connections, "
                                      "got postgresql+psycopg://postgres:***@127.0.0.1:1/fixprod_"), err
    assert "OperationalError" in err and "s3cret" not in err and "bug in ncsweep" not in err


# -- defect 3: /readyz says which database failed and how ---------------------------------------------------------
def test_readyz_logs_the_database_it_tried_and_the_error(settings, enqueuer, caplog):  # noqa: ANN001
    from service.app import create_app

    settings.database_url = "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/nothing"
    with TestClient(create_app(settings, enqueuer=enqueuer, broker_check=lambda: None)) as client, \
            caplog.at_level(logging.WARNING):
        resp = client.get("/readyz")
    state = resp.json()["checks"]["database"]  # the probe is open: no host, path or driver text in it
    assert resp.status_code == 503 and state.startswith("failed: OperationalError (the server's log"), state
    assert "127.0.0.1" not in resp.text and "s3cret" not in resp.text
    logged = caplog.text
    assert "NCSWEEP_DATABASE_URL:" in logged and "postgresql+psycopg://postgres:***@127.0.0.1:1/nothing" in logged
    assert "refused" in logged.lower() and "s3cret" not in logged


@pytest.mark.parametrize("url", ["postgresql+psycopg://postgres@127.0.0.1:5432/db?password=S3CRETPW",
                                 "postgresql+psycopg:///db?host=127.0.0.1&password=S3CRETPW&port=5999",
                                 "postgresql+psycopg://u:S3CRETPW@h/db?sslpassword=S3CRETPW&sslmode=require"])
def test_a_password_in_the_query_is_masked_too(url):
    from nc_core.settings import mask_url

    masked = mask_url(url)
    assert "S3CRETPW" not in masked and "***" in masked
