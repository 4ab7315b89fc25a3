"""Monitoring's own Prometheus metrics: what was ingested and how late, what was raised, how far
the outbox and rescoring are behind."""

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

EVENTS_INGESTED = Counter(
    "creditline_monitoring_events_total",
    "Events received, by outcome (applied, duplicate, out_of_sequence; unknown_account from "
    "JetStream, where such an event is dead-lettered alone).",
    ["outcome"],
)
EVENT_LAG_SECONDS = Histogram(
    "creditline_monitoring_event_lag_seconds",
    "Time from an applied event's own time to the commit that applied it (ingestion lag).",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
)
BATCH_SECONDS = Histogram(
    "creditline_monitoring_batch_seconds",
    "Time to apply one batch of events durably.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SIGNALS_RAISED = Counter(
    "creditline_monitoring_signals_total",
    "Signals raised, by type and severity.",
    ["type", "severity"],
)
SIGNALS_DELIVERED = Counter(
    "creditline_monitoring_signals_delivered_total",
    "Signals settled with limits, by result (delivered, rejected).",
    ["result"],
)
DELIVERY_FAILURES = Counter(
    "creditline_monitoring_delivery_failures_total",
    "Calls to limits' ReportSignals that failed and will be retried, by status code.",
    ["code"],
)
OUTBOX_OLDEST_SECONDS = Gauge(
    "creditline_monitoring_outbox_oldest_seconds",
    "Age of the oldest signal waiting for limits (0 when none waits).",
)
ACCOUNTS_RESCORED = Counter(
    "creditline_monitoring_accounts_rescored_total", "Accounts scored again after moving."
)


def observe_event_lag(events: Iterable, results: Iterable, now: float) -> None:
    """The lag of each event a batch applied (not its duplicates), at `now` (epoch seconds)."""
    applied = {r.event_id for r in results if r.outcome == "applied"}
    for event in events:
        if event.event_id in applied:
            applied.discard(event.event_id)  # the same id twice in a batch applies once
            EVENT_LAG_SECONDS.observe(max(0.0, now - event.at))


def count_signals(raised: Iterable) -> None:
    """Counts raised signals by type and severity: one update per pair, not per signal."""
    for (kind, severity), count in Tally((r.type, r.severity.name) for r in raised).items():
        SIGNALS_RAISED.labels(kind, severity).inc(count)


# The JetStream consumer (services.monitoring.jetstream), when configured.
JETSTREAM_MESSAGES = Counter(
    "creditline_monitoring_jetstream_messages_total",
    "Messages from the JetStream stream settled, by result (applied, duplicate, dead_lettered, "
    "retried: delivered again later).",
    ["result"],
)
JETSTREAM_DEAD_LETTERS = Counter(
    "creditline_monitoring_jetstream_dead_letters_total",
    "Messages set aside on the dead-letter subject, by reason.",
    ["reason"],
)
JETSTREAM_PENDING = Gauge(
    "creditline_monitoring_jetstream_pending_messages",
    "Consumer lag: messages in the stream not yet delivered to monitoring's durable consumer "
    "(with partitions, the sum over this replica's), as of the last fetch.",
)
JETSTREAM_PARTITION_PENDING = Gauge(
    "creditline_monitoring_jetstream_partition_pending_messages",
    "Consumer lag of each partition this replica consumes, as of its last fetch (the "
    "unlabelled gauge above is their sum). A partition no replica consumes has no series.",
    ["partition"],
)
JETSTREAM_PARTITIONS = Gauge(
    "creditline_monitoring_jetstream_partitions",
    "Partitions of the stream's subjects (0: unpartitioned): count by partition of the series "
    "above below this means a partition no replica consumes.",
)
JETSTREAM_CONNECTED = Gauge(
    "creditline_monitoring_jetstream_connected",
    "1 while the consumer is connected and bound to its stream, else 0.",
)
