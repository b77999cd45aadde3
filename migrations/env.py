"""Alembic environment: URL from the config (caller) or Settings; batch mode for SQLite; one migrator at a time."""
from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from nc_core.db.models import Base

config = context.config
target_metadata = Base.metadata

# alembic.ini's logging (the `alembic` command's progress lines) only for the `alembic` command itself
# (cmd_opts is its parsed command line): a process migrating in-process (nc_core.db.migrate) keeps its own logging.
if config.cmd_opts is not None and config.config_file_name and config.file_config.has_section("loggers"):
    from logging.config import fileConfig

    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from nc_core.settings import get_settings  # a bad or misspelt NCSWEEP_ variable: said in one line

    return get_settings().resolved_database_url()


def _configure(**kwargs) -> None:  # noqa: ANN003
    url = kwargs.get("url") or kwargs["connection"].engine.url.render_as_string(hide_password=False)
    context.configure(target_metadata=target_metadata, render_as_batch=str(url).startswith("sqlite"),
                      compare_type=True, **kwargs)


#: pg_advisory_xact_lock key held while migrating: processes starting together (the compose `migrate` services of
#: several hosts, the CLI's token commands) wait for each other instead of running the same DDL twice.
MIGRATION_LOCK_KEY = 0x6E637377  # "ncsw"


def _run_locked(connection) -> None:  # noqa: ANN001
    """Run the migrations in one transaction, on PostgreSQL under the migration advisory lock (released at commit):
    a second migrator reads the revision only after the first committed, and finds nothing to do."""
    _configure(connection=connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        context.run_migrations()


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # a caller (tests, migrate.upgrade) passed its own connection
        _run_locked(connection)
        return
    from sqlalchemy import create_engine

    engine = create_engine(_url(), poolclass=pool.NullPool)  # no cached engine: closes (and checkpoints) at the end
    try:
        with engine.connect() as conn:
            _run_locked(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
