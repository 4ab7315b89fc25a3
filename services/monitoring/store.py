"""Monitoring's persistence: account profiles, the ids of applied events, the alerts (which
are also the outbox of signals for limits), in SQLite or PostgreSQL (SQLAlchemy Core; schema
by Alembic, tables prefixed `monitoring_` so a database can be shared with limits).

The hot paths (the events, accounts and alerts of a batch) go to the driver as plain rows,
without SQLAlchemy's per-row bind processing, which cost more than the database itself: times
in those tables are integer microseconds since the epoch (BIGINT, `EpochMicros`), converted at
this module's boundary, so `AlertRecord` still gives UTC datetimes. On PostgreSQL a batch's rows
travel as one array per column in a single statement.

Each process keeps the account states it last committed (`StateCache`), each with the row's
`version`, which every write of the row increments under its row lock. A batch reads only the
versions of its accounts (under those locks) and parses the stored state only of those whose
version is not the one cached: another replica, the rescorer or a crash may have written them
since. A state is taken out of the cache while a transaction may change it and put back only
once that transaction has committed, so a rolled-back change is never served.

Alerts are numbered from a counter row that each writing transaction takes last and holds to
its commit, so alerts become visible in the order of their numbers: a reader that has seen
alert n has seen every alert before it, which is what lets WatchAlerts resume from a cursor
with no gap, on any number of replicas.
"""

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    TypeDecorator,
    event,
    exc,
    insert,
    select,
    update,
)

from services.common.database import UtcDateTime, as_utc, create_engine, migrated, transaction
from services.common.errors import Aborted
from services.monitoring.detection import Raised
from services.monitoring.profile import AccountState, Event
from services.monitoring.rules import Severity

MIGRATIONS = Path(__file__).with_name("migrations")
# Ids per IN (...) list: well under SQLite's limit on bound parameters.
CHUNK = 900
ALERT_COUNTER = "alerts"
# Account states a process keeps parsed (a few kB each).
CACHED_STATES = 50_000
# WAL pages (4 KiB) after which a commit checkpoints them into the SQLite database.
SQLITE_CHECKPOINT_PAGES = 16_000


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


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


class EpochMicros(TypeDecorator):
    """A UTC datetime stored as integer microseconds since the epoch (BIGINT)."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> int | None:
        return None if value is None else micros(value)

    def process_result_value(self, value: int | None, dialect) -> datetime | None:
        return None if value is None else EPOCH + value * MICROSECOND


def micros(value: datetime) -> int:
    return (as_utc(value) - EPOCH) // MICROSECOND


metadata = MetaData()

accounts = Table(
    "monitoring_accounts",
    metadata,
    Column("account_id", String, primary_key=True),
    Column("last_sequence", BigInteger, nullable=False),
    Column("profile_version", BigInteger, nullable=False),
    Column("rescore_due", Boolean, nullable=False),
    # Incremented by every write of the row: which state a process may have cached.
    Column("version", BigInteger, nullable=False),
    # The whole AccountState as JSON (see AccountState.to_json): histories, episodes, score.
    Column("state", Text, nullable=False),
    Column("updated_at", EpochMicros, nullable=False),
    Index("ix_monitoring_accounts_rescore_due", "rescore_due", "account_id"),
)

events = Table(
    "monitoring_events",
    metadata,
    Column("event_id", String, primary_key=True),
    Column("account_id", String, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("kind", String, nullable=False),
    Column("occurred_at", EpochMicros, nullable=False),
    Column("ingested_at", EpochMicros, nullable=False),
    # Deliberately no index by account: nothing reads events that way (an account's sequence is
    # in its state), and every batch would otherwise touch a random index page per event. The
    # index by ingestion time only ever grows at its end; retention deletes from its start.
    Index("ix_monitoring_events_ingested_at", "ingested_at"),
)

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

leases = Table(
    "monitoring_leases",
    metadata,
    Column("name", String, primary_key=True),
    Column("owner", String, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)


class MonitoringStore:
    def __init__(self, engine: Engine, cached_states: int = CACHED_STATES) -> None:
        self.engine = engine
        self.states = StateCache(cached_states)

    @classmethod
    def open(cls, url: str, cached_states: int = CACHED_STATES) -> "MonitoringStore":
        """Connects to `url` (sqlite:///path or postgresql+psycopg://...) and migrates it."""
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _checkpoint_less_often)
        return cls(migrated(engine, MIGRATIONS), cached_states)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def unit_of_work(self) -> Iterator["UnitOfWork"]:
        """One write transaction, committed durably when the block exits normally.

        Two batches creating the same new account or event at once: the loser is refused with
        ABORTED and its retry finds the winner's rows.
        """
        try:
            with transaction(self.engine) as connection:
                uow = UnitOfWork(connection, self.states)
                yield uow
        except exc.IntegrityError as error:
            raise Aborted(
                "a concurrent batch wrote the same account or event; retry",
                reason="CONCURRENT_MODIFICATION",
            ) from error
        self.states.put(uow.committed_states())

    @contextmanager
    def read(self) -> Iterator["UnitOfWork"]:
        with transaction(self.engine, read_only=True) as connection:
            yield UnitOfWork(connection)


def _checkpoint_less_often(dbapi_connection, _record) -> None:
    """Lets SQLite's WAL grow to SQLITE_CHECKPOINT_PAGES before a commit copies it back into
    the database: a batch rewrites pages all over the accounts and alerts, and the same pages
    again the next batch, so copying back after every batch or two (the default, 1,000 pages)
    doubled the cost of a commit. Durability is unchanged: each commit still syncs the WAL."""
    dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")


class StateCache:
    """Account states as this process committed them, by account: (row version, state).

    Bounded: past `capacity` the states put back longest ago are dropped first.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._states: dict[str, tuple[int, AccountState]] = {}
        self._lock = threading.Lock()

    def take(self, account_id: str, version: int) -> AccountState | None:
        """The cached state of the account if it is at `version`; it leaves the cache."""
        with self._lock:
            cached = self._states.pop(account_id, None)
        return cached[1] if cached is not None and cached[0] == version else None

    def put(self, states: Iterable[tuple[str, int, AccountState]]) -> None:
        """Caches committed states; none is touched again by whoever put it."""
        with self._lock:
            for account_id, version, state in states:
                cached = self._states.pop(account_id, None)
                # Put back late: a newer state may be here already.
                newest = cached if cached is not None and cached[0] > version else (version, state)
                self._states[account_id] = newest
            while len(self._states) > self.capacity:
                del self._states[next(iter(self._states))]

    def __len__(self) -> int:
        return len(self._states)


class UnitOfWork:
    def __init__(self, connection: Connection, cache: StateCache | None = None) -> None:
        self._connection = connection
        self._postgres = connection.dialect.name == "postgresql"
        self._cache = cache
        # The row versions of the states read under their locks, and the states written.
        self._versions: dict[str, int] = {}
        self._saved: dict[str, AccountState] = {}
        self._rescore_due: dict[str, bool] = {}  # as read, of the same rows

    def committed_states(self) -> list[tuple[str, int, AccountState]]:
        """The states this transaction wrote with their new versions (for the cache, once it
        has committed); those of rows it did not read under their lock are left out."""
        return [
            (account_id, self._versions[account_id] + 1, state)
            for account_id, state in self._saved.items()
            if account_id in self._versions
        ]

    # -- events and accounts ----------------------------------------------------------------

    def seen_event_ids(self, event_ids: Iterable[str]) -> set[str]:
        rows = self._select_in(events, "event_id", "event_id", event_ids, lock=False)
        return {event_id for (event_id,) in rows}

    def account_states(self, account_ids: Iterable[str], lock: bool) -> dict[str, AccountState]:
        """The stored states of these accounts (absent ones are missing); `lock` takes their
        row locks on PostgreSQL (SQLite's write transaction already holds the database)."""
        found: dict[str, AccountState] = {}
        if lock and self._cache is not None:
            # The versions first, under the locks; then the states not cached at that version.
            columns = "account_id, version, rescore_due"
            versions = self._select_in(accounts, columns, "account_id", account_ids, lock=True)
            missing = []
            for account_id, version, rescore_due in versions:
                self._versions[account_id] = version
                self._rescore_due[account_id] = bool(rescore_due)
                state = self._cache.take(account_id, version)
                if state is None:
                    missing.append(account_id)
                else:
                    found[account_id] = state
            account_ids, lock_again = missing, False  # locked already
        else:
            lock_again = lock
        columns = "account_id, version, rescore_due, state"
        for account_id, version, rescore_due, text in self._select_in(
            accounts, columns, "account_id", account_ids, lock_again
        ):
            if lock:
                self._versions[account_id] = version
                self._rescore_due[account_id] = bool(rescore_due)
            found[account_id] = AccountState.from_json(text)
        return found

    def account_state(self, account_id: str) -> AccountState | None:
        return self.account_states([account_id], lock=False).get(account_id)

    def save_events(self, applied: Sequence[Event], now: datetime) -> None:
        at = micros(now)
        rows = [
            (e.event_id, e.account_id, e.sequence, e.kind.value, _micros(e.at), at) for e in applied
        ]
        self._insert(events, rows)

    def save_states(
        self, states: Iterable[AccountState], existing: set[str], now: datetime
    ) -> None:
        """Inserts the new accounts and updates the `existing` ones.

        An insert, not an upsert, for the new ones: two batches that both opened an account
        must not both succeed (the second is refused with a conflict, and its retry sees the
        first's account).
        """
        at = micros(now)
        new, old = [], []
        for s in states:
            self._saved[s.account_id] = s
            values = (s.last_sequence, s.profile_version, s.rescore_due)
            if s.account_id in existing:
                old.append((s.account_id, *values, s.to_json(), at))
            else:
                self._versions[s.account_id] = 0
                new.append((s.account_id, *values, 1, s.to_json(), at))
        self._insert(accounts, new)
        if not old:
            return
        columns: tuple[str, ...] = (
            "account_id",
            "last_sequence",
            "profile_version",
            "rescore_due",
            "state",
            "updated_at",
        )
        if self._postgres:
            assignments = ", ".join(f"{c} = v.{c}" for c in columns[1:])
            self._connection.exec_driver_sql(
                f"UPDATE monitoring_accounts AS a SET {assignments}, version = a.version + 1 "
                f"FROM {_unnest(accounts, columns)} AS v({', '.join(columns)}) "
                "WHERE a.account_id = v.account_id",
                _by_column(old),
            )
            return
        # SQLite rewrites the entries of every index on a column the SET names, whatever its
        # value: leave rescore_due out where it stays (most rows), sparing a random page each.
        flagged = self._rescore_due
        kept = [row for row in old if flagged.get(row[0]) == row[3]]
        if len(kept) < len(old):
            assignments = ", ".join(f"{c} = ?" for c in columns[1:])
            self._connection.exec_driver_sql(
                f"UPDATE monitoring_accounts SET {assignments}, version = version + 1 "
                "WHERE account_id = ?",
                [(*row[1:], row[0]) for row in old if flagged.get(row[0]) != row[3]],
            )
        if kept:
            columns = columns[:3] + columns[4:]
            assignments = ", ".join(f"{c} = ?" for c in columns[1:])
            self._connection.exec_driver_sql(
                f"UPDATE monitoring_accounts SET {assignments}, version = version + 1 "
                "WHERE account_id = ?",
                [(*row[1:3], *row[4:], row[0]) for row in kept],
            )

    def _select_in(
        self, table: Table, columns: str, key: str, keys: Iterable[str], lock: bool
    ) -> Sequence[Row]:
        """`columns` of the rows of `table` whose `key` is one of `keys`."""
        keys = sorted(set(keys))
        if not keys:
            return []
        if self._postgres:
            sql = f"SELECT {columns} FROM {table.name} WHERE {key} = ANY(%b)"
            if lock:  # in key order: replicas locking overlapping batches cannot deadlock
                sql += f" ORDER BY {key} FOR UPDATE"
            return self._connection.exec_driver_sql(sql, (keys,)).fetchall()
        # One JSON array for any number of keys: no limit on bound parameters to chunk for.
        sql = f"SELECT {columns} FROM {table.name} WHERE {key} IN (SELECT value FROM json_each(?))"
        return self._connection.exec_driver_sql(sql, (orjson.dumps(keys).decode(),)).fetchall()

    def _insert(self, table: Table, rows: list[tuple]) -> None:
        """Inserts `rows` (values of the table's columns in order, but those left at NULL)."""
        if not rows:
            return
        columns = [c.name for c in table.columns][: len(rows[0])]
        if self._postgres:
            self._connection.exec_driver_sql(
                f"INSERT INTO {table.name} ({', '.join(columns)}) "
                f"SELECT * FROM {_unnest(table, columns)}",
                _by_column(rows),
            )
        else:
            self._connection.exec_driver_sql(
                f"INSERT INTO {table.name} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                rows,
            )

    def forget_events_before(self, cutoff: datetime, limit: int) -> int:
        """Deletes up to `limit` of the ids of events ingested before `cutoff`; returns how many.

        A forgotten event sent again is still never applied twice: its sequence is at or below
        its account's last, so it is refused as out of sequence.
        """
        oldest = (
            select(events.c.event_id)
            .where(events.c.ingested_at < cutoff)
            .order_by(events.c.ingested_at)
            .limit(limit)
        )
        deleted = self._connection.execute(
            events.delete().where(events.c.event_id.in_(oldest.scalar_subquery()))
        )
        return deleted.rowcount

    def accounts_due_for_rescoring(self, limit: int) -> list[str]:
        query = (
            select(accounts.c.account_id)
            .where(accounts.c.rescore_due.is_(True))
            .order_by(accounts.c.account_id)
            .limit(limit)
        )
        return list(self._connection.execute(query).scalars())

    # -- alerts -----------------------------------------------------------------------------

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
                    _micros(r.detected_at),
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
        for chunk in _chunks(sorted(set(signal_ids))):
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
        for chunk in _chunks(list(seqs)):
            self._connection.execute(
                update(alerts)
                .where(alerts.c.seq.in_(chunk))
                .values(
                    delivery_attempts=alerts.c.delivery_attempts + 1, delivery_error=error[:500]
                )
            )

    def _set_delivery(self, seqs: Sequence[int], state: Delivery, error: str, now: datetime):
        for chunk in _chunks(list(seqs)):
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

    def release_lease(self, name: str, owner: str) -> None:
        """Gives up the named lease if `owner` holds it."""
        self._connection.execute(
            leases.delete().where(leases.c.name == name, leases.c.owner == owner)
        )

    def take_lease(self, name: str, owner: str, now: datetime, seconds: float) -> bool:
        """Takes or renews the named lease for `owner` unless another owner holds it."""
        expires = now + timedelta(seconds=seconds)
        query = select(leases.c.owner, leases.c.expires_at).where(leases.c.name == name)
        if self._postgres:
            query = query.with_for_update()
        row = self._connection.execute(query).first()
        if row is None:
            self._connection.execute(
                insert(leases).values(name=name, owner=owner, expires_at=expires)
            )
            return True
        if row.owner != owner and row.expires_at > now:
            return False
        self._connection.execute(
            update(leases).where(leases.c.name == name).values(owner=owner, expires_at=expires)
        )
        return True


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


def _micros(epoch_seconds: float) -> int:
    return round(epoch_seconds * 1_000_000)


_ARRAY_TYPES = ((Boolean, "boolean[]"), (BigInteger, "bigint[]"), (Integer, "integer[]"))


def _unnest(table: Table, columns: Sequence[str]) -> str:
    """unnest(%b::type[], ...) over `columns` of `table`: one array parameter per column, sent
    in binary (%b): psycopg escapes every element of a text-format array with a regex."""
    types = []
    for name in columns:
        column_type = table.c[name].type
        if isinstance(column_type, TypeDecorator):
            column_type = column_type.impl_instance
        array = next((a for t, a in _ARRAY_TYPES if isinstance(column_type, t)), "text[]")
        types.append(f"%b::{array}")
    return f"unnest({', '.join(types)})"


def _by_column(rows: list[tuple]) -> tuple[list, ...]:
    return tuple(list(column) for column in zip(*rows, strict=True))


def _chunks(items: list) -> Iterator[list]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
