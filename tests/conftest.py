"""Shared fixtures: migrated SQLite/PostgreSQL databases (db_url), settings, the API app and clients."""
from __future__ import annotations

import os
import shutil
import signal
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
from sqlalchemy import create_engine, func, select, text

PG_ADMIN_URL = os.environ.get("NCSWEEP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

# A test run started in the background of a shell without job control inherits an ignored SIGINT (and, under
# nohup, an ignored SIGHUP), which Python then keeps: the Ctrl-C tests need Python's own handler, as a terminal's
# pytest has. Children that test a closed terminal reset SIGHUP themselves (helpers_stack.TERMINAL_SIGNALS).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _require(what: str, exc: Exception) -> None:
    """Skip locally, FAIL under CI=true, when a required service is unreachable."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required under CI=true: {exc}")
    pytest.skip(f"{what} unreachable: {type(exc).__name__}")


class PgServer:
    """Creates and drops scratch databases on the test PostgreSQL server."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
        self.created: list[str] = []

    def url(self, name: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"

    def create(self, prefix: str = "ncsweep_t") -> str:
        name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with self.engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return self.url(name)

    def drop(self, url: str) -> None:
        from nc_core.db.session import _ENGINES

        engine = _ENGINES.pop(url, None)
        if engine is not None:
            engine.dispose()
        name = url.rsplit("/", 1)[1]
        with self.engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self.created:
            self.created.remove(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server on 127.0.0.1 (skipped when unreachable; CI=true fails instead)."""
    server = PgServer(PG_ADMIN_URL)
    try:
        with server.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        server.engine.dispose()
        _require(f"PostgreSQL at {PG_ADMIN_URL}", exc)
    yield server
    for name in list(server.created):
        server.drop(server.url(name))
    server.engine.dispose()


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    """One migrated PostgreSQL database for the whole test session (dropped at the end)."""
    from nc_core.db.migrate import upgrade

    url = pg_server.create()
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for every test (migrating once keeps tests fast)."""
    from nc_core.db.migrate import upgrade

    path = tmp_path_factory.mktemp("sqlite_template") / "ncsweep.db"
    upgrade(f"sqlite:///{path}")
    return path


def _truncate_all(url: str) -> None:
    from nc_core.db.models import Base
    from nc_core.db.session import make_engine

    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with make_engine(url).begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a fresh SQLite file, or the session's PostgreSQL database truncated."""
    if request.param == "sqlite":
        path = tmp_path / "ncsweep.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
        yield url
        from nc_core.db.session import _ENGINES

        engine = _ENGINES.pop(url, None)
        if engine is not None:
            engine.dispose()
        return
    url = request.getfixturevalue("pg_url")
    _truncate_all(url)
    yield url


@pytest.fixture
def settings(db_url: str, tmp_path: Path):  # noqa: ANN201 - nc_core.settings.Settings
    """Settings for the API under test: this test's database, a data root under tmp_path, auth on."""
    from nc_core.settings import Settings

    (tmp_path / "data").mkdir(exist_ok=True)
    return Settings(home=tmp_path / "home", database_url=db_url, broker_url="redis://127.0.0.1:6379/15",
                    data_roots=[tmp_path / "data"], data_root=tmp_path / "data", auth_required=True)


@pytest.fixture
def enqueuer():  # noqa: ANN201 - service.enqueue.RecordingEnqueuer
    """A fake enqueuer that records [(kind, run_id), ...] per call (no broker needed)."""
    from service.enqueue import RecordingEnqueuer

    return RecordingEnqueuer()


@pytest.fixture
def app(settings, enqueuer):  # noqa: ANN001, ANN201 - fastapi.FastAPI
    """The API app on `settings`, with the recording enqueuer and a broker check that always passes."""
    from service.app import create_app

    return create_app(settings, enqueuer=enqueuer, broker_check=lambda: None)


@pytest.fixture
def write_token(db_url: str) -> str:
    from service.auth import create_token

    return create_token(db_url, "tests-write", "write")


@pytest.fixture
def read_token(db_url: str) -> str:
    from service.auth import create_token

    return create_token(db_url, "tests-read", "read")


@pytest.fixture
def app_client(app, write_token: str):  # noqa: ANN001, ANN201 - starlette TestClient
    """A TestClient sending the write token; `app_client.app.state.enqueuer` is the recorder."""
    from starlette.testclient import TestClient

    with TestClient(app, headers={"Authorization": f"Bearer {write_token}"}, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def anon_client(app):  # noqa: ANN001, ANN201
    """A TestClient without any Authorization header."""
    from starlette.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def row_counts(db_url: str) -> Callable[[], dict[str, int]]:
    """Returns a function giving {table: row count} (to assert that a rejected request wrote nothing)."""
    from nc_core.db.models import Base
    from nc_core.db.session import make_engine

    def counts() -> dict[str, int]:
        with make_engine(db_url).connect() as conn:
            return {t.name: conn.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
    return counts


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a loaded CPU spinning threads cost 10x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
