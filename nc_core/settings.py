"""The one settings object (env prefix NCSWEEP_), built on demand, never at import."""
from __future__ import annotations

import difflib
import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

log = logging.getLogger(__name__)

#: NCSWEEP_* variables read outside the settings object (worker processes, tests, benchmarks): not misspellings.
OTHER_VARIABLES = frozenset({"NCSWEEP_CONTROL", "NCSWEEP_DEBUG", "NCSWEEP_GPU_INDEX", "NCSWEEP_PRELOAD",
                             "NCSWEEP_STOP_FILE", "NCSWEEP_WORKER_NAME", "NCSWEEP_PARENT_PID", "NCSWEEP_TEST_PG",
                             "NCSWEEP_TEST_REDIS", "NCSWEEP_BENCH_PG", "NCSWEEP_BENCH_REDIS",
                             "NCSWEEP_UPDATE_SCREENSHOTS"})
#: a heartbeat extends the lease: a lease shorter than this many heartbeats expires between two beats after
#: a single slow or failed one, and the reconciler takes the run from a worker that is still training it
LEASE_HEARTBEATS = 2
_POSITIVE = ("lease_seconds", "heartbeat_seconds", "cancel_poll_seconds", "max_attempts", "max_body_bytes",
             "max_runs_per_sweep", "visibility_timeout", "worker_lost_after_seconds")


class Settings(BaseSettings):
    """Configuration for the API, workers and the embedded launcher."""

    model_config = SettingsConfigDict(env_prefix="NCSWEEP_", extra="ignore")

    home: Path = Field(default=Path(".ncsweep"), description="state directory of the embedded stack")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = sqlite:///<home>/ncsweep.db")
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker (Redis)")
    data_roots: list[Path] = Field(default_factory=lambda: [Path("~/data").expanduser()],
                                   description="directories a spec's data.root may point into")
    data_root: Path = Field(default=Path("~/data").expanduser(), description="default dataset root")
    check_data_files: bool = Field(default=True, description="refuse a sweep whose dataset files are not under its "
                                   "data root on the API's host (false when workers see other files than the API)")
    artifacts_dir: Path = Field(default=Path(""), description="checkpoints; empty = <home>/artifacts")
    api_host: str = "127.0.0.1"
    api_port: int = 8765
    api_url: str = Field(default="", description="CLI: API base URL; empty = http://api_host:api_port")
    token: str = Field(default="", description="CLI: bearer token; empty = read <home>/token")
    auth_required: bool = True
    auth_reads: bool = Field(default=False, description="reads need a token too (any scope; the dashboard asks "
                             "for one and keeps it in a cookie); /healthz, /readyz, /docs, /redoc and /openapi.json "
                             "stay open")
    max_body_bytes: int = 1_000_000
    max_runs_per_sweep: int = 20_000
    lease_seconds: float = 120.0
    heartbeat_seconds: float = Field(default=5.0, description=f"at most lease_seconds / {LEASE_HEARTBEATS}")
    cancel_poll_seconds: float = Field(default=1.0, description="how often a running job reads its cancel flag "
                                       "between heartbeats (one primary-key read)")
    max_attempts: int = 3
    visibility_timeout: int = Field(default=7 * 24 * 3600, description="at least lease_seconds")
    worker_lost_after_seconds: float = 30.0
    event_retention_seconds: float = Field(default=7 * 24 * 3600, ge=0, description="the change feed (/events) "
                                           "keeps events this long; the reconciler deletes older ones every pass "
                                           "(0 = keep every event)")
    max_event_streams: int = Field(default=64, gt=0, description="open GET /events streams the API serves at once "
                                   "(each polls the database twice a second); more get a 503 and retry")
    db_wait_seconds: float = Field(default=30.0, ge=0, description="a starting worker waits this long for its "
                                   "database (still starting) before it exits with the reason")

    @field_validator(*_POSITIVE)
    @classmethod
    def _positive(cls, value: float, info: ValidationInfo) -> float:
        if not value > 0:  # NaN too
            raise ValueError(f"{env_name(info.field_name)}: expected a number greater than 0, got {value!r}")
        return value

    @field_validator("heartbeat_seconds")
    @classmethod
    def _beats_within_the_lease(cls, value: float, info: ValidationInfo) -> float:
        lease = info.data.get("lease_seconds")
        if lease is not None and lease < LEASE_HEARTBEATS * value:
            raise ValueError(f"NCSWEEP_LEASE_SECONDS: expected at least {LEASE_HEARTBEATS} × "
                             f"NCSWEEP_HEARTBEAT_SECONDS = {LEASE_HEARTBEATS * value:g} (each heartbeat extends the "
                             "lease; a shorter one expires while the worker still trains and the run fails as worker "
                             f"lost), got {lease:g}")
        return value

    @field_validator("visibility_timeout")
    @classmethod
    def _redelivery_after_the_lease(cls, value: int, info: ValidationInfo) -> int:
        lease = info.data.get("lease_seconds")
        if lease is not None and value < lease:
            raise ValueError(f"NCSWEEP_VISIBILITY_TIMEOUT: expected at least NCSWEEP_LEASE_SECONDS = {lease:g} "
                             "(Redis redelivers a running job's message after it; it should exceed the longest job), "
                             f"got {value}")
        return value

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'ncsweep.db').resolve()}"

    def resolved_artifacts_dir(self) -> Path:
        return self.artifacts_dir if str(self.artifacts_dir) not in ("", ".") else self.home / "artifacts"

    def resolved_api_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"


class ConfigError(ValueError):
    """A configuration mistake, in one line naming its NCSWEEP_ variable, what was expected and what was got."""


def env_name(field: str | None) -> str:
    return f"NCSWEEP_{(field or '').upper()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment (cached; tests call get_settings.cache_clear()); a bad value raises
    ConfigError, and every unknown NCSWEEP_ variable (a misspelling) logs one warning."""
    warn_unknown_variables()
    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        raise ConfigError(config_error(exc) or str(exc)) from None


_WARNED: set[str] = set()  # the unknown variables this process has warned of (once each)


def warn_unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """Log one warning per NCSWEEP_* variable neither Settings nor any ncsweep process reads (once a process);
    returns them."""
    known = {env_name(name) for name in Settings.model_fields} | OTHER_VARIABLES
    unknown = sorted(name for name in (os.environ if environ is None else environ)
                     if name.upper().startswith("NCSWEEP_") and name.upper() not in known)
    for name in unknown:
        if name in _WARNED:
            continue
        _WARNED.add(name)
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
        log.warning("unknown environment variable %s ignored%s", name, f" (did you mean {close[0]}?)" if close else "")
    return unknown


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ***: the user:password@ one and a query's ?password= (libpq's
    password, sslpassword …)."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        secret = {k: "***" for k in parsed.query if "pass" in k.lower()}
        return parsed.update_query_dict(secret).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL: mask what looks like user:password@ or password=
        masked = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
        return re.sub(r"([?&][^=&]*pass[^=&]*=)[^&]*", r"\1***", masked, flags=re.IGNORECASE)


def config_error(exc: BaseException, database_url: str | None = None) -> str | None:
    """One line for a configuration mistake behind ``exc`` — a settings value that does not parse or is out of
    range, a database URL SQLAlchemy cannot use, a database it cannot reach or that has no schema — naming the
    NCSWEEP_ variable, what was expected and what was got; None for any other error. ``database_url``: the URL
    that was used (default: the environment's)."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, SettingsError):
        return _unparsed(str(exc))
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return "; ".join(_validation_line(e) for e in exc.errors())
    if isinstance(exc, ModuleNotFoundError) and exc.name in _DRIVERS:
        url = _database_url(database_url)
        return (f"NCSWEEP_DATABASE_URL: expected a URL whose driver is installed, such as "
                f"postgresql+psycopg://user@host/db, got {url!r} (its driver {exc.name} is not installed)")
    if type(exc).__module__.startswith("sqlalchemy"):
        return _database_error(exc, _database_url(database_url))
    return None


_DRIVERS = frozenset({"psycopg2", "pg8000", "asyncpg", "pymysql", "MySQLdb", "mysql", "oracledb", "cx_Oracle",
                      "pyodbc", "aiosqlite"})


def _unparsed(message: str) -> str:
    """pydantic-settings' 'error parsing value for field "x" from source "EnvSettingsSource"' said usefully."""
    found = re.search(r'field "(\w+)"', message)
    if not found:
        return message
    name = env_name(found.group(1))
    got = next((v for k, v in os.environ.items() if k.upper() == name), None)
    field = Settings.model_fields.get(found.group(1))
    annotation = str(field.annotation) if field is not None else ""
    expected = ('a JSON list such as ["/data"]' if annotation.startswith("list") else
                "a JSON object" if annotation.startswith("dict") else "a JSON value")
    return f"{name}: expected {expected}, got {got!r}"


def _validation_line(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    if message.startswith("NCSWEEP_"):  # our validators say it all
        return message
    name = env_name(str(error["loc"][0])) if error.get("loc") else "NCSWEEP_*"
    expected = message.removeprefix("Input should be ").split(", unable")[0]
    expected = f"a number {expected}" if expected.startswith(("greater", "less")) else expected
    return f"{name}: expected {expected}, got {error.get('input')!r}"


def _database_url(url: str | None) -> str:
    if url is None:
        try:
            url = Settings().resolved_database_url()
        except Exception:  # noqa: BLE001 - the settings themselves are broken: name the variable only
            return os.environ.get("NCSWEEP_DATABASE_URL", "")
    return mask_url(url)


def error_text(exc: BaseException) -> str:
    """A database error's own message (the driver's, under SQLAlchemy's wrapper) on one line."""
    return " ".join(line.strip() for line in str(getattr(exc, "orig", None) or exc).splitlines() if line.strip())


def _database_error(exc: BaseException, url: str) -> str | None:
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.NoSuchModuleError):
        dialect = str(exc).rsplit(":", 1)[-1].strip()
        hint = " (postgres:// is Heroku's spelling; SQLAlchemy's is postgresql+psycopg://)" if dialect == "postgres" \
            else ""
        return (f"NCSWEEP_DATABASE_URL: expected an SQLAlchemy URL such as postgresql+psycopg://user@host/db or "
                f"sqlite:///path/ncsweep.db, got {url!r}: no dialect {dialect!r}{hint}")
    if isinstance(exc, sa_exc.ArgumentError) and "parse SQLAlchemy URL" in str(exc):
        return (f"NCSWEEP_DATABASE_URL: expected an SQLAlchemy URL such as postgresql+psycopg://user@host/db, "
                f"got {url!r} ({exc})")
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    orig = getattr(exc, "orig", None) or exc
    detail, kind = error_text(exc), type(orig).__name__
    if "no such table" in detail or kind == "UndefinedTable":
        return (f"NCSWEEP_DATABASE_URL: the database at {url} has no ncsweep schema (expected a migrated database: "
                f"`alembic upgrade head`): {kind}: {detail}")
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return f"NCSWEEP_DATABASE_URL: expected a database that accepts connections, got {url} ({kind}: {detail})"
    return None
