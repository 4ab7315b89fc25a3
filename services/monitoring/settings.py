"""Settings of the monitoring service (environment variables prefixed CREDITLINE_MONITORING_)."""

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.monitoring.rules import DEFAULT_RULES


class MonitoringSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="CREDITLINE_MONITORING_", extra="ignore", frozen=True
    )

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    # Ingest and WatchAlerts streams each hold a thread for as long as they are open.
    max_workers: int = Field(16, ge=2, le=256, description="Threads serving RPCs and streams.")
    max_streams: int = Field(
        12, ge=1, description="Open Ingest and WatchAlerts streams; below max_workers."
    )
    database_url: str = Field(
        "sqlite:///data/monitoring.db",
        description="sqlite:///path or postgresql+psycopg://user@host/db (use a Secret).",
    )
    rules_file: Path = Field(DEFAULT_RULES, description="The detection rules (YAML).")
    rules_reload_interval_seconds: float = Field(
        2.0, ge=0, description="How often the rules file is checked; 0 turns reload off."
    )
    limits_target: str = Field(
        "127.0.0.1:50052", description="Limits service: host:port or dns:///name:port."
    )
    scoring_target: str = Field(
        "127.0.0.1:50051", description="Scoring service: host:port or dns:///name:port."
    )
    call_timeout_seconds: float = Field(
        5.0, gt=0, description="Deadline of a call to limits or scoring."
    )
    currency_code: str = Field(
        "CNY", min_length=3, max_length=3, description="Currency of every amount in events."
    )
    event_retention_days: float = Field(
        90.0,
        ge=0,
        description="Days the ids of events are kept for de-duplication; 0 keeps them forever.",
    )
    delivery_batch_size: int = Field(
        100, ge=1, le=1000, description="Signals sent to limits in one ReportSignals call."
    )

    @model_validator(mode="after")
    def _streams_leave_threads(self) -> Self:
        if self.max_streams >= self.max_workers:
            raise ValueError("max_streams must be below max_workers, to leave threads for calls")
        return self
