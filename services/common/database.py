"""Database engines, transactions and schema migrations that every service's store shares.

SQLite and PostgreSQL through SQLAlchemy Core. Durability: SQLite runs in WAL mode with
`synchronous=FULL` (survives power loss), PostgreSQL keeps `synchronous_commit=on`.
"""

import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, DateTime, Engine, TypeDecorator, event, exc, make_url, text

from services.common.errors import Aborted, Unavailable

SQLITE_BUSY_TIMEOUT_SECONDS = 30
SQLITE_PRAGMAS = (
    # First, so that the pragmas after it also wait for a busy database instead of failing.
    f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
)

# Execution option that makes a SQLite transaction start with a plain (deferred) BEGIN.
_SQLITE_READ_ONLY = "creditline_sqlite_read_only"

# Each SQLite engine's writers in this process queue here for the database's write lock, one
# at a time, instead of in SQLite's busy handler, which sleeps and polls (1, 2, 5, ... 100 ms)
# and so leaves the lock idle while writers sleep. Other processes still wait in the handler.
_sqlite_writers: "weakref.WeakKeyDictionary[Engine, threading.RLock]" = weakref.WeakKeyDictionary()

# pg_advisory_xact_lock key held while any service's migrations run ("credit" in ASCII).
MIGRATION_LOCK_KEY = 0x637265646974

# SQLSTATEs of a PostgreSQL transaction that lost to a concurrent one and may simply be retried.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
# SQLite's primary result codes for a database that is busy or cannot be used right now: BUSY,
# LOCKED, IOERR, FULL, CANTOPEN. (It reports bugs such as "no such table" as errors too.)
_SQLITE_UNAVAILABLE_CODES = frozenset({5, 6, 10, 13, 14})


def create_engine(url: str) -> Engine:
    """An engine for a SQLite or PostgreSQL URL, configured for durable, serialised writes.

    On SQLite every transaction that `transaction` opens for writing starts with
    `BEGIN IMMEDIATE`, so it holds the database write lock from its first statement.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _create_sqlite_engine(parsed)
        _sqlite_writers[engine] = threading.RLock()
        return engine
    # Fail at start, rather than hang, when the server does not answer.
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
    return sqlalchemy.create_engine(
        parsed,
        pool_pre_ping=True,
        # Servers and proxies drop idle connections; replace them before that happens.
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _create_sqlite_engine(url: sqlalchemy.URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(url)

    @event.listens_for(engine, "connect")
    def configure_connection(dbapi_connection, _record) -> None:
        # Take BEGIN away from the sqlite3 driver (it defers it and skips it for DDL and
        # SELECT); the "begin" listener below emits it instead (SQLAlchemy's pysqlite recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        _enable_wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        # A deferred transaction that later writes fails at once with "database is locked"
        # in WAL mode when another writer got in first; IMMEDIATE waits for the lock instead.
        read_only = connection.get_execution_options().get(_SQLITE_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _enable_wal(cursor) -> None:
    """Switches the database to WAL journaling (a setting it keeps).

    The switch needs the database to itself, and SQLite answers "database is locked" at once,
    without its busy handler, while another connection is opening the same new file: so wait
    here, as the busy timeout would.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode=WAL").fetchone()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if mode.lower() != "wal":
            raise RuntimeError(f"SQLite cannot use WAL journaling here (journal_mode={mode})")
        return


@contextmanager
def transaction(engine: Engine, *, read_only: bool = False) -> Iterator[Connection]:
    """One transaction, committed when the block exits normally and rolled back otherwise.

    A write transaction holds the write lock on SQLite from its start; a read-only one takes
    no lock there and is `READ ONLY` on PostgreSQL. Database failures come out as service
    errors: `Aborted` for a transaction that lost to a concurrent one, `Unavailable` when the
    database cannot be reached or stays locked.
    """
    writers = None if read_only else _sqlite_writers.get(engine)
    if writers is None:
        with _transaction(engine, read_only) as connection:
            yield connection
        return
    if not writers.acquire(timeout=SQLITE_BUSY_TIMEOUT_SECONDS):
        raise Unavailable("the database is unavailable; retry later", reason="DATABASE_UNAVAILABLE")
    try:
        with _transaction(engine, read_only) as connection:
            yield connection
    finally:
        writers.release()


@contextmanager
def _transaction(engine: Engine, read_only: bool) -> Iterator[Connection]:
    try:
        with engine.connect() as connection:
            if read_only:
                connection.execution_options(**_read_only_options(engine))
            with connection.begin():
                yield connection
    except exc.DBAPIError as error:
        sqlstate = getattr(error.orig, "sqlstate", None)
        if sqlstate in _RETRYABLE_SQLSTATES:
            raise Aborted(
                "the transaction conflicted with a concurrent one; retry",
                reason="CONCURRENT_MODIFICATION",
            ) from error
        if _is_unavailable(error):
            raise Unavailable(
                "the database is unavailable; retry later", reason="DATABASE_UNAVAILABLE"
            ) from error
        raise


def _is_unavailable(error: exc.DBAPIError) -> bool:
    sqlite_code = getattr(error.orig, "sqlite_errorcode", None)
    if sqlite_code is not None:
        return sqlite_code & 0xFF in _SQLITE_UNAVAILABLE_CODES
    return error.connection_invalidated or isinstance(
        error, exc.OperationalError | exc.InterfaceError
    )


def _read_only_options(engine: Engine) -> dict[str, bool]:
    if engine.dialect.name == "postgresql":
        return {"postgresql_readonly": True}
    return {_SQLITE_READ_ONLY: True}


def migrated(engine: Engine, script_location: str | Path) -> Engine:
    """`engine` once its schema is at the newest revision (see `migrate`); disposed of when the
    migration fails, so a service that cannot start leaves no connection open."""
    try:
        migrate(engine, script_location)
    except BaseException:
        engine.dispose()
        raise
    return engine


def migrate(engine: Engine, script_location: str | Path, revision: str = "head") -> None:
    """Upgrades the schema to the newest revision of the Alembic scripts at `script_location`
    (or to `revision`, for tests that start from an older schema).

    Safe to run again (a schema at the newest revision is left alone) and from several
    replicas at once: the upgrade runs in one transaction that first takes the SQLite write
    lock (BEGIN IMMEDIATE) or a PostgreSQL advisory lock, so a second replica waits and then
    finds nothing to do. The scripts' env.py runs on `config.attributes["connection"]`.
    """
    config = Config()
    # The value goes through configparser interpolation, where "%" is special.
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # SQLite changes a table's key by copying the table; with foreign keys enforced,
            # dropping a table others refer to fails even when its copy takes its place. So
            # the SQLite procedure: off outside the transaction, checked before the commit.
            _sqlite_foreign_keys(connection, on=False)
        try:
            with connection.begin():
                if not sqlite:
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise RuntimeError("the migration left rows whose foreign keys fail")
        finally:
            if sqlite:
                _sqlite_foreign_keys(connection, on=True)


def _sqlite_foreign_keys(connection: Connection, *, on: bool) -> None:
    """Foreign key enforcement on or off; a no-op inside a transaction, so outside one."""
    sqlite_connection = connection.connection.driver_connection
    assert sqlite_connection is not None  # a live connection, checked out of the pool
    sqlite_connection.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


class UtcDateTime(TypeDecorator):
    """A timezone-aware datetime, stored in UTC and read back with tzinfo UTC on any database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        # SQLite keeps no offset: it stores the UTC wall time.
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive datetime is refused rather than guessed."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"a naive datetime cannot be stored: {value!r}; use UTC")
    return value.astimezone(UTC)


def run_migrations(service: str) -> None:
    """The body of a service's Alembic env.py: runs on the connection `migrate` passes in."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(f"run the {service} migrations with services.common.database.migrate")
    context.configure(
        connection=connection,
        # A table of its own, so that services sharing one database keep separate histories.
        version_table=f"{service}_alembic_version",
        # SQLite alters tables only by copying them; revisions need batch operations.
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
