"""Alerts, numbered in the order they become visible, and the outbox of signals for limits
that they also are (`delivery`).

Alerts are numbered from a counter row that each writing transaction takes last and holds to
its commit, so alerts become visible in the order of their numbers: a reader that has seen
alert n has seen every alert before it, which is what lets WatchAlerts resume from a cursor
with no gap, on any number of replicas.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Index,
    Integer,
    String,
    Table,
    Text,
    select,
    update,
)

from services.monitoring.detection import Raised
from services.monitoring.rules import Severity
from services.monitoring.store.sql import EpochMicros, Room, chunks, epoch_micros, metadata, micros

ALERT_COUNTER = "alerts"


class Delivery(StrEnum):
    pending = "pending"
    delivered = "delivered"
    rejected = "rejected"
    not_reported = "not_reported"


@dataclass(frozen=True)
class AlertRecord:
    seq: int
    signal_id: str
    account_id: str
    type: str
    severity: Severity
    evidence: dict[str, str]
    profile: dict[str, float]
    risk_band: str
    event_id: str
    detected_at: datetime
    created_at: datetime
    rules_version: str
    delivery: Delivery
    delivery_attempts: int
    delivery_error: str


@dataclass(frozen=True)
class AlertQuery:
    """Which alerts: any of `severities` and `types` (all when empty), of one account or all."""

    severities: frozenset[Severity] = frozenset()
    types: frozenset[str] = frozenset()
    account_id: str = ""


alerts = Table(
    "monitoring_alerts",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("signal_id", String, nullable=False, unique=True),
    Column("account_id", String, nullable=False),
    Column("type", String, nullable=False),
    Column("severity", Integer, nullable=False),
    Column("evidence", Text, nullable=False),
    Column("profile", Text, nullable=False),
    Column("risk_band", String, nullable=False),
    Column("event_id", String, nullable=False),
    Column("detected_at", EpochMicros, nullable=False),
    Column("created_at", EpochMicros, nullable=False),
    Column("rules_version", String, nullable=False),
    Column("delivery", String, nullable=False),
    Column("delivery_attempts", Integer, nullable=False),
    Column("delivery_error", Text, nullable=False),
    Column("delivered_at", EpochMicros),
    Index("ix_monitoring_alerts_account_id_seq", "account_id", "seq"),
    Index("ix_monitoring_alerts_delivery_seq", "delivery", "seq"),
)

counters = Table(
    "monitoring_counters",
    metadata,
    Column("name", String, primary_key=True),
    Column("value", BigInteger, nullable=False),
)


class Alerts(Room):
    def add_alerts(self, raised: Sequence[Raised], rules_version: str, now: datetime) -> int:
        """Stores the signals as alerts, numbered in order; returns the last number (0: none).

        Call it last in the transaction: it holds the alert counter's row until the commit.
        """
        if not raised:
            return 0
        last = self._take_numbers(len(raised))
        first = last - len(raised) + 1
        at = micros(now)
        profiles: dict[int, str] = {}  # one account's alerts of a batch share its profile
        rows = []
        for i, r in enumerate(raised):
            profile = profiles.get(id(r.profile))
            if profile is None:
                profile = profiles[id(r.profile)] = orjson.dumps(r.profile).decode()
            rows.append(
                (
                    first + i,
                    r.signal_id,
                    r.account_id,
                    r.type,
                    int(r.severity),
                    orjson.dumps(r.evidence).decode(),
                    profile,
                    r.risk_band,
                    r.event_id,
                    epoch_micros(r.detected_at),
                    at,
                    rules_version,
                    (Delivery.pending if r.report else Delivery.not_reported).value,
                    0,
                    "",
                )
            )
        self._insert(alerts, rows)
        return last

    def _take_numbers(self, count: int) -> int:
        taken = self._connection.execute(
            update(counters)
            .where(counters.c.name == ALERT_COUNTER)
            .values(value=counters.c.value + count)
            .returning(counters.c.value)
        ).scalar_one()
        return int(taken)

    def alerts_after(
        self, after: int, query: AlertQuery, limit: int, up_to: int | None = None
    ) -> list[AlertRecord]:
        """Alerts numbered above `after` (and up to `up_to`) that match, oldest first."""
        conditions = [alerts.c.seq > after, *_filters(query)]
        if up_to is not None:
            conditions.append(alerts.c.seq <= up_to)
        statement = select(alerts).where(*conditions).order_by(alerts.c.seq).limit(limit)
        return [_alert(row) for row in self._connection.execute(statement)]

    def alerts_before(self, before: int | None, query: AlertQuery, limit: int) -> list[AlertRecord]:
        """Alerts numbered below `before` (all when None) that match, newest first."""
        conditions = _filters(query)
        if before is not None:
            conditions.append(alerts.c.seq < before)
        statement = select(alerts).where(*conditions).order_by(alerts.c.seq.desc()).limit(limit)
        return [_alert(row) for row in self._connection.execute(statement)]

    def alerts_by_signal_id(self, signal_ids: Iterable[str]) -> list[AlertRecord]:
        found: list[AlertRecord] = []
        for chunk in chunks(sorted(set(signal_ids))):
            statement = select(alerts).where(alerts.c.signal_id.in_(chunk))
            found.extend(_alert(row) for row in self._connection.execute(statement))
        return sorted(found, key=lambda a: a.seq)

    def last_alert_number(self) -> int:
        query = select(counters.c.value).where(counters.c.name == ALERT_COUNTER)
        return int(self._connection.execute(query).scalar_one())

    # -- the outbox -------------------------------------------------------------------------

    def pending_signals(self, limit: int) -> list[AlertRecord]:
        statement = (
            select(alerts)
            .where(alerts.c.delivery == Delivery.pending.value)
            .order_by(alerts.c.seq)
            .limit(limit)
        )
        return [_alert(row) for row in self._connection.execute(statement)]

    def mark_delivered(self, seqs: Sequence[int], now: datetime) -> None:
        self._set_delivery(seqs, Delivery.delivered, "", now)

    def mark_rejected(self, seq: int, error: str, now: datetime) -> None:
        self._set_delivery([seq], Delivery.rejected, error, now)

    def count_attempt(self, seqs: Sequence[int], error: str) -> None:
        for chunk in chunks(list(seqs)):
            self._connection.execute(
                update(alerts)
                .where(alerts.c.seq.in_(chunk))
                .values(
                    delivery_attempts=alerts.c.delivery_attempts + 1, delivery_error=error[:500]
                )
            )

    def _set_delivery(self, seqs: Sequence[int], state: Delivery, error: str, now: datetime):
        for chunk in chunks(list(seqs)):
            self._connection.execute(
                update(alerts)
                .where(alerts.c.seq.in_(chunk), alerts.c.delivery == Delivery.pending.value)
                .values(
                    delivery=state.value,
                    delivery_attempts=alerts.c.delivery_attempts + 1,
                    delivery_error=error[:500],
                    delivered_at=now,
                )
            )


def _filters(query: AlertQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.severities:
        conditions.append(alerts.c.severity.in_(sorted(int(s) for s in query.severities)))
    if query.types:
        conditions.append(alerts.c.type.in_(sorted(query.types)))
    if query.account_id:
        conditions.append(alerts.c.account_id == query.account_id)
    return conditions


def _alert(row) -> AlertRecord:
    return AlertRecord(
        seq=row.seq,
        signal_id=row.signal_id,
        account_id=row.account_id,
        type=row.type,
        severity=Severity(row.severity),
        evidence=orjson.loads(row.evidence),
        profile=orjson.loads(row.profile),
        risk_band=row.risk_band,
        event_id=row.event_id,
        detected_at=row.detected_at,
        created_at=row.created_at,
        rules_version=row.rules_version,
        delivery=Delivery(row.delivery),
        delivery_attempts=row.delivery_attempts,
        delivery_error=row.delivery_error,
    )
