"""Alembic: upgrade from empty on SQLite and PostgreSQL, the schema matches the models, down/up again."""
from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from nc_core.db import migrate
from nc_core.db.models import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sub' / 'empty.db'}"  # the parent folder is created by upgrade()
        return
    server = request.getfixturevalue("pg_server")
    url = server.create("ncsweep_mig")
    yield url
    server.drop(url)


def _diffs(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_from_empty_matches_models(empty_url):
    assert migrate.current(empty_url) is None
    migrate.upgrade(empty_url)
    assert migrate.current(empty_url) is not None
    assert set(Base.metadata.tables) <= _tables(empty_url)
    assert _diffs(empty_url) == []  # `alembic check`: no autogenerate differences
    migrate.upgrade(empty_url)  # idempotent


def test_downgrade_to_base_and_up_again(empty_url):
    migrate.upgrade(empty_url)
    head = migrate.current(empty_url)
    migrate.downgrade(empty_url, "base")
    assert _tables(empty_url) <= {"alembic_version"}
    migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == head and _diffs(empty_url) == []


def test_a_sweep_holds_one_primary_run_per_spec(empty_url):
    # the unique constraint includes parent_run_id, NULL for a sweep's own runs, and NULLs never collide
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    migrate.upgrade(empty_url)
    engine = create_engine(empty_url)
    row = ("INSERT INTO run (sweep_id, kind, parent_run_id, status, cancel_requested, attempt, max_attempts, seed, "
           "grid, spec, spec_hash, options, epoch, epochs_total, start_epoch, step, steps_total, created_at, "
           "updated_at) VALUES (1, 'train', {parent}, 'queued', false, 0, 3, 0, '{{}}', '{{}}', 'h', '{{}}', 0, 1, 0, "
           "0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO sweep (id, name, owner, spec, axes, created_at) VALUES "
                              "(1, 's', 'me', '{}', '[]', CURRENT_TIMESTAMP)"))
            conn.execute(text(row.format(parent="NULL")))
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(row.format(parent="NULL")))  # the same spec twice in one sweep
    finally:
        engine.dispose()


def test_single_head_and_packaged_location():
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
    assert (migrate.migrations_dir() / "env.py").is_file()
    root = Path(__file__).resolve().parents[1]
    assert "script_location = migrations" in (root / "alembic.ini").read_text()
