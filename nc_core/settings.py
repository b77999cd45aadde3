"""The one settings object (env prefix NCSWEEP_), built on demand, never at import."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
                             "for one and keeps it in a cookie); /healthz, /readyz, /docs stay open")
    max_body_bytes: int = 1_000_000
    max_runs_per_sweep: int = 20_000
    lease_seconds: float = 120.0
    heartbeat_seconds: float = 5.0
    cancel_poll_seconds: float = Field(default=1.0, description="how often a running job reads its cancel flag "
                                       "between heartbeats (one primary-key read)")
    max_attempts: int = 3
    visibility_timeout: int = 7 * 24 * 3600
    worker_lost_after_seconds: float = 30.0
    event_retention_seconds: float = Field(default=7 * 24 * 3600, ge=0, description="the change feed (/events) "
                                           "keeps events this long; the reconciler deletes older ones every pass "
                                           "(0 = keep every event)")

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'ncsweep.db').resolve()}"

    def resolved_artifacts_dir(self) -> Path:
        return self.artifacts_dir if str(self.artifacts_dir) not in ("", ".") else self.home / "artifacts"

    def resolved_api_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment (cached; tests call get_settings.cache_clear())."""
    return Settings()
