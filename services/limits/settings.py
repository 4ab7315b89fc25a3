"""Settings of the limits service (environment variables prefixed CREDITLINE_LIMITS_)."""

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.limits.notices import DEFAULT_TEMPLATES
from services.limits.policy import DEFAULT_POLICY


class LimitsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CREDITLINE_LIMITS_", extra="ignore", frozen=True)

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    database_url: str = Field(
        "sqlite:///data/limits.db",
        description="sqlite:///path or postgresql+psycopg://user@host/db (use a Secret).",
    )
    policy_file: Path = Field(DEFAULT_POLICY, description="The credit policy (YAML).")
    policy_reload_interval_seconds: float = Field(
        2.0,
        ge=0,
        description="How often the policy and notice templates files are checked; 0: never.",
    )
    notice_templates_file: Path = Field(
        DEFAULT_TEMPLATES, description="The texts of the notices (YAML), beside the policy."
    )
    # A WatchNotices or WatchTreatmentSteps stream holds a thread for as long as it is open.
    max_streams: int = Field(
        2, ge=1, description="Open WatchNotices and WatchTreatmentSteps streams; below max_workers."
    )
    scoring_target: str = Field(
        "127.0.0.1:50051", description="Scoring service: host:port or dns:///name:port."
    )
    scoring_timeout_seconds: float = Field(
        2.0, gt=0, description="Deadline of a call to scoring when the caller set none."
    )
    collections_interval_seconds: float = Field(
        300.0,
        ge=0,
        description="How often every account in collections is brought through the treatment; "
        "0: never (RunCollections only).",
    )
    book_metrics_interval_seconds: float = Field(
        60.0,
        ge=0,
        description="How often the open lines' totals by tier are computed for /metrics; 0: never.",
    )

    draw_group: int = Field(
        32,
        ge=1,
        le=1024,
        description="Draws and repayments that arrive together committed in one transaction "
        "at most; 1: each in its own.",
    )

    review_shards: int = Field(
        8, ge=1, le=256, description="Shards of a new review run when the caller names none."
    )
    review_lease_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a worker's claim on a review shard lasts without progress; a "
        "replica that dies leaves its shard to others after this.",
    )
    review_page_size: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Accounts a review scores and applies per transaction (unset: 500).",
    )
    review_poll_seconds: float = Field(
        0.5, gt=0, description="How often a review caller waiting on others' shards looks again."
    )

    @model_validator(mode="after")
    def _streams_leave_threads(self) -> Self:
        if self.max_streams >= self.max_workers:
            raise ValueError("max_streams must be below max_workers, to leave threads for calls")
        return self
