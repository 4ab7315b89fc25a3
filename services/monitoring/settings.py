"""Settings of the monitoring service (environment variables prefixed CREDITLINE_MONITORING_)."""

from pathlib import Path
from typing import Self

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.monitoring.partitions import MAX_PARTITIONS, parse_partitions
from services.monitoring.rules import DEFAULT_RULES
from services.monitoring.store import CACHED_STATES

# NATS names: streams and consumers, and dot-separated subjects without wildcards.
NAME = r"^[A-Za-z0-9_-]{1,64}$"
SUBJECT = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


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
    cached_states: int = Field(
        CACHED_STATES,
        ge=0,
        description="Account states kept parsed between batches, at most (about 10 KB each).",
    )
    # Repayment events from NATS JetStream (services.monitoring.jetstream): off unless a URL.
    jetstream_url: str | None = Field(
        None,
        description="NATS server(s), e.g. nats://nats.nats:4222 (comma-separated for a "
        "cluster); unset: no JetStream consumer, events arrive over gRPC only.",
    )
    jetstream_credentials_file: Path | None = Field(
        None, description="A NATS .creds file (user JWT and seed), where NATS asks for one."
    )
    jetstream_stream: str = Field(
        "CREDITLINE_REPAYMENTS", pattern=NAME, description="The stream of repayment events."
    )
    jetstream_subject: str = Field(
        "creditline.repayments",
        pattern=SUBJECT,
        description="Events are published on <subject>.<account key>, one subject per account "
        "(<subject>.<partition>.<account key> with partitions).",
    )
    jetstream_partitions: int = Field(
        0,
        ge=0,
        le=MAX_PARTITIONS,
        description="Partitions of the subjects, each with a durable consumer <consumer>-<p> "
        "(services.monitoring.partitions says which partition an account is in); 0: "
        "unpartitioned, one consumer.",
    )
    jetstream_consume_partitions: str = Field(
        "all",
        description="The partitions this replica consumes: all, indices and ranges (0-7,12), "
        "or i/n for every partition p with p mod n = i (replica i of n).",
    )
    jetstream_consumer: str = Field(
        "creditline-monitoring", pattern=NAME, description="The durable pull consumer's name."
    )
    jetstream_dead_letter_subject: str = Field(
        "creditline.deadletter.repayments",
        pattern=SUBJECT,
        description="Where events that can never apply are published, with the reason.",
    )
    jetstream_dead_letter_stream: str = Field(
        "CREDITLINE_REPAYMENTS_DEAD", pattern=NAME, description="The stream keeping dead letters."
    )
    jetstream_create: bool = Field(
        True,
        description="Create the two streams and the consumer at start when missing (existing "
        "ones are used as they are).",
    )
    jetstream_max_age_days: float = Field(
        7.0, gt=0, description="How long created streams keep messages, acknowledged or not."
    )
    jetstream_batch_size: int = Field(
        100, ge=1, le=5000, description="Messages fetched and applied in one transaction."
    )
    jetstream_ack_wait_seconds: float = Field(
        30.0,
        gt=0,
        description="A created consumer redelivers a message not acknowledged within this "
        "(after a crash).",
    )
    jetstream_retry_delay_seconds: float = Field(
        5.0,
        gt=0,
        description="Delay before a message is delivered again: an event ahead of its "
        "account's sequence, or a batch that failed to commit.",
    )
    jetstream_max_deliveries: int = Field(
        30,
        ge=2,
        description="Deliveries after which an event still ahead of its account's sequence "
        "is dead-lettered.",
    )

    @model_validator(mode="after")
    def _streams_leave_threads(self) -> Self:
        if self.max_streams >= self.max_workers:
            raise ValueError("max_streams must be below max_workers, to leave threads for calls")
        return self

    @property
    def jetstream_consumed_partitions(self) -> tuple[int, ...]:
        """The partitions this replica consumes; empty when unpartitioned."""
        return parse_partitions(self.jetstream_consume_partitions, self.jetstream_partitions)

    @field_validator("jetstream_consume_partitions")
    @classmethod
    def _partitions_within_the_count(cls, spec: str, info: ValidationInfo) -> str:
        partitions = info.data.get("jetstream_partitions")
        if partitions is None:  # itself invalid, and reported
            return spec
        if partitions == 0:
            if spec.strip() != "all":
                raise ValueError(
                    "needs CREDITLINE_MONITORING_JETSTREAM_PARTITIONS above 0 (unpartitioned, "
                    "the one consumer takes every subject)"
                )
            return spec
        if not parse_partitions(spec, partitions):  # raises saying what is wrong
            raise ValueError(f"{spec!r} names no partition")
        return spec

    @model_validator(mode="after")
    def _jetstream_consistent(self) -> Self:
        if self.jetstream_dead_letter_subject.startswith(self.jetstream_subject + "."):
            raise ValueError(
                "jetstream_dead_letter_subject must lie outside jetstream_subject's subjects"
            )
        # A gap left by a crash closes when the unacknowledged messages come back (ack wait):
        # the events behind it must be retried for longer than that before they are given up.
        waited = self.jetstream_retry_delay_seconds * (self.jetstream_max_deliveries - 1)
        if waited <= 2 * self.jetstream_ack_wait_seconds:
            raise ValueError(
                "jetstream_retry_delay_seconds * (jetstream_max_deliveries - 1) must exceed "
                "twice jetstream_ack_wait_seconds"
            )
        return self
