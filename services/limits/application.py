"""The limits use cases, transport-free: each call takes one policy snapshot, scores what it
needs before any lock is taken, then decides and stores in one unit of work, idempotent by its
request id.

The servicer converts messages into the typed commands below and outcomes back into messages.
Every mutation opens the account through `_open`, which brings it to the present (the exits
that time or its state opened are recorded as events first), so no path forgets them.
"""

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from services.common.context import current_principal
from services.common.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from services.common.feeds import NumberFeed, Page
from services.common.group_commit import GroupCommit
from services.limits import collections, decisions, ledger, metrics
from services.limits.collections import StepKind, TreatmentStep
from services.limits.decisions import (
    SIMULATED_OUTCOMES,
    Affordability,
    Context,
    Decision,
    IncreaseHistory,
    Score,
    Signal,
    Unscored,
)
from services.limits.notices import TemplatesHolder, notice_of_event, notice_of_upheld_appeal
from services.limits.policy import Policy, PolicyHolder
from services.limits.records import (
    Account,
    ActorKind,
    Appeal,
    AppealStatus,
    CustomerNotice,
    EventType,
    LimitEvent,
    Reason,
)
from services.limits.store import (
    REVIEW_BUCKETS,
    LimitsStore,
    ReviewRun,
    ReviewShard,
    UnitOfWork,
    customer_has_line,
    review_bucket,
)

# Accounts a portfolio review scores in one BatchScore and applies in one transaction.
REVIEW_PAGE = 500
# What the customer's view holds of each account at most: the latest decisions and notices.
VIEW_DECISIONS = VIEW_NOTICES = VIEW_APPEALS = VIEW_TREATMENT_STEPS = 100
# Accounts in collections read per page of a run (each is then treated in its own transaction).
COLLECTIONS_PAGE = 500
# Draws and repayments committed in one transaction at most (`LimitsApplication._move_credit`).
DRAW_GROUP = 32
# Groups of draws committed at once on PostgreSQL (one at a time on SQLite).
POSTGRES_DRAW_LEADERS = 2
NAMED_ACTORS = frozenset({ActorKind.operator, ActorKind.monitoring})


class Message(Protocol):
    def SerializeToString(self) -> bytes: ...  # noqa: N802 - protobuf's name


M = TypeVar("M", bound=Message)
R = TypeVar("R")


class Scorer(Protocol):
    """What limits needs of the scoring service (`ScoringClient`)."""

    def score(self, model: str, features) -> Score: ...

    def batch_score(self, model: str, rows: list[dict[str, float]]) -> list[Score | Unscored]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Idempotency:
    """A mutation's key (AIP-155) and a fingerprint of what it asks for: a retry with the same
    key gets the first answer; the same key asking for something else is refused."""

    method: str
    request_id: str
    fingerprint: str
    # What the request names, which keys its record with the request id: the account, or
    # for a request that names none the customer, appeal or notice.
    scope: str = ""


@dataclass(frozen=True)
class Respond(Generic[R, M]):
    """How an outcome becomes the call's answer, and how a stored answer is read back."""

    message: Callable[[R], M]
    parse: Callable[[bytes], M]


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAccount:
    key: Idempotency
    customer_id: str
    application_features: Mapping[str, object]  # the application model's inputs, as given
    affordability: Affordability
    time_zone: str | None = None  # IANA, validated; None: not given


@dataclass(frozen=True)
class MoveCredit:
    """A draw (with its purpose) or a repayment (purpose None)."""

    key: Idempotency
    account_id: str
    amount: int
    currency_code: str
    etag: str
    purpose: str | None = None


@dataclass(frozen=True)
class RequestIncrease:
    key: Idempotency
    account_id: str
    requested_line: int | None
    affordability: Affordability
    etag: str


@dataclass(frozen=True)
class ScoredRequest:
    """A review of one account (operator) or a request to reopen it (customer)."""

    key: Idempotency
    account_id: str
    etag: str = ""


@dataclass(frozen=True)
class OperatorAction:
    key: Idempotency
    account_id: str
    note: str
    etag: str


@dataclass(frozen=True)
class EnrollHardship:
    key: Idempotency
    account_id: str
    term_months: int
    etag: str


@dataclass(frozen=True)
class SetPreferences:
    key: Idempotency
    account_id: str
    customer_cap: int | None
    automatic_increases: bool
    etag: str


@dataclass(frozen=True)
class FileAppeal:
    key: Idempotency
    account_id: str
    event_id: str
    statement: str


@dataclass(frozen=True)
class ResolveAppeal:
    key: Idempotency
    appeal_id: str
    reverse: bool
    resolution: str


@dataclass(frozen=True)
class AcknowledgeNotice:
    """The messaging backend tells when, and through which channel, a notice reached the
    customer."""

    key: Idempotency
    notice_id: str
    delivered_at: datetime
    channel: str


@dataclass(frozen=True)
class AcknowledgeTreatmentStep:
    """The collections system tells when it carried out a treatment step."""

    key: Idempotency
    step_id: str
    carried_out_at: datetime


@dataclass(frozen=True)
class CollectionsRun:
    """What a run of early collections did: the accounts it examined, the steps it stored."""

    accounts_examined: int = 0
    contacts: int = 0
    stops: int = 0


@dataclass(frozen=True)
class _Mutation:
    """One call's change, to be done in a unit of work: what `_once` does, and what a group
    commit does for each call of its group."""

    key: Idempotency
    respond: Respond["Outcome", Any]
    ctx: Context
    decide: Callable[["UnitOfWork", Context], "Outcome"]
    account_id: str = ""  # the account it locks, if any: a group locks them in id order


@dataclass(frozen=True)
class AccountView:
    """What a customer may see of one of their accounts (a line, or a declined application)."""

    account: Account
    decisions: list[LimitEvent]  # newest first
    notices: list[CustomerNotice]  # newest first, with their delivery
    open_appeals: list[Appeal]
    treatment: list[TreatmentStep]  # newest first


@dataclass(frozen=True)
class Outcome:
    """What a call decided: the account as stored, the decision's event, and for requests
    the answer's parts."""

    account: Account | None = None
    event: LimitEvent | None = None
    approved: bool = True
    improvements: tuple[Reason, ...] = ()
    next_eligible_at: datetime | None = None
    appeal: Appeal | None = None
    notice: CustomerNotice | None = None
    step: TreatmentStep | None = None
    # The policy and time it was decided under (the account's conditions are told by them).
    policy: Policy | None = None
    decided_at: datetime | None = None


@dataclass(frozen=True)
class SignalOutcome:
    signal_id: str
    currency_code: str
    event: LimitEvent | None
    duplicate: bool = False


@dataclass(frozen=True)
class ReviewProgress:
    """How far a review run got: the run, the accounts due when this call started, the
    counts summed over its shards, and the accounts the page just done left undecided."""

    run: ReviewRun
    due: int
    counts: dict[str, int] = field(default_factory=dict)
    undecided: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ReviewSharding:
    """How review runs share their work: shards of a new run when the caller names none, how
    long a worker's claim on a shard lasts without progress, how often a caller waiting for
    other workers' shards looks again, and accounts per page (REVIEW_PAGE when None)."""

    default_shards: int = 8
    lease: timedelta = timedelta(seconds=60)
    poll_seconds: float = 0.5
    page_size: int | None = None


@dataclass(frozen=True)
class TierImpact:
    accounts: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # rise, fall, unchanged, undecided
    exposure_change: int = 0


@dataclass(frozen=True)
class SimulatedPage:
    """A simulation's impact by tier so far, the accounts it covered and the last one."""

    tiers: dict[str, TierImpact]
    accounts: int
    last_account_id: str
    done: bool = False


# -- the application -----------------------------------------------------------------------


class LimitsApplication:
    def __init__(
        self,
        store: LimitsStore | None,
        policies: PolicyHolder,
        scoring: Scorer,
        clock: Callable[[], datetime],
        templates: TemplatesHolder | None = None,
        review: ReviewSharding | None = None,
        *,
        draw_group: int | None = None,
    ) -> None:
        self._store = store
        self.review = review or ReviewSharding()
        self.policies = policies
        self.scoring = scoring
        self.clock = clock
        self.templates = templates or TemplatesHolder()
        # The number of the newest notice (treatment step) this process stored, for the
        # streams.
        self.notice_feed = NumberFeed()
        self.treatment_feed = NumberFeed()
        # Draws and repayments that arrive while one commits share the next transaction.
        self._moves: GroupCommit[_Mutation, Message] = GroupCommit(
            self._commit_together, draw_group or DRAW_GROUP
        )

    @property
    def store(self) -> LimitsStore:
        if self._store is None:  # the server answers while the database is being migrated
            raise Unavailable("the service is starting; retry shortly", reason="STARTING")
        return self._store

    def attach_store(self, store: LimitsStore) -> None:
        self._store = store
        if store.engine.dialect.name == "postgresql":
            # Groups on other rows commit side by side there (their locks taken in id order);
            # on SQLite a second group would only wait for the write lock.
            self._moves.leaders = POSTGRES_DRAW_LEADERS
        with store.read() as uow:
            self.notice_feed.publish(uow.last_notice_number())
            self.treatment_feed.publish(uow.last_treatment_step_number())

    def close_feeds(self) -> None:
        """Ends every stream: the server is stopping (clients resume from their cursor)."""
        self.notice_feed.close()
        self.treatment_feed.close()

    def close(self) -> None:
        self.close_feeds()
        self.scoring.close()
        if self._store is not None:
            self._store.close()

    # -- reads ------------------------------------------------------------------------------

    def account(self, account_id: str) -> Account:
        with self.store.read() as uow:
            return self._read(uow, self.policies.policy, account_id)

    def history(
        self, account_id: str, limit: int, before: tuple[datetime, str] | None
    ) -> tuple[Account, list[LimitEvent]]:
        with self.store.read() as uow:
            account = self._read(uow, self.policies.policy, account_id)
            return account, uow.list_events(account_id, limit, before)

    def appeals(self, account_id: str | None, status, limit: int, before) -> list[Appeal]:
        with self.store.read() as uow:
            return uow.list_appeals(account_id, status, limit, before)

    def customer_view(self, customer_id: str) -> list[AccountView]:
        """Everything the customer may see of their accounts, and nothing of anyone else's:
        every account read here is one whose customer_id is theirs."""
        policy, now = self.policies.policy, self.clock()
        with self.store.read() as uow:
            accounts = uow.accounts_of_customer(customer_id)
            if not accounts:
                raise NotFound("no accounts for this customer", reason="CUSTOMER_NOT_FOUND")
            return [
                AccountView(
                    account=decisions.current(account, policy, now),
                    decisions=uow.list_events(account.account_id, VIEW_DECISIONS),
                    notices=uow.notices_of_account(account.account_id, VIEW_NOTICES),
                    open_appeals=uow.list_appeals(
                        account.account_id, AppealStatus.open, VIEW_APPEALS
                    ),
                    treatment=uow.treatment_of_account(account.account_id, VIEW_TREATMENT_STEPS),
                )
                for account in accounts
            ]

    def last_notice_number(self) -> int:
        with self.store.read() as uow:
            return uow.last_notice_number()

    def notices_after(self, after: int, limit: int) -> Page[CustomerNotice]:
        """A page of the notice outbox for a stream: the head first, then what is up to it."""
        with self.store.read() as uow:
            head = uow.last_notice_number()
            return Page(head, uow.notices_after(after, head, limit))

    def acknowledge_notice(self, command: AcknowledgeNotice, respond: Respond[Outcome, M]) -> M:
        def decide(uow: UnitOfWork, ctx: Context) -> Outcome:
            notice = uow.get_notice(command.notice_id, lock=True)
            if notice is None:
                raise NotFound("no such notice", reason="NOTICE_NOT_FOUND")
            if command.delivered_at < notice.created_at:
                raise InvalidArgument(
                    [FieldViolation("delivery_time", "before the notice was made")]
                )
            uow.record_delivery(notice, command.delivered_at, command.channel)
            return Outcome(notice=uow.get_notice(command.notice_id))

        return self._once(command.key, respond, None, ActorKind.operator, decide)

    def book_by_tier(self) -> list[tuple[str | None, int, int, int]]:
        """The open lines by tier, for the metrics: (tier, lines, total line, total drawn)."""
        with self.store.read() as uow:
            return uow.book_by_tier()

    # -- opening ----------------------------------------------------------------------------

    def open_account(self, command: OpenAccount, respond: Respond[Outcome, M]) -> M:
        """One customer, one line: a customer holding a line in any state is refused, and a
        declined applicant waits for the cool-off. Both are checked again under the write."""
        if (replayed := self._replayed(command.key, respond)) is not None:
            return replayed
        policy = self.policies.policy
        with self.store.read() as uow:
            self._may_apply(uow, policy, command.customer_id)
        score = self.scoring.score("application", command.application_features)

        def decide(uow: UnitOfWork, ctx: Context) -> Outcome:
            self._may_apply(uow, policy, command.customer_id)
            decision = decisions.open_account(
                ctx,
                _new_id(),
                command.customer_id,
                score,
                command.affordability,
                time_zone=command.time_zone,
            )
            uow.insert_account(decision.account)
            uow.append_event(_recorded(decision))
            return _outcome(decision)

        return self._once(command.key, respond, policy, ActorKind.customer, decide)

    def _may_apply(self, uow: UnitOfWork, policy: Policy, customer_id: str) -> None:
        if (line := uow.line_of_customer(customer_id)) is not None:
            raise customer_has_line(line)
        declined_at = uow.last_decline_of_customer(customer_id)
        if declined_at is not None:
            eligible_at = decisions.reapplication_allowed_at(policy, declined_at)
            if self.clock() < eligible_at:
                raise decisions.not_yet(
                    "COOL_OFF", "a recent application was declined", eligible_at
                )

    # -- the ledger -------------------------------------------------------------------------

    def move_credit(self, command: MoveCredit, respond: Respond[Outcome, M]) -> M:
        try:
            return self._move_credit(command, respond)
        except FailedPrecondition as refusal:
            if command.purpose is not None:  # a draw, refused: counted, and answered as it was
                metrics.DRAWS_REFUSED.labels(refusal.reason).inc()
            raise

    def _move_credit(self, command: MoveCredit, respond: Respond[Outcome, M]) -> M:
        def decide(uow: UnitOfWork, ctx: Context) -> Outcome:
            account = self._open(uow, ctx, command.account_id, command.etag)
            if command.currency_code != account.currency_code:
                raise InvalidArgument(
                    [FieldViolation("amount.currency_code", f"must be {account.currency_code}")]
                )
            if command.purpose is None:
                decision = decisions.repay(ctx, account, command.amount)
            else:
                decision = Decision(
                    decisions.draw(ctx, account, command.amount, command.purpose), None
                )
            return _outcome(decision, self._apply(uow, decision))

        ctx = self._context(self.policies.policy, command.key.request_id, ActorKind.customer)
        mutation = _Mutation(command.key, respond, ctx, decide, command.account_id)
        return self._moves.submit(mutation)  # type: ignore[return-value]  # respond's M

    def _commit_together(self, group: list[_Mutation]) -> list[Message | BaseException]:
        """The group's calls one after another in one unit of work, each as `_once` does it
        alone; returns each one's answer or its refusal, all committed (or not) together.

        A call refused takes back only what it wrote: the first refusal rolls the transaction
        back and the rest are done again, each within a savepoint from then on. A database
        that is unavailable is every call's answer; any other failure (a deadlock, a row
        changed under the group) has every call done again in a transaction of its own, so
        each gets the answer it would have had alone."""
        metrics.DRAW_GROUPS.observe(len(group))
        policy = self.policies.policy  # one snapshot for the group, and for its notices
        group = [replace(m, ctx=replace(m.ctx, policy=policy)) for m in group]
        if len(group) == 1:  # alone: exactly `_once`
            with self._writing(policy) as uow:
                return [self._answer(uow, group[0])]
        outcomes: dict[int, Message | BaseException] = {}
        pending, savepoints = list(range(len(group))), False
        while pending:
            answers: dict[int, Message] = {}
            refused: tuple[int, ServiceError] | None = None
            try:
                with self._writing(policy) as uow:
                    uow.read_ahead(
                        [group[i].account_id for i in pending],
                        [(group[i].key.scope, group[i].key.request_id) for i in pending],
                    )
                    for i in pending:
                        if not savepoints:
                            try:
                                answers[i] = self._answer(uow, group[i])
                            except ServiceError as refusal:
                                refused = (i, refusal)
                                raise
                            continue
                        try:
                            with uow.savepoint():
                                answers[i] = self._answer(uow, group[i])
                        except ServiceError as refusal:
                            outcomes[i] = refusal
                    uow.write_held()
            except ServiceError as error:
                if isinstance(error, Unavailable) and refused is None:
                    return [outcomes.get(i, error) for i in range(len(group))]
                if refused is None or error is not refused[1]:
                    return self._one_by_one(policy, group, pending, outcomes)
                outcomes[refused[0]] = refused[1]
                pending.remove(refused[0])
                savepoints = True
                continue
            except Exception:
                return self._one_by_one(policy, group, pending, outcomes)
            outcomes.update(answers)
            pending = []
        return [outcomes[i] for i in range(len(group))]

    def _one_by_one(
        self, policy: Policy, group: list[_Mutation], pending: list[int], outcomes: dict
    ) -> list[Message | BaseException]:
        for i in pending:
            try:
                with self._writing(policy) as uow:
                    outcomes[i] = self._answer(uow, group[i])
            except Exception as error:
                outcomes[i] = error
        return [outcomes[i] for i in range(len(group))]

    # -- decisions that score the account's risk state ------------------------------------

    def request_increase(self, command: RequestIncrease, respond: Respond[Outcome, M]) -> M:
        if (replayed := self._replayed(command.key, respond)) is not None:
            return replayed
        policy = self.policies.policy
        score = self._score_risk_state(policy, command.account_id)

        def decide(uow: UnitOfWork, ctx: Context) -> Outcome:
            account = self._open(uow, ctx, command.account_id, command.etag)
            since = ctx.now - timedelta(days=policy.requested_increase.period_days)
            history = IncreaseHistory(
                last_declined_at=uow.last_event_time(
                    account.account_id, (EventType.increase_declined,)
                ),
                line_changes_in_period=tuple(
                    uow.event_times_since(
                        account.account_id, (EventType.increased, EventType.reduced), since
                    )
                ),
            )
            decision = decisions.request_increase(
                ctx, account, command.requested_line, score, command.affordability, history
            )
            return _outcome(decision, self._apply(uow, decision))

        return self._once(command.key, respond, policy, ActorKind.customer, decide)

    def review_account(self, command: ScoredRequest, respond: Respond[Outcome, M]) -> M:
        return self._scored(command, respond, ActorKind.review, decisions.review)

    def request_reopen(self, command: ScoredRequest, respond: Respond[Outcome, M]) -> M:
        return self._scored(command, respond, ActorKind.customer, decisions.request_reopen)

    def _scored(
        self, command: ScoredRequest, respond: Respond[Outcome, M], actor: ActorKind, rule
    ) -> M:
        if (replayed := self._replayed(command.key, respond)) is not None:
            return replayed
        policy = self.policies.policy
        score = self._score_risk_state(policy, command.account_id)

        def decide(uow: UnitOfWork, ctx: Context) -> Outcome:
            account = self._open(uow, ctx, command.account_id, command.etag)
            decision = rule(ctx, account, score)
            return _outcome(decision, self._apply(uow, decision))

        return self._once(command.key, respond, policy, actor, decide)

    def _score_risk_state(self, policy: Policy, account_id: str) -> Score | None:
        """The account's reported behaviour scored, or None where it is not fresh. A state the
        model cannot score is no decision on a guess: FAILED_PRECONDITION, with why."""
        with self.store.read() as uow:
            account = self._read(uow, policy, account_id)
        score = self._score_accounts(policy, [account])[0]
        if isinstance(score, Unscored):
            raise FailedPrecondition(
                f"the account's reported behaviour cannot be scored: {score.reason}",
                reason="RISK_STATE_UNSCORABLE",
            )
        return score

    def _score_accounts(
        self, policy: Policy, accounts: list[Account]
    ) -> list[Score | Unscored | None]:
        """Each account's risk state scored (None where it is not fresh)."""
        now = self.clock()
        fresh = [i for i, a in enumerate(accounts) if decisions.is_fresh(policy, a.risk, now)]
        scores: list[Score | Unscored | None] = [None] * len(accounts)
        if fresh:
            rows = [accounts[i].risk.profile for i in fresh]
            for i, score in zip(fresh, self.scoring.batch_score("behaviour", rows), strict=True):
                scores[i] = score
        return scores

    # -- the book ---------------------------------------------------------------------------

    def run_review(
        self,
        run_id: str,
        as_of: datetime | None,
        dry_run: bool,
        shards: int | None = None,
        active: Callable[[], bool] = lambda: True,
    ) -> Iterator[ReviewProgress]:
        """Reviews every due account, split into `shards` by a hash of the account id (the
        run's own count when resumed, `review.default_shards` when new).

        Every call with the run's id works the run: it leases a shard no one else holds,
        reviews it a page per transaction with the shard's cursor, so a shard resumed after a
        crash applies nothing twice, and takes the next; once none is left to claim it waits
        for the others' shards, streaming the progress of the whole run, until every shard is
        done. A worker that dies leaves its shard to be claimed when the lease runs out. An
        account whose risk state cannot be scored is left as it is, recorded with why.
        """
        run = self._start_review(run_id, as_of, dry_run, shards)
        worker_id = _new_id()
        with self.store.read() as uow:
            due = sum(
                shard.counts.get("reviewed", 0)
                + (0 if shard.done else uow.count_accounts_due_in_shard(run.as_of, shard))
                for shard in uow.review_shards(run.run_id)
            )
        yield self._review_progress(run, due)
        with metrics.REVIEWS.tracking() as progressed:
            try:
                yield from self._work_review(run, due, worker_id, progressed, active)
            finally:
                with self.store.unit_of_work() as uow:
                    uow.release_review_shards(run.run_id, worker_id)

    def _start_review(
        self, run_id: str, as_of: datetime | None, dry_run: bool, shards: int | None
    ) -> ReviewRun:
        """The run of this id, made with its shards if new; refused if its parameters differ."""
        count = shards or self.review.default_shards
        new = ReviewRun(run_id, as_of or self.clock(), dry_run, count)
        with self.store.unit_of_work() as uow:
            if uow.insert_review_run(new, _shards_of(new)):
                return new
            run = uow.get_review_run(run_id)
        if run is None:  # inserted by a concurrent call, and never deleted
            raise RuntimeError(f"review run {run_id} is gone")
        if (
            run.dry_run != dry_run
            or (as_of is not None and run.as_of != as_of)
            or (shards is not None and run.shards != shards)
        ):
            raise AlreadyExists(
                "this request_id names a review run with other parameters",
                reason="REQUEST_ID_REUSED",
            )
        return run

    def _work_review(
        self,
        run: ReviewRun,
        due: int,
        worker_id: str,
        progressed: Callable[[], None],
        active: Callable[[], bool],
    ) -> Iterator[ReviewProgress]:
        last_counts: dict[str, int] | None = None
        while active():
            with self.store.unit_of_work() as uow:
                now = _wall_clock()
                shard = uow.claim_review_shard(run.run_id, worker_id, now, now + self.review.lease)
                if shard is None and all(s.done for s in uow.review_shards(run.run_id)):
                    uow.finish_review_run(run.run_id)
                    run = replace(run, done=True)
            if run.done:
                yield self._review_progress(run, due)
                return
            if shard is not None:
                for undecided in self._review_shard(run, shard, worker_id):
                    progressed()
                    yield self._review_progress(run, due, undecided)
                continue
            # The shards left are leased to other workers: report theirs as they go.
            progress = self._review_progress(run, due)
            if progress.counts != last_counts:
                last_counts = progress.counts
                yield progress
            time.sleep(self.review.poll_seconds)

    def _review_shard(
        self, run: ReviewRun, shard: ReviewShard, worker_id: str
    ) -> Iterator[list[tuple[str, str]]]:
        """Reviews the shard page by page while this worker holds its lease; yields the
        accounts each page left undecided."""
        while not shard.done:
            policy = self.policies.policy
            with self.store.read() as uow:
                page = uow.accounts_due_in_shard(
                    run.as_of, shard, self.review.page_size or REVIEW_PAGE
                )
            scores = dict(
                zip((a.account_id for a in page), self._score_accounts(policy, page), strict=True)
            )
            with self._writing(policy) as uow:
                stored = uow.get_review_shard(run.run_id, shard.shard, lock=True)
                if stored.worker_id != worker_id or stored.after != shard.after or stored.done:
                    return  # the lease ran out and another worker took the shard over
                shard, undecided = self._review_page(uow, policy, run, shard, page, scores)
                if shard.done:
                    shard = replace(shard, worker_id=None, lease_until=None)
                else:
                    shard = replace(shard, lease_until=_wall_clock() + self.review.lease)
                uow.save_review_shard(shard)
            yield undecided

    def _review_progress(
        self, run: ReviewRun, due: int, undecided: list[tuple[str, str]] | None = None
    ) -> ReviewProgress:
        """The whole run's counts, summed over its shards."""
        counts: dict[str, int] = {}
        with self.store.read() as uow:
            for shard in uow.review_shards(run.run_id):
                for name, count in shard.counts.items():
                    counts[name] = counts.get(name, 0) + count
        return ReviewProgress(run, due, counts, undecided or [])

    def _review_page(
        self, uow, policy, run: ReviewRun, shard: ReviewShard, page, scores
    ) -> tuple[ReviewShard, list[tuple[str, str]]]:
        """Reviews one page; returns the shard moved on, and the accounts it left undecided."""
        if not page:
            return replace(shard, done=True), []
        counts = dict(shard.counts)
        ctx = self._context(policy, run.run_id, ActorKind.review)
        # The page was read before scoring, outside this transaction: lock its rows, and read
        # again only the accounts that changed since (a signal may have closed one).
        versions = uow.lock_versions([a.account_id for a in page])
        changed = [a.account_id for a in page if versions.get(a.account_id) != a.version]
        reread = {a.account_id: a for a in uow.get_accounts(changed, lock=True)} if changed else {}
        current = [reread.get(a.account_id, a) for a in page if a.account_id in versions]
        due = [  # still due and open
            account
            for account in current
            if account.status in ledger.DRAWS_ALLOWED
            and account.next_review_at is not None
            and account.next_review_at <= run.as_of
        ]
        accounts, events, undecided = [], [], []
        for account, recorded, decision in _reviewed(ctx, due, scores):
            if isinstance(decision, Unscored):
                undecided.append((account.account_id, decision.reason))
                continue
            outcome = _recorded(decision).type.value
            counts[outcome] = counts.get(outcome, 0) + 1
            counts["reviewed"] = counts.get("reviewed", 0) + 1
            accounts.append((account, decision.account))
            events.extend(recorded)
        if undecided:
            counts["undecided"] = counts.get("undecided", 0) + len(undecided)
            uow.add_review_exceptions(run.run_id, undecided)
        if not run.dry_run:
            uow.save_accounts(accounts)
            uow.append_events(events)
        last = page[-1].account_id
        return replace(shard, after=(review_bucket(last), last), counts=counts), undecided

    def simulate(
        self, candidate: Policy, after: str = "", stop: Callable[[], bool] = lambda: False
    ) -> Iterator[SimulatedPage]:
        """What a review of every open account under `candidate` would do now, through the
        same steps as a review run, writing nothing: a page at a time, in account id order
        after `after`, each with the impact so far. Before each page `stop` is asked whether
        the caller's time is up: DeadlineExceeded then, the pages yielded standing (the last
        one's `last_account_id` resumes the simulation)."""
        ctx = self._context(candidate, "simulation", ActorKind.policy)
        tiers: dict[str, TierImpact] = {}
        accounts = 0
        while True:
            if stop():
                raise DeadlineExceeded(
                    "the deadline came before the simulation was done; resume it from the "
                    "last page it reported",
                    reason="SIMULATION_DEADLINE",
                    metadata={"after_account_id": after},
                )
            with self.store.read() as uow:
                page = uow.accounts_due_for_review(None, after, REVIEW_PAGE)
            if not page:
                yield SimulatedPage(tiers, accounts, after, done=True)
                return
            after = page[-1].account_id
            scores = dict(
                zip(
                    (a.account_id for a in page),
                    self._score_accounts(candidate, page),
                    strict=True,
                )
            )
            for before, _, decision in _reviewed(ctx, page, scores):
                name = before.tier or "none"
                impact = tiers.get(name, TierImpact())
                if isinstance(decision, Unscored):
                    outcome, change = "undecided", 0
                else:
                    outcome = SIMULATED_OUTCOMES[_recorded(decision).type]
                    change = decision.account.line.credit_line - before.line.credit_line
                tiers[name] = TierImpact(
                    accounts=impact.accounts + 1,
                    counts={**impact.counts, outcome: impact.counts.get(outcome, 0) + 1},
                    exposure_change=impact.exposure_change + change,
                )
            accounts += len(page)
            yield SimulatedPage(dict(tiers), accounts, after)

    # -- signals from monitoring ------------------------------------------------------------

    def report_signals(self, signals: list[Signal], account_ids: list[str]) -> list[SignalOutcome]:
        """Applies each signal once, in its own transaction, in the order given."""
        policy = self.policies.policy
        with self.store.read() as uow:
            for account_id in account_ids:
                self._read(uow, policy, account_id)  # NOT_FOUND before anything is applied
        outcomes = []
        for signal, account_id in zip(signals, account_ids, strict=True):
            with self._writing(policy) as uow:
                outcomes.append(self._apply_signal(uow, policy, signal, account_id))
        return outcomes

    def _apply_signal(self, uow, policy, signal: Signal, account_id: str) -> SignalOutcome:
        seen = uow.find_signal(account_id, signal.signal_id)
        ctx = self._context(policy, signal.signal_id, ActorKind.monitoring)
        if seen is not None:
            account = self._read(uow, policy, account_id)
            event = uow.get_event(account_id, seen.event_id) if seen.event_id else None
            return SignalOutcome(signal.signal_id, account.currency_code, event, duplicate=True)
        # Exits that time opens are judged at the signal's own event time: a backlog delivered
        # late lifts no watchlist before its clean period ran out in the customer's history.
        account = self._open(uow, ctx, account_id, "", at=signal.detected_at)
        decision = decisions.apply_signal(ctx, account, signal)
        account = self._apply(uow, decision)
        uow.save_signal(
            signal.signal_id, account_id, decision.event.event_id if decision.event else None
        )
        return SignalOutcome(signal.signal_id, account.currency_code, decision.event)

    # -- early collections -----------------------------------------------------------------

    def run_collections(self, key: Idempotency, respond: Respond[CollectionsRun, M]) -> M:
        """A run now, answered once per request id. A run repeated adds no step, so one cut
        short by a crash is simply run again by the retry."""
        if (replayed := self._replayed(key, respond)) is not None:
            return replayed
        answer = respond.message(self.collections_pass())
        with self.store.unit_of_work() as uow:
            if (replayed := _replay(uow, key, respond)) is not None:
                return replayed
            uow.save_idempotent(
                key.scope, key.request_id, key.method, key.fingerprint, answer.SerializeToString()
            )
        return answer

    def collections_pass(self) -> CollectionsRun:
        """Every account in collections through the engine, each in its own transaction: the
        scheduled worker and RunCollections both run this."""
        policy = self.policies.policy
        run, after = CollectionsRun(), ""
        if policy.collections is None:  # a policy without early collections
            return run
        while True:
            with self.store.read() as uow:
                page = uow.accounts_in_collections(after, COLLECTIONS_PAGE)
            for account_id in page:
                steps = self._treat(policy, account_id)
                run = CollectionsRun(
                    accounts_examined=run.accounts_examined + 1,
                    contacts=run.contacts + sum(s.kind is StepKind.contact for s in steps),
                    stops=run.stops + sum(s.kind is StepKind.stopped for s in steps),
                )
            if len(page) < COLLECTIONS_PAGE:
                return run
            after = page[-1]

    def _treat(self, policy: Policy, account_id: str) -> list[TreatmentStep]:
        """The account's next treatment step, if the engine finds one due, stored; the
        account's row is locked meanwhile, so replicas running at once decide it once."""
        with self._writing(policy) as uow:
            account = uow.get_account(account_id, lock=True)
            if account is None:
                return []
            now = self.clock()
            account = decisions.current(account, policy, now)
            rules = policy.collections
            if rules is None:
                return []
            step = collections.next_step(
                rules,
                account,
                uow.treatment_of_account(account_id),
                appeal_open=bool(uow.list_appeals(account_id, AppealStatus.open, 1)),
                now=now,
                time_zone=account.time_zone,
            )
            if step is not None:
                uow.treatment.append(
                    replace(
                        step,
                        step_id=_new_id(),
                        time_zone=account.time_zone or rules.default_time_zone,
                        policy_version=policy.version,
                    )
                )
        return uow.treatment

    def last_treatment_step_number(self) -> int:
        with self.store.read() as uow:
            return uow.last_treatment_step_number()

    def treatment_steps_after(self, after: int, limit: int) -> Page[TreatmentStep]:
        """A page of the treatment outbox for a stream: the head first, then what is up to it."""
        with self.store.read() as uow:
            head = uow.last_treatment_step_number()
            return Page(head, uow.treatment_steps_after(after, head, limit))

    def acknowledge_treatment_step(
        self, command: AcknowledgeTreatmentStep, respond: Respond[Outcome, M]
    ) -> M:
        def decide(uow: UnitOfWork, ctx: Context) -> Outcome:
            step = uow.get_treatment_step(command.step_id, lock=True)
            if step is None:
                raise NotFound("no such treatment step", reason="TREATMENT_STEP_NOT_FOUND")
            if command.carried_out_at < step.created_at:
                raise InvalidArgument(
                    [FieldViolation("carry_out_time", "before the step was decided")]
                )
            uow.record_carried_out(step, command.carried_out_at)
            return Outcome(step=uow.get_treatment_step(command.step_id))

        return self._once(command.key, respond, None, ActorKind.operator, decide)

    # -- operator and customer actions ------------------------------------------------------

    def freeze(self, command: OperatorAction, respond: Respond[Outcome, M]) -> M:
        return self._operator(command, respond, decisions.freeze)

    def unfreeze(self, command: OperatorAction, respond: Respond[Outcome, M]) -> M:
        return self._operator(command, respond, decisions.unfreeze)

    def close_account(self, command: OperatorAction, respond: Respond[Outcome, M]) -> M:
        return self._operator(command, respond, decisions.close)

    def resolve_anomaly(self, command: OperatorAction, respond: Respond[Outcome, M]) -> M:
        return self._operator(command, respond, decisions.resolve_anomaly)

    def _operator(self, command: OperatorAction, respond: Respond[Outcome, M], rule) -> M:
        def decide(uow: UnitOfWork, ctx: Context) -> Outcome:
            account = self._open(uow, ctx, command.account_id, command.etag)
            decision = rule(ctx, account, command.note)
            return _outcome(decision, self._apply(uow, decision))

        return self._once(command.key, respond, None, ActorKind.operator, decide)

    def enroll_hardship(self, command: EnrollHardship, respond: Respond[Outcome, M]) -> M:
        def decide(uow: UnitOfWork, ctx: Context) -> Outcome:
            account = self._open(uow, ctx, command.account_id, command.etag)
            earlier = uow.event_times_since(
                account.account_id,
                (EventType.hardship_enrolled,),
                ctx.now - timedelta(days=5 * 365),
            )
            decision = decisions.enroll_hardship(ctx, account, command.term_months, earlier)
            return _outcome(decision, self._apply(uow, decision))

        return self._once(command.key, respond, None, ActorKind.customer, decide)

    def set_preferences(self, command: SetPreferences, respond: Respond[Outcome, M]) -> M:
        def decide(uow: UnitOfWork, ctx: Context) -> Outcome:
            account = self._open(uow, ctx, command.account_id, command.etag)
            decision = decisions.set_preferences(
                ctx, account, command.customer_cap, command.automatic_increases
            )
            return _outcome(decision, self._apply(uow, decision))

        return self._once(command.key, respond, None, ActorKind.customer, decide)

    # -- appeals ----------------------------------------------------------------------------

    def file_appeal(self, command: FileAppeal, respond: Respond[Outcome, M]) -> M:
        def decide(uow: UnitOfWork, ctx: Context) -> Outcome:
            self._read(uow, ctx.policy, command.account_id)
            event = uow.get_event(command.account_id, command.event_id)
            if event is None:
                raise NotFound("no such decision on this account", reason="EVENT_NOT_FOUND")
            if not event.adverse:
                raise FailedPrecondition(
                    "only adverse decisions (declines, reductions, freezes, closures) are appealed",
                    reason="NOT_APPEALABLE",
                )
            appeal = Appeal(
                appeal_id=_new_id(),
                account_id=command.account_id,
                event_id=command.event_id,
                statement=command.statement,
                status=AppealStatus.open,
                created_at=ctx.now,
            )
            uow.insert_appeal(appeal)
            return Outcome(appeal=appeal)

        return self._once(command.key, respond, None, ActorKind.customer, decide)

    def resolve_appeal(self, command: ResolveAppeal, respond: Respond[Outcome, M]) -> M:
        def decide(uow: UnitOfWork, ctx: Context) -> Outcome:
            appeal = uow.get_appeal(command.appeal_id, lock=True)
            if appeal is None:
                raise NotFound("no such appeal", reason="APPEAL_NOT_FOUND")
            if appeal.status is not AppealStatus.open:
                raise FailedPrecondition(f"the appeal is {appeal.status}", reason="APPEAL_CLOSED")
            account, event = None, None
            if command.reverse:
                account = self._open(uow, ctx, appeal.account_id, "")
                appealed = uow.get_event(appeal.account_id, appeal.event_id)
                if appealed is None:  # FileAppeal found it, and events are never deleted
                    raise NotFound("no such decision on this account", reason="EVENT_NOT_FOUND")
                decision = decisions.reverse(
                    ctx, account, appealed, uow.events_after(appealed), appeal.appeal_id
                )
                account, event = self._apply(uow, decision), decision.event
            appeal = replace(
                appeal,
                status=AppealStatus.reversed if command.reverse else AppealStatus.upheld,
                resolution=command.resolution,
                resolved_at=ctx.now,
            )
            uow.save_appeal(appeal)
            return Outcome(account=account, event=event, appeal=appeal)

        return self._once(command.key, respond, None, ActorKind.operator, decide)

    # -- shared steps -----------------------------------------------------------------------

    def _replayed(self, key: Idempotency, respond: Respond[Any, M]) -> M | None:
        """The stored answer to a request id, read before any scoring is done."""
        with self.store.read() as uow:
            return _replay(uow, key, respond)

    def _once(
        self,
        key: Idempotency,
        respond: Respond[Outcome, M],
        policy: Policy | None,
        actor: ActorKind,
        decide: Callable[[UnitOfWork, Context], Outcome],
    ) -> M:
        """One unit of work under one policy snapshot, answered once per request id: a replay
        returns the stored answer; a new answer is stored with the change it made."""
        ctx = self._context(policy or self.policies.policy, key.request_id, actor)
        with self._writing(ctx.policy) as uow:
            return self._answer(uow, _Mutation(key, respond, ctx, decide))

    @staticmethod
    def _answer(uow: UnitOfWork, mutation: _Mutation) -> Any:
        """The stored answer to the call's request id, or its change made and answered."""
        key, respond, ctx = mutation.key, mutation.respond, mutation.ctx
        if (replayed := _replay(uow, key, respond)) is not None:
            return replayed
        outcome = replace(mutation.decide(uow, ctx), policy=ctx.policy, decided_at=ctx.now)
        answer = respond.message(outcome)
        uow.save_idempotent(
            key.scope, key.request_id, key.method, key.fingerprint, answer.SerializeToString()
        )
        return answer

    @contextmanager
    def _writing(self, policy: Policy | None = None) -> Iterator[UnitOfWork]:
        """A unit of work that writes the notices of the decisions it stored and the treatment
        steps it decided, in the same transaction, and counts them in the metrics once it
        commits: every decision of every path (a call's own, the exits `_open` records first,
        a review page's, an appeal's outcome) is stored through it, and a rolled-back or
        dry-run one writes and counts nothing."""
        with self.store.unit_of_work() as uow:
            yield uow
            # Last, because numbering them holds the outboxes' counters until the commit.
            last_notice = uow.add_notices(self._notices(uow, policy or self.policies.policy))
            uow.treatment = uow.add_treatment_steps(uow.treatment)
        metrics.count_decisions(uow.appended)
        if last_notice is not None:
            self.notice_feed.publish(last_notice)
        if uow.treatment:
            self.treatment_feed.publish(uow.treatment[-1].number)

    def _notices(self, uow: UnitOfWork, policy: Policy) -> list[CustomerNotice]:
        """One notice for each customer-facing decision stored and each appeal resolved."""
        templates = self.templates.templates
        currency = policy.currency_code  # every line is granted in the policy's currency
        found = [
            notice
            for event in uow.appended
            if (notice := notice_of_event(event, currency, policy, templates)) is not None
        ]
        for appeal in uow.resolved_appeals:
            # A reversed appeal is told by its reversal's notice, among the events above.
            if appeal.status is not AppealStatus.upheld:
                continue
            appealed = uow.get_event(appeal.account_id, appeal.event_id)
            if appealed is not None:  # FileAppeal found it, and events are never deleted
                at = appeal.resolved_at or self.clock()
                found.append(
                    notice_of_upheld_appeal(appeal, appealed, currency, policy, templates, at)
                )
        return found

    def _context(self, policy: Policy, request_id: str, actor: ActorKind) -> Context:
        # Operators and services are named on the events they cause: the authenticated
        # principal (empty with authentication off). Customers and the policy are not.
        principal = current_principal() if actor in NAMED_ACTORS else None
        actor_id = principal.name if principal else ""
        return Context(policy, self.clock(), request_id, actor, actor_id)

    def _read(self, uow: UnitOfWork, policy: Policy, account_id: str) -> Account:
        account = uow.get_account(account_id)
        if account is None:
            raise NotFound(f"no account {account_id}", reason="ACCOUNT_NOT_FOUND")
        return decisions.current(account, policy, self.clock())

    def _open(
        self, uow: UnitOfWork, ctx: Context, account_id: str, etag: str, at: datetime | None = None
    ) -> Account:
        """The account locked for a change, brought to the present: the exits its state or
        the time opened (a watchlist's clean period, a hardship's end) are recorded first."""
        account = uow.get_account(account_id, lock=True)
        if account is None:
            raise NotFound(f"no account {account_id}", reason="ACCOUNT_NOT_FOUND")
        if etag and etag != account.etag:
            raise Aborted(
                "the account changed since it was read; read it again",
                reason="STALE_ETAG",
                metadata={"etag": account.etag},
            )
        for exit_decision in decisions.settle(ctx, account, at):
            uow.append_event(_recorded(exit_decision))
            account = exit_decision.account
        return decisions.current(account, ctx.policy, ctx.now)

    @staticmethod
    def _apply(uow: UnitOfWork, decision: Decision) -> Account:
        account = uow.save_account(decision.account)
        if decision.event is not None:
            uow.append_event(decision.event)
        return account


def _reviewed(
    ctx: Context, accounts: list[Account], scores: dict[str, Score | Unscored | None]
) -> Iterator[tuple[Account, list[LimitEvent], Decision | Unscored]]:
    """Each account's review after the exits it is due: the account as it was, the events to
    record (the exits', then the review's) and the review's decision; or, for an account whose
    risk state cannot be scored, nothing to record and why. A review run and a simulation both
    go through here."""
    for account in accounts:
        score = scores.get(account.account_id)
        if isinstance(score, Unscored):
            yield account, [], score
            continue
        before, events = account, []
        for exit_decision in decisions.settle(ctx, account):
            events.append(_recorded(exit_decision))
            account = exit_decision.account
        account = decisions.current(account, ctx.policy, ctx.now)
        decision = decisions.review(ctx, account, score)
        yield before, [*events, _recorded(decision)], decision


def _replay(uow: UnitOfWork, key: Idempotency, respond: Respond[Any, M]) -> M | None:
    record = uow.find_idempotent(key.scope, key.request_id)
    if record is None:
        return None
    if record.method != key.method or record.fingerprint != key.fingerprint:
        raise AlreadyExists(
            "this request_id was used for a different request",
            reason="REQUEST_ID_REUSED",
            metadata={"request_id": key.request_id},
        )
    return respond.parse(record.response)


def _recorded(decision: Decision) -> LimitEvent:
    """The event of a decision that always records one: an opening, a review, an exit."""
    if decision.event is None:
        raise ValueError(f"a decision without its event: {decision.account.account_id}")
    return decision.event


def _outcome(decision: Decision, account: Account | None = None) -> Outcome:
    return Outcome(
        account=account or decision.account,
        event=decision.event,
        approved=decision.approved,
        improvements=decision.improvements,
        next_eligible_at=decision.next_eligible_at,
    )


def _shards_of(run: ReviewRun) -> list[ReviewShard]:
    """The run's shards: consecutive ranges of the review buckets, as even as they divide."""
    return [
        ReviewShard(
            run.run_id,
            i,
            first_bucket=i * REVIEW_BUCKETS // run.shards,
            end_bucket=(i + 1) * REVIEW_BUCKETS // run.shards,
        )
        for i in range(run.shards)
    ]


def _wall_clock() -> datetime:
    """The time leases are measured in: this machine's, whatever clock decisions are made by
    (replicas' clocks must agree to well within a lease)."""
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex
