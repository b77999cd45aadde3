"""Programmatic Alembic: upgrade a database (SQLite or PostgreSQL) to the newest revision."""
from __future__ import annotations

from contextlib import contextmanager
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
