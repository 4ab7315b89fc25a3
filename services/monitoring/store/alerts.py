"""Alerts, numbered in the order they become visible, and the outbox of signals for limits
that they also are (`delivery`).

WatchAlerts resumes from a cursor, the alert's number, with no gap and no repeat: a reader that
has seen alert n must have seen every alert numbered below n. So numbers are given in the order
alerts become visible, and the counter's value (the head) is committed with them:

- On PostgreSQL a batch stores its alerts unnumbered (`seq` NULL), ordered among themselves by
  `id` from a sequence, which takes no lock: replicas' batches never wait on one another for
  alerts. After the commit, a short transaction of its own (`number_alerts`) takes the counter
  row, numbers every committed unnumbered alert in `id` order, and moves the counter on. Those
  transactions are one at a time, but do nothing else; a batch's own takes one round trip or
  two, and finds its alerts already numbered when another replica's got there first. An
  account's alerts are written under its row lock, so their ids, and numbers, follow its order.
  Alerts left unnumbered by a crash between the two are numbered by the next `number_alerts`
  (signal delivery runs one before each round).
- SQLite has one writer at a time anyway: the batch's transaction numbers its alerts itself.

Readers see only numbered alerts, and read the head before the alerts up to it.
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
from services.monitoring.store.sql import (
    EpochMicros,
    Room,
    by_column,
    chunks,
    epoch_micros,
    metadata,
    micros,
    unnest,
)

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
    Column("account_id", String, primary_key=True),
    Column("signal_id", String, primary_key=True),
    # The order raised (a sequence on PostgreSQL), and the number once visible (see above).
    Column("id", BigInteger, nullable=False),
    Column("seq", BigInteger),
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
    Index("ix_monitoring_alerts_seq", "seq"),
    Index("ix_monitoring_alerts_account_id_seq", "account_id", "seq"),
    Index("ix_monitoring_alerts_delivery_seq", "delivery", "seq"),
)
ALERT_IDS = "monitoring_alert_ids"  # the PostgreSQL sequence of `id`
_COLUMNS = tuple(c.name for c in alerts.columns)[:-1]  # delivered_at is left NULL

counters = Table(
    "monitoring_counters",
    metadata,
    Column("name", String, primary_key=True),
    Column("value", BigInteger, nullable=False),
)


class Alerts(Room):
    def add_alerts(self, raised: Sequence[Raised], rules_version: str, now: datetime) -> None:
        """Stores the signals as alerts, in order; on PostgreSQL unnumbered until the commit
        is followed by `number_alerts`, on SQLite numbered at once."""
        if not raised:
            return
        at = micros(now)
        profiles: dict[int, str] = {}  # one account's alerts of a batch share its profile
        rows = []
        for r in raised:
            profile = profiles.get(id(r.profile))
            if profile is None:
                profile = profiles[id(r.profile)] = orjson.dumps(r.profile).decode()
            rows.append(
                (
                    r.account_id,
                    r.signal_id,
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
        columns = [c for c in _COLUMNS if c not in ("id", "seq")]
        if self._postgres:
            # Their ids first, in order (the account rows are locked already), then the rows.
            ids = self._connection.exec_driver_sql(
                f"SELECT nextval('{ALERT_IDS}') FROM generate_series(1, %(count)s) ORDER BY 1",
                {"count": len(rows)},
            ).scalars()
            numbered = [(i, *row) for i, row in zip(ids.all(), rows, strict=True)]
            self._copy(alerts, ("id", *columns), numbered)
            return
        first = self._move_head(len(rows)) - len(rows) + 1
        self._connection.exec_driver_sql(
            f"INSERT INTO monitoring_alerts (id, seq, {', '.join(columns)}) "
            f"VALUES ({', '.join('?' * (len(columns) + 2))})",
            [(first + i, first + i, *row) for i, row in enumerate(rows)],
        )

    def number_alerts(self, limit: int = 10_000) -> tuple[int, int]:
        """Numbers up to `limit` committed unnumbered alerts (PostgreSQL: see the module);
        returns how many, and the last number."""
        if not self._postgres or not self.any_unnumbered_alerts():
            return 0, self.last_alert_number()
        head = self._connection.execute(
            select(counters.c.value).where(counters.c.name == ALERT_COUNTER).with_for_update()
        ).scalar_one()
        # A statement after the lock: it sees every numbering committed before ours.
        keys = self._connection.exec_driver_sql(
            "SELECT account_id, signal_id FROM monitoring_alerts WHERE seq IS NULL "
            "ORDER BY id LIMIT %(limit)s",
            {"limit": limit},
        ).fetchall()
        if not keys:
            return 0, int(head)
        rows = [(a, s, head + i) for i, (a, s) in enumerate(keys, start=1)]
        self._connection.exec_driver_sql(
            "UPDATE monitoring_alerts AS a SET seq = v.seq "
            f"FROM {unnest(alerts, ('account_id', 'signal_id', 'seq'))} "
            "AS v(account_id, signal_id, seq) "
            "WHERE a.account_id = v.account_id AND a.signal_id = v.signal_id",
            by_column(rows),
        )
        return len(rows), self._move_head(len(rows))

    def _move_head(self, count: int) -> int:
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

    def alerts_by_signal_id(self, account_id: str, signal_ids: Iterable[str]) -> list[AlertRecord]:
        """The account's numbered alerts of these signal ids, in order."""
        found: list[AlertRecord] = []
        for chunk in chunks(sorted(set(signal_ids))):
            statement = select(alerts).where(
                alerts.c.account_id == account_id,
                alerts.c.signal_id.in_(chunk),
                alerts.c.seq.is_not(None),
            )
            found.extend(_alert(row) for row in self._connection.execute(statement))
        return sorted(found, key=lambda a: a.seq)

    def any_unnumbered_alerts(self) -> bool:
        """Whether a committed alert waits for its number (PostgreSQL, between a commit and
        `number_alerts`)."""
        unnumbered = select(alerts.c.id).where(alerts.c.seq.is_(None)).limit(1)
        return self._connection.execute(unnumbered).first() is not None

    def last_alert_number(self) -> int:
        query = select(counters.c.value).where(counters.c.name == ALERT_COUNTER)
        return int(self._connection.execute(query).scalar_one())

    # -- the outbox -------------------------------------------------------------------------

    def pending_signals(self, limit: int) -> list[AlertRecord]:
        statement = (
            select(alerts)
            .where(alerts.c.delivery == Delivery.pending.value, alerts.c.seq.is_not(None))
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
    conditions: list[ColumnElement[bool]] = [alerts.c.seq.is_not(None)]
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
