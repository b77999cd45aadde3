"""Programmatic Alembic: upgrade a database (SQLite or PostgreSQL) to the newest revision."""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config


def migrations_dir() -> Path:
    """The `migrations` package directory (works from a checkout and when installed)."""
    import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """An Alembic Config pointing at the packaged migrations and `url` (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Create or upgrade the schema at `url` to `revision` (default: head), one process at a time: PostgreSQL
    under an advisory lock (migrations/env.py), an SQLite file under an flock of `<file>.migrate-lock` (SQLite
    DDL is not transactional in Alembic, so two migrators would both create the tables)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(Path(path + ".migrate-lock")):
                command.upgrade(alembic_config(url), revision)
            return
    command.upgrade(alembic_config(url), revision)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock of ``path`` (created if needed) for the block; other processes wait for it."""
    import fcntl

    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def downgrade(url: str, revision: str = "base") -> None:
    """Downgrade the schema at `url` (tests and emergencies)."""
    command.downgrade(alembic_config(url), revision)


@lru_cache(maxsize=1)
def _revisions() -> tuple[str, frozenset[str]]:
    """(head, every revision) of the packaged migrations, read once per process."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head(), frozenset(rev.revision for rev in script.walk_revisions())


def head_revision() -> str:
    """The newest revision of the packaged migrations (what this code's tables look like)."""
    return _revisions()[0]


def schema_problem(conn) -> tuple[str | None, bool]:  # noqa: ANN001 - a SQLAlchemy Connection
    """(why the schema behind ``conn`` does not match this code, whether waiting for a migration may help), or
    (None, False) at head. No schema or an older one may be migrated meanwhile; a revision this code does not know
    was written by newer code, which an older worker or API must not write to."""
    from sqlalchemy import inspect, text

    row = conn.execute(text("SELECT version_num FROM alembic_version")).first() \
        if inspect(conn).has_table("alembic_version") else None
    if row is None:
        return "no schema", True
    head, known = _revisions()
    if row[0] == head:
        return None, False
    if row[0] not in known:
        return f"schema at revision {row[0]}, which this code does not know (its newest is {head}): the database " \
            "was migrated by a newer ncsweep; run that version", False
    return f"schema at revision {row[0]}, this code needs {head}", True


def current(url: str) -> str | None:
    """The revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
