"""The limits service's persistence: accounts, their decision history, appeals, signals, review
runs and idempotency records, in SQLite or PostgreSQL (SQLAlchemy Core; schema by Alembic).

Columns hold what is queried; nested values (reasons, notices, details, hardship, reason texts)
are JSON text. Money is BIGINT fen; times are stored in UTC and read back timezone-aware.
"""

import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    RowMapping,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from services.common.database import UtcDateTime, as_utc, create_engine, migrated, transaction
from services.common.errors import Aborted, AlreadyExists, NotFound
from services.limits.collections import StepKind, StopReason, TreatmentStep
from services.limits.ledger import AccountStatus, Line
from services.limits.records import (
    Account,
    ActorKind,
    Appeal,
    AppealStatus,
    CustomerNotice,
    EventType,
    Hardship,
    LimitEvent,
    Notice,
    NoticeType,
    Reason,
    ReasonSource,
    RiskState,
)

MIGRATIONS = Path(__file__).with_name("migrations")

REVIEWABLE_STATUSES = (AccountStatus.active.value, AccountStatus.watchlist.value)
OPEN_STATUSES = (*REVIEWABLE_STATUSES, AccountStatus.frozen.value)
# A review run's shards split these buckets of account ids between them (at most one shard a
# bucket); an account's bucket is fixed at opening (see `review_bucket`).
REVIEW_BUCKETS = 1024


def review_bucket(account_id: str) -> int:
    """The account's review bucket: a hash of its id that every process computes alike."""
    return zlib.crc32(account_id.encode()) % REVIEW_BUCKETS


@dataclass(frozen=True)
class IdempotencyRecord:
    """The first answer given to a request_id, replayed to every retry of it."""

    method: str
    fingerprint: str
    response: bytes
    created_at: datetime


@dataclass(frozen=True)
class SignalRecord:
    """A monitoring signal already applied, and the event it caused (None if it changed nothing)."""

    signal_id: str
    account_id: str
    event_id: str | None
    applied_at: datetime


@dataclass(frozen=True)
class ReviewRun:
    """A review run: what it reviews, into how many shards it is split, whether it is done."""

    run_id: str
    as_of: datetime
    dry_run: bool
    shards: int = 1
    done: bool = False


@dataclass(frozen=True)
class ReviewShard:
    """One shard of a run: the accounts of buckets [first_bucket, end_bucket), how far it got
    (it resumes after the account `after`, a (bucket, account_id) position), and the worker
    holding its lease, if any."""

    run_id: str
    shard: int
    first_bucket: int
    end_bucket: int
    after: tuple[int, str] = (-1, "")
    counts: dict[str, int] = field(default_factory=dict)
    done: bool = False
    worker_id: str | None = None
    lease_until: datetime | None = None


def _event_reference(table: str) -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["account_id", "event_id"],
        ["limit_events.account_id", "limit_events.event_id"],
        name=f"fk_{table}_event_id",
    )


# The tables as the migrations in MIGRATIONS leave them; a test checks that the two agree.
metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String, primary_key=True),
    Column("customer_id", String, nullable=False),
    Column("currency_code", String, nullable=False),
    Column("credit_line", BigInteger, nullable=False),
    Column("drawn", BigInteger, nullable=False),
    Column("status", String, nullable=False),
    Column("customer_cap", BigInteger),
    Column("in_hardship", Boolean, nullable=False),
    Column("opened_at", UtcDateTime, nullable=False),
    Column("tier", String),
    Column("risk_band", String),
    Column("reopening_stage", Integer, nullable=False),
    Column("line_before_closure", BigInteger),
    Column("suspended_at", UtcDateTime),
    Column("next_review_at", UtcDateTime),
    Column("automatic_increases", Boolean, nullable=False),
    Column("hardship", Text),
    Column("on_time_streak", Integer, nullable=False),
    Column("last_on_time_repayment_at", UtcDateTime),
    Column("days_past_due", Integer, nullable=False),
    Column("version", BigInteger, nullable=False),
    # The risk state monitoring reports (records.RiskState): the behaviour features (JSON)
    # and the event time they describe, delinquency by loan (JSON), the behaviour band.
    Column("behaviour_profile", Text),
    Column("profile_at", UtcDateTime),
    Column("loans_past_due", Text),
    Column("past_due_since", UtcDateTime),
    Column("behaviour_band", String),
    Column("behaviour_scored_at", UtcDateTime),
    Column("last_warning_at", UtcDateTime),
    Column("anomaly_since", UtcDateTime),
    # The line's price (basis points) and what the customer last declared (minor units).
    Column("annual_rate_bp", Integer),
    Column("declared_monthly_income", BigInteger),
    Column("declared_monthly_debt_payments", BigInteger, nullable=False, server_default="0"),
    # Which review shard reviews the account (`review_bucket`), fixed at opening.
    Column("review_bucket", Integer, nullable=False),
    # The customer's IANA time zone (None: not given; the policy's default is assumed).
    Column("time_zone", String),
    Index("ix_accounts_next_review_at", "next_review_at"),
    Index("ix_accounts_customer_id_opened_at", "customer_id", "opened_at"),
    Index("ix_accounts_review_bucket_account_id", "review_bucket", "account_id"),
    Index("ix_accounts_days_past_due", "days_past_due", "account_id"),
)

# One customer, one line: the account that is the customer's line, in whatever state.
customer_lines = Table(
    "customer_lines",
    metadata,
    Column("customer_id", String, primary_key=True),
    Column(
        "account_id",
        String,
        ForeignKey("accounts.account_id", name="fk_customer_lines_account_id"),
        nullable=False,
    ),
)

# The account id leads every key of the per-account tables below, so that they can be
# partitioned (or distributed) by account; what refers to an event refers to it by both.
limit_events = Table(
    "limit_events",
    metadata,
    Column(
        "account_id",
        String,
        ForeignKey("accounts.account_id", name="fk_limit_events_account_id"),
        primary_key=True,
    ),
    Column("event_id", String, primary_key=True),
    Column("type", String, nullable=False),
    Column("line_before", BigInteger, nullable=False),
    Column("line_after", BigInteger, nullable=False),
    Column("status_before", String, nullable=False),
    Column("status_after", String, nullable=False),
    Column("adverse", Boolean, nullable=False),
    Column("reasons", Text, nullable=False),
    Column("policy_version", String, nullable=False),
    Column("actor_kind", String, nullable=False),
    Column("actor_id", String, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("request_id", String, nullable=False),
    Column("model_name", String, nullable=False),
    Column("model_version", String, nullable=False),
    Column("notice", Text),
    Column("details", Text, nullable=False),
    Column("annual_rate_bp", Integer),
    Index("ix_limit_events_account_id_created_at", "account_id", "created_at", "event_id"),
)

appeals = Table(
    "appeals",
    metadata,
    Column("appeal_id", String, primary_key=True),
    Column(
        "account_id",
        String,
        ForeignKey("accounts.account_id", name="fk_appeals_account_id"),
        nullable=False,
    ),
    Column("event_id", String, nullable=False),
    Column("statement", Text, nullable=False),
    Column("status", String, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("resolution", Text, nullable=False),
    Column("resolved_at", UtcDateTime),
    _event_reference("appeals"),
    Index("ix_appeals_account_id_created_at", "account_id", "created_at", "appeal_id"),
    Index("ix_appeals_status_created_at", "status", "created_at", "appeal_id"),
)

signals = Table(
    "signals",
    metadata,
    Column(
        "account_id",
        String,
        ForeignKey("accounts.account_id", name="fk_signals_account_id"),
        primary_key=True,
    ),
    Column("signal_id", String, primary_key=True),
    Column("event_id", String),
    Column("applied_at", UtcDateTime, nullable=False),
    _event_reference("signals"),
)

review_runs = Table(
    "review_runs",
    metadata,
    Column("run_id", String, primary_key=True),
    Column("as_of", UtcDateTime, nullable=False),
    Column("dry_run", Boolean, nullable=False),
    Column("shards", Integer, nullable=False),
    Column("done", Boolean, nullable=False),
)

# A run's shards (ReviewShard): each its own cursor, counts and lease.
review_shards = Table(
    "review_shards",
    metadata,
    Column(
        "run_id",
        String,
        ForeignKey("review_runs.run_id", name="fk_review_shards_run_id"),
        primary_key=True,
    ),
    Column("shard", Integer, primary_key=True),
    Column("first_bucket", Integer, nullable=False),
    Column("end_bucket", Integer, nullable=False),
    Column("last_bucket", Integer, nullable=False),
    Column("last_account_id", String, nullable=False),
    Column("counts", Text, nullable=False),
    Column("done", Boolean, nullable=False),
    Column("worker_id", String),
    Column("lease_until", UtcDateTime),
)

# The accounts a review run could not decide (their risk state could not be scored), and why.
review_run_exceptions = Table(
    "review_run_exceptions",
    metadata,
    Column("run_id", String, primary_key=True),
    Column("account_id", String, primary_key=True),
    Column("reason", Text, nullable=False),
)

# Keyed by what the request names (`Idempotency.scope`: its account, or the customer, appeal
# or notice of a request that names no account) and the request id.
idempotency_records = Table(
    "idempotency_records",
    metadata,
    Column("scope", String, primary_key=True),
    Column("request_id", String, primary_key=True),
    Column("method", String, nullable=False),
    Column("fingerprint", String, nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)


# The outbox of notices (records.CustomerNotice), written with the decisions they tell of.
# `number` is a notice's place in the outbox, taken from the `notices` counter (see
# `add_notices`); the stream's cursor is a number.
notices = Table(
    "notices",
    metadata,
    Column(
        "account_id",
        String,
        ForeignKey("accounts.account_id", name="fk_notices_account_id"),
        primary_key=True,
    ),
    Column("notice_id", String, primary_key=True),
    Column("number", BigInteger, nullable=False),
    Column("type", String, nullable=False),
    Column("event_id", String),
    Column("appeal_id", String),
    Column("adverse", Boolean, nullable=False),
    Column("reasons", Text, nullable=False),
    Column("improvements", Text, nullable=False),
    Column("how_to_appeal", Text, nullable=False),
    Column("texts", Text, nullable=False),
    Column("templates_version", String, nullable=False),
    Column("policy_version", String, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("due_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime),
    Column("delivery_channel", String, nullable=False),
    _event_reference("notices"),
    # One notice per decision, and one per appeal's outcome.
    UniqueConstraint("account_id", "event_id", name="uq_notices_account_id_event_id"),
    UniqueConstraint("account_id", "appeal_id", name="uq_notices_account_id_appeal_id"),
    Index("ix_notices_number", "number"),
    Index("ix_notices_notice_id", "notice_id"),
    Index("ix_notices_account_id_number", "account_id", "number"),
)

# The outbox of early collections treatment steps (collections.TreatmentStep), numbered from
# their own counter like the notices; `step_key` makes a step decided twice one row.
treatment_steps = Table(
    "treatment_steps",
    metadata,
    Column(
        "account_id",
        String,
        ForeignKey("accounts.account_id", name="fk_treatment_steps_account_id"),
        primary_key=True,
    ),
    Column("step_key", String, primary_key=True),
    Column("step_id", String, nullable=False),
    Column("number", BigInteger, nullable=False),
    Column("past_due_since", UtcDateTime, nullable=False),
    Column("kind", String, nullable=False),
    Column("action", String, nullable=False),
    Column("channel", String, nullable=False),
    Column("stop_reason", String, nullable=False),
    Column("days_past_due", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("offers_hardship", Boolean, nullable=False),
    Column("time_zone", String, nullable=False),
    Column("policy_version", String, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("carried_out_at", UtcDateTime),
    Index("ix_treatment_steps_number", "number"),
    Index("ix_treatment_steps_step_id", "step_id"),
    Index("ix_treatment_steps_account_id_number", "account_id", "number"),
)

counters = Table(
    "counters",
    metadata,
    Column("name", String, primary_key=True),
    Column("value", BigInteger, nullable=False),
)
NOTICE_COUNTER = "notices"
TREATMENT_STEP_COUNTER = "treatment_steps"
# The scope of the idempotency records stored before requests had scopes (migration 0007).
LEGACY_SCOPE = ""


class LimitsStore:
    """The limits database: opened once at start, then one unit of work per change."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> "LimitsStore":
        """Connects to `url` (sqlite:///path or postgresql+psycopg://...) and migrates it."""
        return cls(migrated(create_engine(url), MIGRATIONS))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def unit_of_work(self) -> Iterator["UnitOfWork"]:
        """One write transaction, committed durably when the block exits normally.

        On SQLite it holds the write lock from its start, so read-modify-write inside it is
        serialised; on PostgreSQL lock what you will change with `get_account(..., lock=True)`.
        """
        with transaction(self.engine) as connection:
            yield UnitOfWork(connection)

    @contextmanager
    def read(self) -> Iterator["UnitOfWork"]:
        """A read-only transaction: a consistent snapshot, and no write lock."""
        with transaction(self.engine, read_only=True) as connection:
            yield UnitOfWork(connection)


class UnitOfWork:
    """The reads and writes of one transaction (see LimitsStore.unit_of_work and read)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        # The events this unit of work stored, for the metrics once it has committed, and
        # for the notices written with them.
        self.appended: list[LimitEvent] = []
        # The appeals it resolved, for the notices of their outcomes.
        self.resolved_appeals: list[Appeal] = []
        # The treatment steps it decided, numbered and stored last (`add_treatment_steps`).
        self.treatment: list[TreatmentStep] = []
        # What a group of calls read ahead and holds back to write at once (`read_ahead`).
        self._held: _Held | None = None
        # Each account as this transaction read or wrote it last: a save writes only the
        # columns that differ from it (when it is still the version being saved over).
        self._stored: dict[str, Account] = {}

    # Idempotency (AIP-155).

    def find_idempotent(self, scope: str, request_id: str) -> IdempotencyRecord | None:
        """The answer stored for `request_id` in `scope`, or under the scope '' of the records
        stored before requests had scopes."""
        if self._held is not None and (scope, request_id) in self._held.answers:
            return self._held.answers[scope, request_id]
        row = self._connection.execute(
            _ANSWER, {"scopes": [scope, LEGACY_SCOPE], "request_id": request_id}
        ).one_or_none()
        return None if row is None else _idempotency_from_row(row)

    def save_idempotent(
        self, scope: str, request_id: str, method: str, fingerprint: str, response: bytes
    ) -> None:
        """Stores the first answer to `request_id`; Aborted if a concurrent call stored one."""
        values = {
            "scope": scope,
            "request_id": request_id,
            "method": method,
            "fingerprint": fingerprint,
            "response": response,
            "created_at": _now(),
        }
        held = self._held
        if held is not None and (scope, request_id) in held.answers:
            if held.answers[scope, request_id] is not None:
                raise _answered_concurrently("request", request_id)
            held.answers[scope, request_id] = IdempotencyRecord(
                method, fingerprint, response, _now()
            )
            held.records.append(values)
            return
        if not self._insert_new(idempotency_records, values):
            raise _answered_concurrently("request", request_id)

    # Accounts.

    def get_account(self, account_id: str, *, lock: bool = False) -> Account | None:
        """The account, or None; `lock` takes its row lock until the transaction ends."""
        if self._held is not None and account_id in self._held.accounts:
            return self._held.accounts[account_id]  # read ahead, its lock taken
        query = _ACCOUNT_LOCKED if lock else _ACCOUNT
        row = self._connection.execute(query, {"account_id": account_id}).one_or_none()
        if row is None:
            return None
        account = self._stored[account_id] = _account_from_row(row)
        return account

    def insert_account(self, account: Account) -> None:
        """Inserts a new account; a line (not a declined application) becomes the customer's
        one line, or AlreadyExists naming the line they hold."""
        if not self._insert_new(accounts, _account_values(account)):
            raise AlreadyExists(
                f"account {account.account_id} already exists",
                metadata={"account_id": account.account_id},
            )
        if account.status is AccountStatus.declined:
            return
        values = {"customer_id": account.customer_id, "account_id": account.account_id}
        if not self._insert_new(customer_lines, values):
            raise customer_has_line(self.line_of_customer(account.customer_id) or "")

    def line_of_customer(self, customer_id: str) -> str | None:
        """The id of the customer's line, in whatever state, or None."""
        return self._connection.execute(
            select(customer_lines.c.account_id).where(customer_lines.c.customer_id == customer_id)
        ).scalar_one_or_none()

    def last_decline_of_customer(self, customer_id: str) -> datetime | None:
        """When the customer's latest application was declined, or None."""
        return self._connection.execute(
            select(func.max(accounts.c.opened_at)).where(
                accounts.c.customer_id == customer_id,
                accounts.c.status == AccountStatus.declined.value,
            )
        ).scalar_one_or_none()

    def get_accounts(self, account_ids: list[str], *, lock: bool = False) -> list[Account]:
        """The accounts of these ids that exist, by id; `lock` takes their row locks."""
        query = (
            select(accounts)
            .where(accounts.c.account_id.in_(account_ids))
            .order_by(accounts.c.account_id)
        )
        rows = self._all(query.with_for_update() if lock else query)
        found = [_account_from_row(row) for row in rows]
        self._stored.update((account.account_id, account) for account in found)
        return found

    def lock_versions(self, account_ids: list[str]) -> dict[str, int]:
        """The version of each of these accounts that exists, their row locks taken: a page
        read before can be checked against them, and only what changed read again."""
        query = (
            select(accounts.c.account_id, accounts.c.version)
            .where(accounts.c.account_id.in_(account_ids))
            .order_by(accounts.c.account_id)
            .with_for_update()
        )
        return {row.account_id: row.version for row in self._all(query)}

    def read_ahead(self, account_ids: list[str], keys: list[tuple[str, str]]) -> None:
        """For a group of calls in one transaction: reads their accounts, taking their row
        locks in id order, and the answers stored for their (scope, request id) keys, in one
        statement each. From then on `get_account` and `find_idempotent` answer for these from
        what was read, and `save_account` and `save_idempotent` hold their writes back until
        `write_held` writes them all at once."""
        held = _Held()
        ids = sorted(set(account_ids))
        query = _READ_AHEAD_ACCOUNTS
        if self._connection.dialect.name == "postgresql":
            query = query.with_for_update()
        found = {
            row.account_id: _account_from_row(row)
            for row in self._connection.execute(query, {"account_ids": ids})
        }
        held.accounts = {account_id: found.get(account_id) for account_id in ids}
        held.read = found
        self._stored.update(found)
        rows = self._connection.execute(
            _READ_AHEAD_ANSWERS,
            {
                "scopes": sorted({scope for scope, _ in keys} | {LEGACY_SCOPE}),
                "request_ids": sorted({request_id for _, request_id in keys}),
            },
        )
        stored = {(row.scope, row.request_id): _idempotency_from_row(row) for row in rows}
        for scope, request_id in keys:  # the request's own scope first, as find_idempotent
            held.answers[scope, request_id] = stored.get(
                (scope, request_id), stored.get((LEGACY_SCOPE, request_id))
            )
        self._held = held

    def write_held(self) -> None:
        """Writes what `save_account` and `save_idempotent` held back since `read_ahead`, in
        one statement each; Aborted, the transaction to be rolled back, if a row changed or an
        answer was stored meanwhile (neither can while the locks are held)."""
        held, self._held = self._held, None
        if held is None:
            return
        # Each account's last state over the one read: no one sees the states between.
        changes = [(held.read[a], held.accounts[a]) for a in dict.fromkeys(held.updates)]
        if changes:
            written = _write_changes(self._connection, changes)  # type: ignore[arg-type]
            if written not in (-1, len(changes)):
                raise Aborted(
                    "accounts changed while their locks were held",
                    reason="CONCURRENT_MODIFICATION",
                )
        if held.records:
            # One execution of many rows: their inserted rows summed, on SQLite and psycopg.
            statement = _insert_if_new(self._connection, idempotency_records)
            if self._connection.execute(statement, held.records).rowcount != len(held.records):
                raise Aborted(
                    "a request was answered by a concurrent call", reason="CONCURRENT_MODIFICATION"
                )

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: what the block wrote, held back or noted for the notices and
        the metrics, is taken back if it raises; the rest of the transaction stands."""
        noted = len(self.appended), len(self.resolved_appeals), len(self.treatment)
        held = self._held
        kept = None if held is None else held.copy()
        nested = self._connection.begin_nested()
        try:
            yield
        except BaseException:
            nested.rollback()
            del self.appended[noted[0] :]
            del self.resolved_appeals[noted[1] :]
            del self.treatment[noted[2] :]
            self._held = kept
            raise
        nested.commit()

    def save_account(self, account: Account) -> Account:
        """Stores `account` if the stored one is still at `account.version` (compare-and-set).

        Returns the account with its new version; Aborted if someone changed it meanwhile.
        """
        saved = replace(account, version=account.version + 1)
        held = self._held
        read = None if held is None else held.accounts.get(account.account_id)
        if held is not None and read is not None:
            if read.version != account.version:
                raise Aborted(
                    f"account {account.account_id} changed since version {account.version}; "
                    "read it again and retry",
                    reason="CONCURRENT_MODIFICATION",
                    metadata={"account_id": account.account_id},
                )
            held.updates.append(account.account_id)
            held.accounts[account.account_id] = saved
            return saved
        stored = self._stored.get(account.account_id)
        if stored is not None and stored.version == account.version:
            written = _write_changes(self._connection, [(stored, saved)])
        else:
            written = self._connection.execute(
                _UPDATE_ACCOUNT, _update_parameters(account, saved)
            ).rowcount
        if written == 1:
            self._stored[account.account_id] = saved
            return saved
        if self.get_account(account.account_id) is None:
            raise NotFound(
                f"account {account.account_id} not found",
                metadata={"account_id": account.account_id},
            )
        raise Aborted(
            f"account {account.account_id} changed since version {account.version}; "
            "read it again and retry",
            reason="CONCURRENT_MODIFICATION",
            metadata={"account_id": account.account_id},
        )

    def save_accounts(self, changes: list[tuple[Account, Account]]) -> list[Account]:
        """Stores many accounts at once (a portfolio review's page): each (stored, new) pair is
        an account as read with its lock held, so unchanged since, and its new state at the
        same version; only the columns that changed are written. Returns the new states with
        their new versions."""
        saved = [replace(new, version=new.version + 1) for _, new in changes]
        if saved:
            pairs = [(stored, new) for (stored, _), new in zip(changes, saved, strict=True)]
            written = _write_changes(self._connection, pairs)
            if written not in (-1, len(saved)):
                raise Aborted(
                    "accounts changed while their locks were held", reason="CONCURRENT_MODIFICATION"
                )
        return saved

    def accounts_due_for_review(
        self, as_of: datetime | None, after_account_id: str, limit: int
    ) -> list[Account]:
        """Active and watchlisted accounts due by `as_of` (every one when None), by id, after
        `after_account_id`."""
        query = (
            select(accounts)
            .where(*_due_for_review(as_of, after_account_id))
            .order_by(accounts.c.account_id)
            .limit(limit)
        )
        return [_account_from_row(row) for row in self._all(query)]

    def count_accounts_due_for_review(
        self, as_of: datetime | None, after_account_id: str = ""
    ) -> int:
        query = select(func.count()).select_from(accounts)
        return self._connection.execute(
            query.where(*_due_for_review(as_of, after_account_id))
        ).scalar_one()

    def book_by_tier(self) -> list[tuple[str | None, int, int, int]]:
        """The open lines (active, watchlisted, frozen) by tier: (tier, lines, total credit
        line, total drawn), in one aggregate query."""
        query = (
            select(
                accounts.c.tier,
                func.count(),
                func.coalesce(func.sum(accounts.c.credit_line), 0),
                func.coalesce(func.sum(accounts.c.drawn), 0),
            )
            .where(accounts.c.status.in_(OPEN_STATUSES))
            .group_by(accounts.c.tier)
        )
        return [(row[0], int(row[1]), int(row[2]), int(row[3])) for row in self._all(query)]

    # History.

    def append_event(self, event: LimitEvent) -> None:
        if not self._insert_new(limit_events, _event_values(event)):
            raise AlreadyExists(
                f"event {event.event_id} already exists", metadata={"event_id": event.event_id}
            )
        self.appended.append(event)

    def append_events(self, events: list[LimitEvent]) -> None:
        """Appends many new events in one statement; their ids are fresh, so none conflicts."""
        if events:
            self._connection.execute(insert(limit_events), [_event_values(e) for e in events])
            self.appended.extend(events)

    def events_after(self, event: LimitEvent) -> list[LimitEvent]:
        """The account's events after `event`, oldest first."""
        query = select(limit_events).where(
            limit_events.c.account_id == event.account_id,
            or_(
                limit_events.c.created_at > event.created_at,
                and_(
                    limit_events.c.created_at == event.created_at,
                    limit_events.c.event_id > event.event_id,
                ),
            ),
        )
        query = query.order_by(limit_events.c.created_at, limit_events.c.event_id)
        return [_event_from_row(row) for row in self._all(query)]

    def last_event_time(self, account_id: str, types: tuple[EventType, ...]) -> datetime | None:
        """When the account's latest event of these types was made, or None."""
        return self._connection.execute(
            select(func.max(limit_events.c.created_at)).where(*_of_types(account_id, types))
        ).scalar_one_or_none()

    def event_times_since(
        self, account_id: str, types: tuple[EventType, ...], since: datetime
    ) -> list[datetime]:
        """When the account's events of these types since `since` were made, oldest first."""
        query = (
            select(limit_events.c.created_at)
            .where(*_of_types(account_id, types), limit_events.c.created_at >= since)
            .order_by(limit_events.c.created_at)
        )
        return list(self._connection.execute(query).scalars())

    def get_event(self, account_id: str, event_id: str) -> LimitEvent | None:
        row = self._one(
            select(limit_events).where(
                limit_events.c.account_id == account_id, limit_events.c.event_id == event_id
            )
        )
        return None if row is None else _event_from_row(row)

    def list_events(
        self, account_id: str, limit: int, before: tuple[datetime, str] | None = None
    ) -> list[LimitEvent]:
        """An account's events newest first; `before` is the (created_at, event_id) of the
        last event of the previous page."""
        query = select(limit_events).where(limit_events.c.account_id == account_id)
        query = _newest_first(query, limit_events.c.created_at, limit_events.c.event_id, before)
        return [_event_from_row(row) for row in self._all(query.limit(limit))]

    # Signals, applied once each.

    def find_signal(self, account_id: str, signal_id: str) -> SignalRecord | None:
        row = self._one(
            select(signals).where(
                signals.c.account_id == account_id, signals.c.signal_id == signal_id
            )
        )
        return None if row is None else _signal_from_row(row)

    def save_signal(self, signal_id: str, account_id: str, event_id: str | None) -> None:
        """Records the signal as applied; Aborted if a concurrent call recorded it first."""
        values = {
            "signal_id": signal_id,
            "account_id": account_id,
            "event_id": event_id,
            "applied_at": _now(),
        }
        if not self._insert_new(signals, values):
            raise _answered_concurrently("signal", signal_id)

    # Appeals.

    def insert_appeal(self, appeal: Appeal) -> None:
        if not self._insert_new(appeals, _appeal_values(appeal)):
            raise AlreadyExists(
                f"appeal {appeal.appeal_id} already exists",
                metadata={"appeal_id": appeal.appeal_id},
            )

    def get_appeal(self, appeal_id: str, *, lock: bool = False) -> Appeal | None:
        query = select(appeals).where(appeals.c.appeal_id == appeal_id)
        row = self._one(query.with_for_update() if lock else query)
        return None if row is None else _appeal_from_row(row)

    def save_appeal(self, appeal: Appeal) -> None:
        result = self._connection.execute(
            update(appeals)
            .where(appeals.c.appeal_id == appeal.appeal_id)
            .values(_appeal_values(appeal))
        )
        if result.rowcount != 1:
            raise NotFound(
                f"appeal {appeal.appeal_id} not found", metadata={"appeal_id": appeal.appeal_id}
            )
        if appeal.status is not AppealStatus.open:
            self.resolved_appeals.append(appeal)

    def list_appeals(
        self,
        account_id: str | None,
        status: AppealStatus | None,
        limit: int,
        before: tuple[datetime, str] | None = None,
    ) -> list[Appeal]:
        """Appeals newest first, of one account and/or in one status when given; `before` is
        the (created_at, appeal_id) of the last appeal of the previous page."""
        query = select(appeals)
        if account_id is not None:
            query = query.where(appeals.c.account_id == account_id)
        if status is not None:
            query = query.where(appeals.c.status == AppealStatus(status).value)
        query = _newest_first(query, appeals.c.created_at, appeals.c.appeal_id, before)
        return [_appeal_from_row(row) for row in self._all(query.limit(limit))]

    # Notices: the outbox.

    def add_notices(self, found: list[CustomerNotice]) -> int | None:
        """Stores the notices, numbered in order; returns the last one's number (None if there
        were none).

        Call it last in the transaction: it holds the notice counter's row until the commit,
        so notices become visible in the order of their numbers and a stream that has seen
        notice n has seen every one before it (services.common.feeds).
        """
        if not found:
            return None
        first = self._take_numbers(NOTICE_COUNTER, len(found))
        # Each row is given its number as it is written: no copy of the notice is kept.
        rows = [_notice_values(notice, first + i) for i, notice in enumerate(found)]
        self._connection.execute(insert(notices), rows)
        return first + len(found) - 1

    def last_notice_number(self) -> int:
        return self._counter(NOTICE_COUNTER)

    def _take_numbers(self, counter: str, count: int) -> int:
        """The first of `count` numbers taken from `counter`, whose row stays locked until the
        transaction ends."""
        last = self._connection.execute(
            update(counters)
            .where(counters.c.name == counter)
            .values(value=counters.c.value + count)
            .returning(counters.c.value)
        ).scalar_one()
        return int(last) - count + 1

    def _counter(self, counter: str) -> int:
        query = select(counters.c.value).where(counters.c.name == counter)
        return int(self._connection.execute(query).scalar_one())

    def notices_after(self, after: int, up_to: int, limit: int) -> list[CustomerNotice]:
        """Notices numbered above `after` and up to `up_to`, oldest first."""
        query = (
            select(notices)
            .where(notices.c.number > after, notices.c.number <= up_to)
            .order_by(notices.c.number)
            .limit(limit)
        )
        return [_customer_notice_from_row(row) for row in self._all(query)]

    def get_notice(self, notice_id: str, *, lock: bool = False) -> CustomerNotice | None:
        query = select(notices).where(notices.c.notice_id == notice_id)
        row = self._one(query.with_for_update() if lock else query)
        return None if row is None else _customer_notice_from_row(row)

    def record_delivery(self, notice: CustomerNotice, delivered_at: datetime, channel: str):
        """Records when and how the customer was told, once: a delivery already recorded
        stands (the record shows when the customer was first told)."""
        self._connection.execute(
            update(notices)
            .where(
                notices.c.account_id == notice.account_id,
                notices.c.notice_id == notice.notice_id,
                notices.c.delivered_at.is_(None),
            )
            .values(delivered_at=delivered_at, delivery_channel=channel)
        )

    def notices_of_account(self, account_id: str, limit: int) -> list[CustomerNotice]:
        """The account's notices, newest first."""
        query = (
            select(notices)
            .where(notices.c.account_id == account_id)
            .order_by(notices.c.number.desc())
            .limit(limit)
        )
        return [_customer_notice_from_row(row) for row in self._all(query)]

    # Early collections: the outbox of treatment steps.

    def add_treatment_steps(self, found: list[TreatmentStep]) -> list[TreatmentStep]:
        """Stores the steps not stored yet (by account and key), numbered in order; returns
        them with their numbers. Call it last, after `add_notices`: it holds the steps'
        counter until the commit, as notices do theirs (and always after them, so two
        transactions never wait on each other's counter)."""
        new = [s for s in found if not self._has_treatment_step(s.account_id, s.key)]
        if not new:
            return []
        first = self._take_numbers(TREATMENT_STEP_COUNTER, len(new))
        numbered = [replace(s, number=first + i) for i, s in enumerate(new)]
        self._connection.execute(insert(treatment_steps), [_step_values(s) for s in numbered])
        return numbered

    def _has_treatment_step(self, account_id: str, key: str) -> bool:
        query = select(treatment_steps.c.number).where(
            treatment_steps.c.account_id == account_id, treatment_steps.c.step_key == key
        )
        return self._one(query) is not None

    def last_treatment_step_number(self) -> int:
        return self._counter(TREATMENT_STEP_COUNTER)

    def treatment_steps_after(self, after: int, up_to: int, limit: int) -> list[TreatmentStep]:
        """Steps numbered above `after` and up to `up_to`, oldest first."""
        query = (
            select(treatment_steps)
            .where(treatment_steps.c.number > after, treatment_steps.c.number <= up_to)
            .order_by(treatment_steps.c.number)
            .limit(limit)
        )
        return [_step_from_row(row) for row in self._all(query)]

    def treatment_of_account(
        self, account_id: str, limit: int | None = None
    ) -> list[TreatmentStep]:
        """The account's treatment steps: every one oldest first, or the latest `limit`
        newest first."""
        query = select(treatment_steps).where(treatment_steps.c.account_id == account_id)
        if limit is None:
            query = query.order_by(treatment_steps.c.number)
        else:
            query = query.order_by(treatment_steps.c.number.desc()).limit(limit)
        return [_step_from_row(row) for row in self._all(query)]

    def get_treatment_step(self, step_id: str, *, lock: bool = False) -> TreatmentStep | None:
        query = select(treatment_steps).where(treatment_steps.c.step_id == step_id)
        row = self._one(query.with_for_update() if lock else query)
        return None if row is None else _step_from_row(row)

    def record_carried_out(self, step: TreatmentStep, at: datetime) -> None:
        """Records when the step was carried out, once: a time already recorded stands."""
        self._connection.execute(
            update(treatment_steps)
            .where(
                treatment_steps.c.step_id == step.step_id,
                treatment_steps.c.carried_out_at.is_(None),
            )
            .values(carried_out_at=at)
        )

    def accounts_in_collections(self, after_account_id: str, limit: int) -> list[str]:
        """By id after `after_account_id`: the accounts past due, and those whose treatment
        has not yet been stopped by a cure (its latest step is no cured stop)."""
        latest = (
            select(
                treatment_steps.c.account_id,
                func.max(treatment_steps.c.number).label("number"),
            )
            .group_by(treatment_steps.c.account_id)
            .subquery()
        )
        treated = (
            select(treatment_steps.c.account_id)
            .join(
                latest,
                and_(
                    treatment_steps.c.account_id == latest.c.account_id,
                    treatment_steps.c.number == latest.c.number,
                ),
            )
            .where(treatment_steps.c.stop_reason != StopReason.cured.value)
        )
        query = (
            select(accounts.c.account_id)
            .where(
                or_(accounts.c.days_past_due > 0, accounts.c.account_id.in_(treated)),
                accounts.c.account_id > after_account_id,
            )
            .order_by(accounts.c.account_id)
            .limit(limit)
        )
        return list(self._connection.execute(query).scalars())

    def accounts_of_customer(self, customer_id: str) -> list[Account]:
        """Every account of the customer (their line and any declined applications), oldest
        first."""
        query = (
            select(accounts)
            .where(accounts.c.customer_id == customer_id)
            .order_by(accounts.c.opened_at, accounts.c.account_id)
        )
        return [_account_from_row(row) for row in self._all(query)]

    # Review runs and their shards.

    def get_review_run(self, run_id: str, *, lock: bool = False) -> ReviewRun | None:
        query = select(review_runs).where(review_runs.c.run_id == run_id)
        row = self._one(query.with_for_update() if lock else query)
        return None if row is None else _review_run_from_row(row)

    def insert_review_run(self, run: ReviewRun, shards: list[ReviewShard]) -> bool:
        """Stores a new run with its shards; False (and nothing stored) if the run exists."""
        if not self._insert_new(review_runs, _review_run_values(run)):
            return False
        if shards:
            self._connection.execute(insert(review_shards), [_shard_values(s) for s in shards])
        return True

    def finish_review_run(self, run_id: str) -> None:
        self._connection.execute(
            update(review_runs).where(review_runs.c.run_id == run_id).values(done=True)
        )

    def review_shards(self, run_id: str) -> list[ReviewShard]:
        query = (
            select(review_shards)
            .where(review_shards.c.run_id == run_id)
            .order_by(review_shards.c.shard)
        )
        return [_shard_from_row(row) for row in self._all(query)]

    def get_review_shard(self, run_id: str, shard: int, *, lock: bool = False) -> ReviewShard:
        query = select(review_shards).where(
            review_shards.c.run_id == run_id, review_shards.c.shard == shard
        )
        row = self._one(query.with_for_update() if lock else query)
        if row is None:  # made with the run, and never deleted
            raise RuntimeError(f"review run {run_id} has no shard {shard}")
        return _shard_from_row(row)

    def claim_review_shard(
        self, run_id: str, worker_id: str, now: datetime, lease_until: datetime
    ) -> ReviewShard | None:
        """Leases to `worker_id` the first unfinished shard of the run that no live lease holds,
        or None. On PostgreSQL, shards another worker is claiming at this moment are skipped,
        not waited for; on SQLite the write lock serialises the claims."""
        query = (
            select(review_shards)
            .where(
                review_shards.c.run_id == run_id,
                review_shards.c.done == False,  # noqa: E712 - SQL, not Python
                or_(
                    review_shards.c.lease_until.is_(None),
                    review_shards.c.lease_until < now,
                    review_shards.c.worker_id == worker_id,
                ),
            )
            .order_by(review_shards.c.shard)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        row = self._one(query)
        if row is None:
            return None
        claimed = replace(_shard_from_row(row), worker_id=worker_id, lease_until=lease_until)
        self.save_review_shard(claimed)
        return claimed

    def save_review_shard(self, shard: ReviewShard) -> None:
        self._connection.execute(
            update(review_shards)
            .where(review_shards.c.run_id == shard.run_id, review_shards.c.shard == shard.shard)
            .values(_shard_values(shard))
        )

    def release_review_shards(self, run_id: str, worker_id: str) -> None:
        """Gives up the worker's leases on the run's unfinished shards, for others to claim."""
        self._connection.execute(
            update(review_shards)
            .where(review_shards.c.run_id == run_id, review_shards.c.worker_id == worker_id)
            .values(worker_id=None, lease_until=None)
        )

    def accounts_due_in_shard(self, as_of: datetime, shard: ReviewShard, limit: int) -> list:
        """The shard's accounts due by `as_of` after its cursor, in (bucket, id) order."""
        query = (
            select(accounts)
            .where(*_due_in_shard(as_of, shard))
            .order_by(accounts.c.review_bucket, accounts.c.account_id)
            .limit(limit)
        )
        return [_account_from_row(row) for row in self._all(query)]

    def count_accounts_due_in_shard(self, as_of: datetime, shard: ReviewShard) -> int:
        query = select(func.count()).select_from(accounts).where(*_due_in_shard(as_of, shard))
        return self._connection.execute(query).scalar_one()

    def add_review_exceptions(self, run_id: str, undecided: list[tuple[str, str]]) -> None:
        """Records accounts the run could not decide, with why (once per run and account)."""
        self._connection.execute(
            _insert_if_new(self._connection, review_run_exceptions),
            [{"run_id": run_id, "account_id": a, "reason": reason} for a, reason in undecided],
        )

    def review_exceptions(self, run_id: str) -> list[tuple[str, str]]:
        """The accounts the run could not decide, by id, with why."""
        query = (
            select(review_run_exceptions.c.account_id, review_run_exceptions.c.reason)
            .where(review_run_exceptions.c.run_id == run_id)
            .order_by(review_run_exceptions.c.account_id)
        )
        return [(row.account_id, row.reason) for row in self._all(query)]

    # Helpers.

    def _one(self, query: Select) -> Row | None:
        return self._connection.execute(query).one_or_none()

    def _all(self, query: Select) -> list[Row]:
        return list(self._connection.execute(query))

    def _insert_new(self, table: Table, values: dict[str, Any]) -> bool:
        """Inserts a row unless its key exists (then False), without failing the transaction."""
        statement = _insert_if_new(self._connection, table)
        return self._connection.execute(statement, values).rowcount == 1


# Statements run on every call, built once: building one (and its cache key) costs SQLAlchemy
# more than running it (measured 72 against 21 us for the account's SELECT on SQLite).
_ACCOUNT = select(accounts).where(accounts.c.account_id == bindparam("account_id"))
_ACCOUNT_LOCKED = _ACCOUNT.with_for_update()
_ANSWER = (
    select(idempotency_records)
    .where(
        idempotency_records.c.scope.in_(bindparam("scopes", expanding=True)),
        idempotency_records.c.request_id == bindparam("request_id"),
    )
    .order_by(idempotency_records.c.scope.desc())
    .limit(1)
)
# (dialect, table) -> its INSERT ... ON CONFLICT DO NOTHING, values given as parameters.
_INSERTS_IF_NEW: dict[tuple[str, str], Any] = {}


def _insert_if_new(connection: Connection, table: Table):
    """The table's INSERT ... ON CONFLICT DO NOTHING, run with one row's values or a list of
    rows (built once: a multi-row VALUES has no cache key, and SQLAlchemy compiled it afresh
    every time, 370 us for four rows on SQLite against 47 us this way)."""
    key = (connection.dialect.name, table.name)
    statement = _INSERTS_IF_NEW.get(key)
    if statement is None:
        statement = _INSERTS_IF_NEW[key] = (
            _insert_statement(connection, table)
            .on_conflict_do_nothing()
            # SQLAlchemy keeps the rowcount of an INSERT only when asked to.
            .execution_options(preserve_rowcount=True)
        )
    return statement


def _insert_statement(connection: Connection, table: Table):
    """An INSERT with ON CONFLICT clauses, which SQLite and PostgreSQL spell the same way."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _newest_first(
    query: Select,
    created_at: Column,
    key: Column,
    before: tuple[datetime, str] | None,
) -> Select:
    """Orders by (created_at, key) descending, starting after the `before` cursor."""
    if before is not None:
        before_time, before_key = before
        query = query.where(
            or_(created_at < before_time, and_(created_at == before_time, key < before_key))
        )
    return query.order_by(created_at.desc(), key.desc())


def _of_types(account_id: str, types: tuple[EventType, ...]) -> tuple:
    return (
        limit_events.c.account_id == account_id,
        limit_events.c.type.in_([EventType(t).value for t in types]),
    )


def customer_has_line(account_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"the customer already holds line {account_id}; a closed line reopens through "
        "RequestReopen",
        reason="CUSTOMER_HAS_LINE",
        metadata={"account_id": account_id},
    )


def _answered_concurrently(kind: str, key: str) -> Aborted:
    return Aborted(
        f"{kind} {key} was handled by a concurrent call; retry to get its answer",
        reason="CONCURRENT_MODIFICATION",
        metadata={f"{kind}_id": key},
    )


# What an account keeps from its opening. They stay out of the UPDATE's SET: SQLite rewrites
# the index entries of every column written (customer_id, opened_at) even when the value stays,
# and checks every table that refers to a parent key written (customer_lines, by a full scan).
_FIXED_AT_OPENING = frozenset(
    {"account_id", "customer_id", "currency_code", "opened_at", "review_bucket"}
)
# Built once: a statement made per call costs more than the database's own work for a draw.
_UPDATE_ACCOUNT = (
    update(accounts)
    .where(
        accounts.c.account_id == bindparam("old_account_id"),
        accounts.c.version == bindparam("old_version"),
    )
    .values(
        {
            column.name: bindparam(f"new_{column.name}")
            for column in accounts.columns
            if column.name not in _FIXED_AT_OPENING
        }
    )
)


_READ_AHEAD_ACCOUNTS = (
    select(accounts)
    .where(accounts.c.account_id.in_(bindparam("account_ids", expanding=True)))
    .order_by(accounts.c.account_id)
)
_READ_AHEAD_ANSWERS = select(idempotency_records).where(
    idempotency_records.c.scope.in_(bindparam("scopes", expanding=True)),
    idempotency_records.c.request_id.in_(bindparam("request_ids", expanding=True)),
)


@dataclass
class _Held:
    """What a group's unit of work read ahead (None: no such account, no answer stored) and
    the writes it holds back (`UnitOfWork.read_ahead`)."""

    accounts: dict[str, Account | None] = field(default_factory=dict)
    answers: dict[tuple[str, str], IdempotencyRecord | None] = field(default_factory=dict)
    updates: list[str] = field(default_factory=list)  # the accounts saved, by id
    records: list[dict[str, Any]] = field(default_factory=list)
    read: dict[str, Account] = field(default_factory=dict)  # the accounts as read

    def copy(self) -> "_Held":
        return _Held(
            dict(self.accounts), dict(self.answers), [*self.updates], [*self.records], self.read
        )


def _update_parameters(old: Account, new: Account) -> dict[str, Any]:
    return {
        **{
            f"new_{name}": value
            for name, value in _account_values(new).items()
            if name not in _FIXED_AT_OPENING
        },
        "old_account_id": old.account_id,
        "old_version": old.version,
    }


_NARROW_UPDATES: dict[frozenset[str], Any] = {}


def _changed_values(stored: Account, new: Account) -> dict[str, Any]:
    """The columns whose stored values differ between the account as stored and its new state,
    with the new version: what an UPDATE of the stored row needs to write, and no more (SQLite
    rewrites the index entries of every column written, whatever its value). Both are encoded
    by `_account_values`, the one encoding of an account; the risk state's only when it changed,
    its JSON being the costly part."""
    before, after = _row_values(stored), _row_values(new)
    if new.risk != stored.risk:
        before |= _risk_values(stored.risk)
        after |= _risk_values(new.risk)
    values = {
        name: value
        for name, value in after.items()
        if name not in _FIXED_AT_OPENING and value != before[name]
    }
    values["version"] = new.version
    return values


def _narrow_update(columns: frozenset[str]):
    """The UPDATE of these columns of an account still at its old version (built once)."""
    statement = _NARROW_UPDATES.get(columns)
    if statement is None:
        statement = (
            update(accounts)
            .where(
                accounts.c.account_id == bindparam("old_account_id"),
                accounts.c.version == bindparam("old_version"),
            )
            .values({name: bindparam(f"new_{name}") for name in sorted(columns)})
        )
        _NARROW_UPDATES[columns] = statement
    return statement


def _write_changes(connection: Connection, changes: list[tuple[Account, Account]]) -> int:
    """Writes each account's new state over its stored one (compare-and-set on the stored
    version), only the columns that changed, in one statement per set of columns; the rows
    written, or -1 where the driver cannot count them."""
    by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
    for stored, new in changes:
        values = _changed_values(stored, new)
        parameters = {f"new_{name}": value for name, value in values.items()}
        parameters.update(old_account_id=stored.account_id, old_version=stored.version)
        by_columns.setdefault(frozenset(values), []).append(parameters)
    written = 0
    for columns, rows in by_columns.items():
        result = connection.execute(_narrow_update(columns), rows)
        if len(rows) > 1 and not connection.dialect.supports_sane_multi_rowcount:
            written = -1
        elif written >= 0:
            written += result.rowcount
    return written


def _due_in_shard(as_of: datetime, shard: ReviewShard) -> tuple:
    return (
        accounts.c.status.in_(REVIEWABLE_STATUSES),
        accounts.c.next_review_at <= as_of,
        accounts.c.review_bucket >= shard.first_bucket,
        accounts.c.review_bucket < shard.end_bucket,
        tuple_(accounts.c.review_bucket, accounts.c.account_id)
        > tuple_(
            bindparam("after_bucket", shard.after[0]),
            bindparam("after_account_id", shard.after[1]),
        ),
    )


def _due_for_review(as_of: datetime | None, after_account_id: str) -> tuple:
    due = () if as_of is None else (accounts.c.next_review_at <= as_of,)
    return (
        accounts.c.status.in_(REVIEWABLE_STATUSES),
        *due,
        accounts.c.account_id > after_account_id,
    )


# Rows <-> records, table by table.


def _account_values(account: Account) -> dict[str, Any]:
    return {**_row_values(account), **_risk_values(account.risk)}


def _row_values(account: Account) -> dict[str, Any]:
    """Every column of an account but its risk state's (`_risk_values`)."""
    line = account.line
    return {
        "account_id": account.account_id,
        "customer_id": account.customer_id,
        "currency_code": account.currency_code,
        "review_bucket": review_bucket(account.account_id),
        "credit_line": line.credit_line,
        "drawn": line.drawn,
        "status": AccountStatus(line.status).value,
        "customer_cap": line.customer_cap,
        "in_hardship": line.in_hardship,
        "opened_at": account.opened_at,
        "tier": account.tier,
        "risk_band": account.risk_band,
        "reopening_stage": account.reopening_stage,
        "line_before_closure": account.line_before_closure,
        "suspended_at": account.suspended_at,
        "next_review_at": account.next_review_at,
        "automatic_increases": account.automatic_increases,
        "hardship": None if account.hardship is None else _dumps(_hardship_json(account.hardship)),
        "on_time_streak": account.on_time_streak,
        "last_on_time_repayment_at": account.last_on_time_repayment_at,
        "version": account.version,
        "annual_rate_bp": account.annual_rate_bp,
        "declared_monthly_income": account.declared_monthly_income,
        "declared_monthly_debt_payments": account.declared_monthly_debt_payments,
        "time_zone": account.time_zone,
    }


def _risk_values(risk: RiskState) -> dict[str, Any]:
    return {
        "behaviour_profile": _dumps(risk.profile) if risk.profile else None,
        "profile_at": risk.profile_at,
        "days_past_due": risk.days_past_due,
        "loans_past_due": _dumps(risk.loans_past_due) if risk.loans_past_due else None,
        "past_due_since": risk.past_due_since,
        "behaviour_band": risk.behaviour_band,
        "behaviour_scored_at": risk.behaviour_scored_at,
        "last_warning_at": risk.last_warning_at,
        "anomaly_since": risk.anomaly_since,
    }


def _risk_from_row(values: RowMapping) -> RiskState:
    return RiskState(
        profile=json.loads(values["behaviour_profile"]) if values["behaviour_profile"] else {},
        profile_at=values["profile_at"],
        days_past_due=values["days_past_due"],
        loans_past_due=json.loads(values["loans_past_due"]) if values["loans_past_due"] else {},
        past_due_since=values["past_due_since"],
        behaviour_band=values["behaviour_band"],
        behaviour_scored_at=values["behaviour_scored_at"],
        last_warning_at=values["last_warning_at"],
        anomaly_since=values["anomaly_since"],
    )


def _account_from_row(row: Row) -> Account:
    # By column name through the row's mapping: a row's attributes cost several times more,
    # and a page of a review reads every column of hundreds of rows.
    values = row._mapping
    return Account(
        account_id=values["account_id"],
        customer_id=values["customer_id"],
        currency_code=values["currency_code"],
        line=Line(
            credit_line=values["credit_line"],
            drawn=values["drawn"],
            status=AccountStatus(values["status"]),
            customer_cap=values["customer_cap"],
            in_hardship=values["in_hardship"],
        ),
        opened_at=values["opened_at"],
        tier=values["tier"],
        risk_band=values["risk_band"],
        reopening_stage=values["reopening_stage"],
        line_before_closure=values["line_before_closure"],
        suspended_at=values["suspended_at"],
        next_review_at=values["next_review_at"],
        automatic_increases=values["automatic_increases"],
        hardship=None
        if values["hardship"] is None
        else _hardship_from_json(json.loads(values["hardship"])),
        on_time_streak=values["on_time_streak"],
        last_on_time_repayment_at=values["last_on_time_repayment_at"],
        risk=_risk_from_row(values),
        version=values["version"],
        annual_rate_bp=values["annual_rate_bp"],
        declared_monthly_income=values["declared_monthly_income"],
        declared_monthly_debt_payments=values["declared_monthly_debt_payments"],
        time_zone=values["time_zone"],
    )


def _event_values(event: LimitEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "account_id": event.account_id,
        "type": EventType(event.type).value,
        "line_before": event.line_before,
        "line_after": event.line_after,
        "status_before": AccountStatus(event.status_before).value,
        "status_after": AccountStatus(event.status_after).value,
        "adverse": event.adverse,
        "reasons": _dumps([_reason_json(reason) for reason in event.reasons]),
        "policy_version": event.policy_version,
        "actor_kind": ActorKind(event.actor_kind).value,
        "actor_id": event.actor_id,
        "created_at": event.created_at,
        "request_id": event.request_id,
        "model_name": event.model_name,
        "model_version": event.model_version,
        "notice": None if event.notice is None else _dumps(_notice_json(event.notice)),
        "details": _dumps(event.details),
        "annual_rate_bp": event.annual_rate_bp,
    }


def _event_from_row(row: Row) -> LimitEvent:
    return LimitEvent(
        event_id=row.event_id,
        account_id=row.account_id,
        type=EventType(row.type),
        line_before=row.line_before,
        line_after=row.line_after,
        status_before=AccountStatus(row.status_before),
        status_after=AccountStatus(row.status_after),
        adverse=row.adverse,
        reasons=tuple(_reason_from_json(reason) for reason in json.loads(row.reasons)),
        policy_version=row.policy_version,
        actor_kind=ActorKind(row.actor_kind),
        actor_id=row.actor_id,
        created_at=row.created_at,
        request_id=row.request_id,
        model_name=row.model_name,
        model_version=row.model_version,
        notice=None if row.notice is None else _notice_from_json(json.loads(row.notice)),
        details=json.loads(row.details),
        annual_rate_bp=row.annual_rate_bp,
    )


def _appeal_values(appeal: Appeal) -> dict[str, Any]:
    return {
        "appeal_id": appeal.appeal_id,
        "account_id": appeal.account_id,
        "event_id": appeal.event_id,
        "statement": appeal.statement,
        "status": AppealStatus(appeal.status).value,
        "created_at": appeal.created_at,
        "resolution": appeal.resolution,
        "resolved_at": appeal.resolved_at,
    }


def _appeal_from_row(row: Row) -> Appeal:
    return Appeal(
        appeal_id=row.appeal_id,
        account_id=row.account_id,
        event_id=row.event_id,
        statement=row.statement,
        status=AppealStatus(row.status),
        created_at=row.created_at,
        resolution=row.resolution,
        resolved_at=row.resolved_at,
    )


def _review_run_values(run: ReviewRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "as_of": run.as_of,
        "dry_run": run.dry_run,
        "shards": run.shards,
        "done": run.done,
    }


def _review_run_from_row(row: Row) -> ReviewRun:
    return ReviewRun(
        run_id=row.run_id, as_of=row.as_of, dry_run=row.dry_run, shards=row.shards, done=row.done
    )


def _shard_values(shard: ReviewShard) -> dict[str, Any]:
    return {
        "run_id": shard.run_id,
        "shard": shard.shard,
        "first_bucket": shard.first_bucket,
        "end_bucket": shard.end_bucket,
        "last_bucket": shard.after[0],
        "last_account_id": shard.after[1],
        "counts": _dumps(shard.counts),
        "done": shard.done,
        "worker_id": shard.worker_id,
        "lease_until": shard.lease_until,
    }


def _shard_from_row(row: Row) -> ReviewShard:
    return ReviewShard(
        run_id=row.run_id,
        shard=row.shard,
        first_bucket=row.first_bucket,
        end_bucket=row.end_bucket,
        after=(row.last_bucket, row.last_account_id),
        counts=json.loads(row.counts),
        done=row.done,
        worker_id=row.worker_id,
        lease_until=row.lease_until,
    )


def _signal_from_row(row: Row) -> SignalRecord:
    return SignalRecord(
        signal_id=row.signal_id,
        account_id=row.account_id,
        event_id=row.event_id,
        applied_at=row.applied_at,
    )


def _idempotency_from_row(row: Row) -> IdempotencyRecord:
    return IdempotencyRecord(
        method=row.method,
        fingerprint=row.fingerprint,
        response=bytes(row.response),
        created_at=row.created_at,
    )


# Nested values <-> JSON.


def _notice_values(notice: CustomerNotice, number: int) -> dict[str, Any]:
    """The row of a notice stored as the outbox's `number`."""
    return {
        "account_id": notice.account_id,
        "notice_id": notice.notice_id,
        "number": number,
        "type": NoticeType(notice.type).value,
        "event_id": notice.event_id,
        "appeal_id": notice.appeal_id,
        "adverse": notice.adverse,
        "reasons": _dumps([_reason_json(r) for r in notice.reasons]),
        "improvements": _dumps([_reason_json(r) for r in notice.improvements]),
        "how_to_appeal": _dumps(notice.how_to_appeal),
        "texts": _dumps(notice.texts),
        "templates_version": notice.templates_version,
        "policy_version": notice.policy_version,
        "created_at": notice.created_at,
        "due_at": notice.due_at,
        "delivered_at": notice.delivered_at,
        "delivery_channel": notice.delivery_channel,
    }


def _customer_notice_from_row(row: Row) -> CustomerNotice:
    return CustomerNotice(
        notice_id=row.notice_id,
        account_id=row.account_id,
        type=NoticeType(row.type),
        adverse=row.adverse,
        reasons=tuple(_reason_from_json(r) for r in json.loads(row.reasons)),
        improvements=tuple(_reason_from_json(r) for r in json.loads(row.improvements)),
        how_to_appeal=json.loads(row.how_to_appeal),
        texts=json.loads(row.texts),
        created_at=row.created_at,
        due_at=row.due_at,
        templates_version=row.templates_version,
        policy_version=row.policy_version,
        event_id=row.event_id,
        appeal_id=row.appeal_id,
        number=row.number,
        delivered_at=row.delivered_at,
        delivery_channel=row.delivery_channel,
    )


def _step_values(step: TreatmentStep) -> dict[str, Any]:
    return {
        "account_id": step.account_id,
        "step_key": step.key,
        "step_id": step.step_id,
        "number": step.number,
        "past_due_since": step.episode_started_at,
        "kind": StepKind(step.kind).value,
        "action": step.action,
        "channel": step.channel,
        "stop_reason": "" if step.stop_reason is None else StopReason(step.stop_reason).value,
        "days_past_due": step.days_past_due,
        "reason": _dumps(_reason_json(step.reason)),
        "offers_hardship": step.offers_hardship,
        "time_zone": step.time_zone,
        "policy_version": step.policy_version,
        "created_at": step.created_at,
        "carried_out_at": step.carried_out_at,
    }


def _step_from_row(row: Row) -> TreatmentStep:
    return TreatmentStep(
        account_id=row.account_id,
        episode_started_at=row.past_due_since,
        kind=StepKind(row.kind),
        days_past_due=row.days_past_due,
        reason=_reason_from_json(json.loads(row.reason)),
        created_at=row.created_at,
        action=row.action,
        channel=row.channel,
        stop_reason=StopReason(row.stop_reason) if row.stop_reason else None,
        offers_hardship=row.offers_hardship,
        step_id=row.step_id,
        number=row.number,
        time_zone=row.time_zone,
        policy_version=row.policy_version,
        carried_out_at=row.carried_out_at,
    )


def _reason_json(reason: Reason) -> dict[str, Any]:
    return {
        "code": reason.code,
        "texts": reason.texts,
        "source": ReasonSource(reason.source).value,
    }


def _reason_from_json(value: dict[str, Any]) -> Reason:
    return Reason(code=value["code"], texts=value["texts"], source=ReasonSource(value["source"]))


def _notice_json(notice: Notice) -> dict[str, Any]:
    return {"texts": notice.texts, "sent_at": as_utc(notice.sent_at).isoformat()}


def _notice_from_json(value: dict[str, Any]) -> Notice:
    return Notice(texts=value["texts"], sent_at=datetime.fromisoformat(value["sent_at"]))


def _hardship_json(hardship: Hardship) -> dict[str, Any]:
    return {
        "started_at": as_utc(hardship.started_at).isoformat(),
        "ends_at": as_utc(hardship.ends_at).isoformat(),
        "term_months": hardship.term_months,
        "monthly_instalment": hardship.monthly_instalment,
    }


def _hardship_from_json(value: dict[str, Any]) -> Hardship:
    return Hardship(
        started_at=datetime.fromisoformat(value["started_at"]),
        ends_at=datetime.fromisoformat(value["ends_at"]),
        term_months=value["term_months"],
        monthly_instalment=value["monthly_instalment"],
    )


# One encoder for every value: json.dumps with these options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True)


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def _now() -> datetime:
    return datetime.now(UTC)
