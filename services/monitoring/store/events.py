"""Applied events: their ids, to recognise a duplicate, kept for the retention window. An event
id is one account's: the key is (account_id, event_id)."""

from collections.abc import Iterable, Sequence
from datetime import datetime

import orjson
from sqlalchemy import BigInteger, Column, Index, String, Table

from services.monitoring.profile import Event
from services.monitoring.store.sql import (
    EpochMicros,
    Room,
    by_column,
    epoch_micros,
    metadata,
    micros,
)

events = Table(
    "monitoring_events",
    metadata,
    Column("account_id", String, primary_key=True),
    Column("event_id", String, primary_key=True),
    Column("sequence", BigInteger, nullable=False),
    Column("kind", String, nullable=False),
    Column("occurred_at", EpochMicros, nullable=False),
    Column("ingested_at", EpochMicros, nullable=False),
    # Deliberately no index by account: nothing reads events that way (an account's sequence is
    # in its state), and every batch would otherwise touch a random index page per event. The
    # index by ingestion time only ever grows at its end; retention deletes from its start.
    Index("ix_monitoring_events_ingested_at", "ingested_at"),
)


class Events(Room):
    def seen_events(self, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (account_id, event_id) were applied before."""
        keys = sorted(set(keys))
        if not keys:
            return set()
        if self._postgres:
            rows = self._connection.exec_driver_sql(
                "SELECT account_id, event_id FROM monitoring_events "
                "WHERE (account_id, event_id) IN (SELECT * FROM unnest(%b::text[], %b::text[]))",
                by_column(keys),
            )
        else:
            rows = self._connection.exec_driver_sql(
                "SELECT account_id, event_id FROM monitoring_events WHERE (account_id, event_id) "
                "IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') "
                "FROM json_each(?))",
                (orjson.dumps(keys).decode(),),
            )
        return {(account_id, event_id) for account_id, event_id in rows}

    def save_events(self, applied: Sequence[Event], now: datetime) -> None:
        at = micros(now)
        rows = [
            (e.account_id, e.event_id, e.sequence, e.kind.value, epoch_micros(e.at), at)
            for e in applied
        ]
        self._insert(events, rows)

    def forget_events_before(self, cutoff: datetime, limit: int) -> int:
        """Deletes up to `limit` of the ids of events ingested before `cutoff`; returns how many.

        A forgotten event sent again is still never applied twice: its sequence is at or below
        its account's last, so it is refused as out of sequence.
        """
        if self._postgres:
            # Several replicas run retention: each deletes rows no other is deleting.
            deleted = self._connection.exec_driver_sql(
                "DELETE FROM monitoring_events WHERE (account_id, event_id) IN ("
                "SELECT account_id, event_id FROM monitoring_events WHERE ingested_at < %(cutoff)s "
                "ORDER BY ingested_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)",
                {"cutoff": micros(cutoff), "limit": limit},
            )
        else:  # the one writer
            deleted = self._connection.exec_driver_sql(
                "DELETE FROM monitoring_events WHERE rowid IN (SELECT rowid FROM monitoring_events "
                "WHERE ingested_at < ? ORDER BY ingested_at LIMIT ?)",
                (micros(cutoff), limit),
            )
        return deleted.rowcount
