"""Monitoring's persistence, in SQLite or PostgreSQL (SQLAlchemy Core; schema by Alembic,
tables prefixed `monitoring_` so a database can be shared with limits). One module per concern:

- `accounts`: each account's state, and the states this process committed (`StateCache`);
- `events`: the ids of applied events, to recognise duplicates;
- `alerts`: the alerts, their numbering, and the outbox of signals for limits they also are;
- `leases`: jobs one replica holds at a time;
- `sql`: the dialect SQL they share.

`MonitoringStore` opens the database; a `UnitOfWork` is one transaction over all of them.

The hot paths (the events, accounts and alerts of a batch) go to the driver as plain rows,
without SQLAlchemy's per-row bind processing, which cost more than the database itself: times
in those tables are integer microseconds since the epoch (BIGINT, `EpochMicros`), converted at
the store's boundary, so `AlertRecord` still gives UTC datetimes. On PostgreSQL a batch's rows
travel as one array per column in a single statement.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, event, exc

from services.common.database import create_engine, migrated, transaction
from services.common.errors import Aborted
from services.monitoring.store.accounts import Accounts, StateCache, accounts
from services.monitoring.store.alerts import AlertQuery, AlertRecord, Alerts, Delivery, alerts
from services.monitoring.store.events import Events, events
from services.monitoring.store.leases import Leases
from services.monitoring.store.sql import metadata

__all__ = [
    "MIGRATIONS",
    "AlertQuery",
    "AlertRecord",
    "Delivery",
    "MonitoringStore",
    "StateCache",
    "UnitOfWork",
    "accounts",
    "alerts",
    "events",
    "metadata",
]

MIGRATIONS = Path(__file__).parent.with_name("migrations")
# Account states a process keeps parsed, at most: a busy account's takes about 10 KB of memory
# (its histories are capped), so about 200 MiB when full. CREDITLINE_MONITORING_CACHED_STATES.
CACHED_STATES = 20_000
# Alerts numbered per transaction (see `alerts`).
NUMBERED_AT_ONCE = 10_000
# WAL pages (4 KiB) after which a commit checkpoints them into the SQLite database.
SQLITE_CHECKPOINT_PAGES = 16_000


class UnitOfWork(Accounts, Events, Alerts, Leases):
    """One transaction over monitoring's tables."""

    def __init__(self, connection: Connection, cache: StateCache | None = None) -> None:
        super().__init__(connection, cache)


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
    def unit_of_work(self) -> Iterator[UnitOfWork]:
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

    def number_alerts(self) -> int:
        """Numbers the alerts committed unnumbered (see `alerts`); returns the last number."""
        while True:
            with transaction(self.engine) as connection:
                numbered, last = Alerts(connection).number_alerts(NUMBERED_AT_ONCE)
            if numbered < NUMBERED_AT_ONCE:
                return last

    @contextmanager
    def read(self) -> Iterator[UnitOfWork]:
        with transaction(self.engine, read_only=True) as connection:
            yield UnitOfWork(connection)


def _checkpoint_less_often(dbapi_connection, _record) -> None:
    """Lets SQLite's WAL grow to SQLITE_CHECKPOINT_PAGES before a commit copies it back into
    the database: a batch rewrites pages all over the accounts and alerts, and the same pages
    again the next batch, so copying back after every batch or two (the default, 1,000 pages)
    doubled the cost of a commit. Durability is unchanged: each commit still syncs the WAL."""
    dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
