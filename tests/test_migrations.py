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


def _migrate_together(url: str, barrier) -> str:  # noqa: ANN001 - a multiprocessing Barrier proxy
    """In a fresh process: wait at ``barrier`` for the other migrators, upgrade ``url``; 'ok' or the error's first
    line (all start together however slowly the processes spawned: was a wall-clock instant 1.5 s ahead)."""
    barrier.wait(120)
    try:
        migrate.upgrade(url)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return "ok"


@pytest.fixture(params=["sqlite", "postgresql"])
def new_empty_url(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201
    """A maker of empty databases of one kind (SQLite files; PostgreSQL databases, dropped afterwards)."""
    made: list[str] = []
    if request.param == "sqlite":
        yield lambda: made.append(f"sqlite:///{tmp_path / f'race{len(made)}.db'}") or made[-1]
        return
    server = request.getfixturevalue("pg_server")
    yield lambda: made.append(server.create("ncsweep_mig")) or made[-1]
    for url in made:
        server.drop(url)


def test_migrators_started_together_wait_for_each_other(new_empty_url):
    # e.g. the compose `migrate` services of two worker hosts after a release: without a lock both ran the same
    # CREATE TABLEs and one crashed (PostgreSQL: a duplicate pg_type row; SQLite: table already exists)
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager, spawn.Pool(3) as pool:
        for _ in range(3):
            url = new_empty_url()
            barrier = manager.Barrier(3)  # a worker blocked at it takes no second task: three workers, together
            assert pool.starmap(_migrate_together, [(url, barrier)] * 3, chunksize=1) == ["ok"] * 3
            assert _diffs(url) == []


def test_migration_0005_names_duplicate_primary_runs_instead_of_failing_on_the_index(empty_url):
    from sqlalchemy import text

    migrate.upgrade(empty_url, "0004")
    engine = create_engine(empty_url)
    row = ("INSERT INTO run (sweep_id, kind, parent_run_id, status, cancel_requested, attempt, max_attempts, seed, "
           "grid, spec, spec_hash, options, epoch, epochs_total, start_epoch, step, steps_total, created_at, "
           "updated_at) VALUES (1, 'train', NULL, 'queued', false, 0, 3, 0, '{}', '{}', 'abcdef0123456789', '{}', "
           "0, 1, 0, 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")
    try:
        with engine.begin() as conn:  # two primary runs of one spec, as 0004's constraint let through
            conn.execute(text("INSERT INTO sweep (id, name, owner, spec, axes, created_at) VALUES "
                              "(1, 's', 'me', '{}', '[]', CURRENT_TIMESTAMP)"))
            conn.execute(text(row))
            conn.execute(text(row))
    finally:
        engine.dispose()
    with pytest.raises(RuntimeError, match=r"one primary run per .*\(sweep 1 train spec_hash abcdef012345…: 2 runs"):
        migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == "0004"
