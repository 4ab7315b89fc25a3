"""The dialect SQL of monitoring's store: times as integer microseconds, and rows sent to the
driver as plain tuples, without SQLAlchemy's per-row bind processing, which cost more than the
database itself on the hot paths. On PostgreSQL new rows are copied in (COPY, binary) and rows
to change go as one array per column."""

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    Integer,
    MetaData,
    Row,
    Table,
    TypeDecorator,
    exc,
)

from services.common.database import as_utc

# Ids per IN (...) list: well under SQLite's limit on bound parameters.
CHUNK = 900
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

metadata = MetaData()


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


def epoch_micros(epoch_seconds: float) -> int:
    return round(epoch_seconds * 1_000_000)


class Room:
    """What every part of a unit of work shares: its connection and the dialect's plain SQL."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._postgres = connection.dialect.name == "postgresql"

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
            self._copy(table, columns, rows)
        else:
            self._connection.exec_driver_sql(
                f"INSERT INTO {table.name} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                rows,
            )

    def _copy(self, table: Table, columns: Sequence[str], rows: Iterable[tuple]) -> None:
        """COPY `rows` into `columns` of `table` (PostgreSQL), in binary: psycopg formats each
        row in C, where one array per column is built element by element in Python. Errors
        come out as SQLAlchemy's, as from any other statement."""
        statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        dbapi_connection = self._connection.connection.driver_connection
        assert dbapi_connection is not None, "a connection in use has its driver's"
        try:
            with dbapi_connection.cursor() as cursor, cursor.copy(statement) as copy:
                copy.set_types([postgres_type(table, name) for name in columns])
                for row in rows:
                    copy.write_row(row)
        except psycopg.Error as error:
            raise exc.DBAPIError.instance(statement, None, error, psycopg.Error) from error


_TYPES = ((Boolean, "boolean"), (BigInteger, "bigint"), (Integer, "integer"))


def postgres_type(table: Table, column: str) -> str:
    """The PostgreSQL type of `column` of `table` as the hot paths send it."""
    column_type = table.c[column].type
    if isinstance(column_type, TypeDecorator):
        column_type = column_type.impl_instance
    return next((name for kind, name in _TYPES if isinstance(column_type, kind)), "text")


def unnest(table: Table, columns: Sequence[str]) -> str:
    """unnest(%b::type[], ...) over `columns` of `table`: one array parameter per column, sent
    in binary (%b): psycopg escapes every element of a text-format array with a regex."""
    types = [f"%b::{postgres_type(table, name)}[]" for name in columns]
    return f"unnest({', '.join(types)})"


def by_column(rows: list[tuple]) -> tuple[list, ...]:
    return tuple(list(column) for column in zip(*rows, strict=True))


def chunks(items: list) -> Iterator[list]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
