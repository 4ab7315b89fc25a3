"""Accounts: each one's stored state, and the states this process last committed (`StateCache`).

Each process keeps the account states it last committed, each with the row's `version`, which
every write of the row increments under its row lock. A batch reads only the versions of its
accounts (under those locks) and parses the stored state only of those whose version is not
the one cached: another replica, the rescorer or a crash may have written them since. A state
is taken out of the cache while a transaction may change it and put back only once that
transaction has committed, so a rolled-back change is never served.
"""

import threading
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Index,
    String,
    Table,
    Text,
    select,
    text,
    update,
)

from services.monitoring.profile import AccountState
from services.monitoring.store.sql import (
    EpochMicros,
    Room,
    by_column,
    chunks,
    metadata,
    micros,
    unnest,
)

accounts = Table(
    "monitoring_accounts",
    metadata,
    Column("account_id", String, primary_key=True),
    Column("last_sequence", BigInteger, nullable=False),
    Column("profile_version", BigInteger, nullable=False),
    Column("rescore_due", Boolean, nullable=False),
    # Incremented by every write of the row: which state a process may have cached.
    Column("version", BigInteger, nullable=False),
    # The whole AccountState as JSON by field name, versioned (see AccountState.to_json).
    Column("state", Text, nullable=False),
    Column("updated_at", EpochMicros, nullable=False),
    # Until when one replica's rescorer holds the account (see `claim_rescoring`).
    Column("rescore_claimed_until", EpochMicros),
    Index("ix_monitoring_accounts_rescore_due", "rescore_due", "account_id"),
)


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


class Accounts(Room):
    def __init__(self, connection: Connection, cache: StateCache | None = None) -> None:
        super().__init__(connection)
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
        for account_id, version, rescore_due, document in self._select_in(
            accounts, columns, "account_id", account_ids, lock_again
        ):
            if lock:
                self._versions[account_id] = version
                self._rescore_due[account_id] = bool(rescore_due)
            found[account_id] = AccountState.from_json(document)
        return found

    def account_state(self, account_id: str) -> AccountState | None:
        return self.account_states([account_id], lock=False).get(account_id)

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
                f"FROM {unnest(accounts, columns)} AS v({', '.join(columns)}) "
                "WHERE a.account_id = v.account_id",
                by_column(old),
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

    def accounts_due_for_rescoring(self, limit: int) -> list[str]:
        query = (
            select(accounts.c.account_id)
            .where(accounts.c.rescore_due.is_(True))
            .order_by(accounts.c.account_id)
            .limit(limit)
        )
        return list(self._connection.execute(query).scalars())

    def claim_rescoring(self, limit: int, now: datetime, until: datetime) -> list[str]:
        """Claims up to `limit` accounts due for rescoring that no replica holds, until
        `until`; returns their ids. The claim is in the account's row: a replica that claims
        concurrently skips the rows being claimed (SKIP LOCKED) and, once claimed, sees them
        held. SQLite's one writer claims alone."""
        lock = " FOR UPDATE SKIP LOCKED" if self._postgres else ""
        claimable = (
            "SELECT account_id FROM monitoring_accounts WHERE rescore_due "
            "AND (rescore_claimed_until IS NULL OR rescore_claimed_until < :now) "
            f"ORDER BY account_id LIMIT :limit{lock}"
        )
        # The rows' version stays: a claim changes no state a process may have cached.
        claimed = self._connection.execute(
            text(
                "UPDATE monitoring_accounts SET rescore_claimed_until = :until "
                f"WHERE account_id IN ({claimable}) RETURNING account_id"
            ),
            {"now": micros(now), "until": micros(until), "limit": limit},
        )
        return sorted(claimed.scalars())

    def release_rescoring(self, account_ids: Iterable[str]) -> None:
        """Lets go of the rescoring claims on these accounts."""
        if self._postgres:
            # Their rows locked in key order, as a batch locks its accounts: locked in the
            # order the plan met them (a scan of the table, in physical order), a release and
            # a batch could each hold a row the other waits for, and one was refused as a
            # deadlock.
            self._connection.exec_driver_sql(
                "UPDATE monitoring_accounts SET rescore_claimed_until = NULL WHERE account_id IN "
                "(SELECT account_id FROM monitoring_accounts WHERE account_id = ANY(%b) "
                "ORDER BY account_id FOR UPDATE)",
                (sorted(set(account_ids)),),
            )
            return
        for chunk in chunks(sorted(account_ids)):
            self._connection.execute(
                update(accounts)
                .where(accounts.c.account_id.in_(chunk))
                .values(rescore_claimed_until=None)
            )
