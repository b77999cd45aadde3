"""`alembic upgrade head --sql` (SQL for a DBA) and alembic.ini's logging: for the alembic command, never in-process."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _alembic(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCSWEEP_")}
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)


def test_offline_sql_for_postgresql_is_generated_without_a_database():
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/fixprod_offline_{uuid.uuid4().hex[:8]}"  # never created
    done = _alembic("-x", f"url={url}", "upgrade", "head", "--sql")
    assert done.returncode == 0, done.stderr[-3000:]
    sql = done.stdout
    for table in ("sweep", "run", "metric", "checkpoint", "worker", "api_token", "event"):
        assert f"CREATE TABLE {table} (" in sql, table
    assert "CREATE UNIQUE INDEX uq_run_primary_hash ON run (sweep_id, kind, spec_hash) WHERE parent_run_id IS NULL;" in sql
    assert "-- 0005: CREATE UNIQUE INDEX fails while a sweep holds two primary runs" in sql
    assert "UPDATE alembic_version SET version_num='0005'" in sql and sql.rstrip().endswith("COMMIT;")


def test_the_alembic_command_logs_what_it_runs(tmp_path):
    done = _alembic("-x", f"url=sqlite:///{tmp_path / 'db.sqlite'}", "upgrade", "head")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "INFO  [alembic.runtime.migration] Running upgrade  -> 0001" in done.stderr, done.stderr


def test_the_alembic_command_keeps_loggers_that_existed_before(tmp_path):
    code = ("import logging, sys; from alembic.config import main; before = logging.getLogger('ncsweep.before'); "
            f"main(['-x', 'url=sqlite:///{tmp_path / 'db.sqlite'}', 'upgrade', 'head']); "
            "before.warning('still logging'); print(before.disabled)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-3000:]
    assert "WARNI [ncsweep.before] still logging" in done.stderr, done.stderr


def test_migrating_in_process_leaves_the_applications_logging_alone(tmp_path):
    from alembic import command
    from alembic.config import Config

    from nc_core.db import migrate

    root, app_log, alembic_log = logging.getLogger(), logging.getLogger("ncsweep.test.app"), logging.getLogger("alembic")
    handler = logging.NullHandler()
    before = (list(root.handlers), root.level, alembic_log.level, list(alembic_log.handlers))
    root.addHandler(handler)
    try:
        state = (list(root.handlers), root.level, alembic_log.level, list(alembic_log.handlers))
        migrate.upgrade(f"sqlite:///{tmp_path / 'a.db'}")
        # a Config read from alembic.ini, in-process (no alembic command line): its logging section is not applied
        cfg = Config(str(ROOT / "alembic.ini"))
        cfg.set_main_option("script_location", str(ROOT / "migrations"))
        cfg.set_main_option("sqlalchemy.url", f"sqlite:///{tmp_path / 'b.db'}")
        command.upgrade(cfg, "head")
        assert (list(root.handlers), root.level, alembic_log.level, list(alembic_log.handlers)) == state
        assert not app_log.disabled
    finally:
        root.removeHandler(handler)
    assert (list(root.handlers), root.level, alembic_log.level, list(alembic_log.handlers)) == before
