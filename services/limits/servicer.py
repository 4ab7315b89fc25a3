"""The LimitsService RPCs: validate, take the account's lock, let the policy engine decide,
store the account, its event and the answer in one transaction.

Every mutation is idempotent by request_id: the answer is stored with the change it made, in
the same transaction, so a retry gets the first answer even after a crash between commit and
reply; the same id with other parameters is refused. Calls to scoring happen before the
transaction opens, so no database lock is held across the network.
"""

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from creditline.limits.v1 import limits_service_pb2 as pb
from creditline.limits.v1 import limits_service_pb2_grpc
from creditline.type.v1 import risk_pb2
from services.common.context import current_principal
from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    Violations,
)
from services.limits import converters, decisions, ledger
from services.limits.decisions import Affordability, Context, Decision, IncreaseHistory, Signal
from services.limits.ledger import AccountStatus
from services.limits.policy import PolicyError, PolicyHolder, Severity, parse_policy
from services.limits.records import Account, ActorKind, Appeal, AppealStatus, EventType
from services.limits.scoring_client import ScoringClient
from services.limits.store import LimitsStore, ReviewRun, UnitOfWork

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
# Accounts a portfolio review scores in one BatchScore and applies in one transaction.
REVIEW_PAGE = 500
MAX_ID_LENGTH = 128
NAMED_ACTORS = frozenset({ActorKind.operator, ActorKind.monitoring})
SEVERITIES = {pb.SignalSeverity.Value(f"SIGNAL_SEVERITY_{s.name.upper()}"): s for s in Severity}


def utc_now() -> datetime:
    return datetime.now(UTC)


class LimitsServicer(limits_service_pb2_grpc.LimitsServiceServicer):
    def __init__(
        self,
        store: LimitsStore | None,
        policies: PolicyHolder,
        scoring: ScoringClient,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self.policies = policies
        self.scoring = scoring
        self.clock = clock

    @property
    def store(self) -> LimitsStore:
        if self._store is None:  # the server answers while the database is being migrated
            raise Unavailable("the service is starting; retry shortly", reason="STARTING")
        return self._store

    def attach_store(self, store: LimitsStore) -> None:
        self._store = store

    def close(self) -> None:
        self.scoring.close()
        if self._store is not None:
            self._store.close()

    # -- accounts ----------------------------------------------------------------------

    def OpenAccount(self, request: pb.OpenAccountRequest, context) -> pb.OpenAccountResponse:
        policy = self.policies.policy
        violations = Violations()
        _require_id(request.request_id, "request_id", violations)
        _require_id(request.customer_id, "customer_id", violations)
        currency = request.currency_code or policy.currency_code
        if currency != policy.currency_code:
            violations.add("currency_code", f"lines are granted in {policy.currency_code}")
        affordability = _affordability(request, currency, violations)
        if not request.features:
            violations.add("features", "the application features are required")
        violations.raise_if_any()
        if (replayed := self._replayed("OpenAccount", request)) is not None:
            return replayed
        score = self.scoring.score("application", request.features)
        ctx = self._context(request.request_id, ActorKind.customer)
        decision = decisions.open_account(
            ctx, uuid.uuid4().hex, request.customer_id, score, affordability
        )
        with self.store.unit_of_work() as uow:
            if (replayed := self._replay(uow, "OpenAccount", request)) is not None:
                return replayed
            uow.insert_account(decision.account)
            uow.append_event(decision.event)
            response = pb.OpenAccountResponse(
                account=converters.account_message(decision.account),
                event=converters.event_message(decision.event, decision.account.currency_code),
            )
            return self._remember(uow, "OpenAccount", request, response)

    def GetAccount(self, request: pb.GetAccountRequest, context) -> pb.GetAccountResponse:
        violations = Violations()
        _require_id(request.account_id, "account_id", violations)
        violations.raise_if_any()
        with self.store.read() as uow:
            account = self._account(uow, request.account_id)
        return pb.GetAccountResponse(account=converters.account_message(account))

    def ListLimitEvents(
        self, request: pb.ListLimitEventsRequest, context
    ) -> pb.ListLimitEventsResponse:
        violations = Violations()
        _require_id(request.account_id, "account_id", violations)
        page_size = _page_size(request.page_size, violations)
        before = converters.parse_page_token(request.page_token, violations)
        violations.raise_if_any()
        with self.store.read() as uow:
            account = self._account(uow, request.account_id)
            events = uow.list_events(account.account_id, page_size + 1, before)
        page, token = _page(events, page_size, lambda e: (e.created_at, e.event_id))
        return pb.ListLimitEventsResponse(
            events=[converters.event_message(e, account.currency_code) for e in page],
            next_page_token=token,
        )

    # -- the ledger --------------------------------------------------------------------

    def Draw(self, request: pb.DrawRequest, context) -> pb.DrawResponse:
        violations = Violations()
        if not request.purpose:
            violations.add("purpose", "required: what the loan funds")

        def draw(line: ledger.Line, amount: int) -> ledger.Line:
            if request.purpose in self.policies.policy.prohibited_purposes:
                raise FailedPrecondition(
                    f"a consumer credit line may not fund {request.purpose}",
                    reason="PROHIBITED_PURPOSE",
                    metadata={"purpose": request.purpose},
                )
            return ledger.draw(line, amount)

        return self._move_credit("Draw", request, violations, draw, pb.DrawResponse)

    def Repay(self, request: pb.RepayRequest, context) -> pb.RepayResponse:
        return self._move_credit("Repay", request, Violations(), ledger.repay, pb.RepayResponse)

    def _move_credit(self, method, request, violations: Violations, operation, response_type):
        """A draw or a repayment: `operation` moves the amount on the account's line."""
        _require_id(request.request_id, "request_id", violations)
        _require_id(request.account_id, "account_id", violations)
        violations.raise_if_any()
        with self.store.unit_of_work() as uow:
            if (replayed := self._replay(uow, method, request)) is not None:
                return replayed
            account = self._locked(uow, request.account_id, request.etag)
            amount = converters.amount_of(
                request.amount, account.currency_code, "amount", violations
            )
            violations.raise_if_any()
            account = uow.save_account(replace(account, line=operation(account.line, amount)))
            response = response_type(account=converters.account_message(account))
            return self._remember(uow, method, request, response)

    # -- decisions that need a score -------------------------------------------------------

    def RequestIncrease(
        self, request: pb.RequestIncreaseRequest, context
    ) -> pb.RequestIncreaseResponse:
        violations = Violations()
        _require_id(request.request_id, "request_id", violations)
        _require_id(request.account_id, "account_id", violations)
        if not request.features:
            violations.add("features", "the account's behaviour features are required")
        violations.raise_if_any()
        if (replayed := self._replayed("RequestIncrease", request)) is not None:
            return replayed
        with self.store.read() as uow:
            currency = self._account(uow, request.account_id).currency_code
        requested = converters.amount_of(
            request.requested_line, currency, "requested_line", violations, required=False
        )
        affordability = _affordability(request, currency, violations)
        violations.raise_if_any()
        score = self.scoring.score("behaviour", request.features)
        policy_period = self.policies.policy.requested_increase.period_days
        with self.store.unit_of_work() as uow:
            if (replayed := self._replay(uow, "RequestIncrease", request)) is not None:
                return replayed
            account = self._locked(uow, request.account_id, request.etag)
            ctx = self._context(request.request_id, ActorKind.customer)
            history = _increase_history(uow, account, ctx.now, policy_period)
            decision = decisions.request_increase(
                ctx, account, requested, score, affordability, history
            )
            account = self._apply(uow, decision)
            response = pb.RequestIncreaseResponse(
                approved=decision.approved,
                account=converters.account_message(account),
                event=converters.event_message(decision.event, account.currency_code),
                improvements=[converters.reason_message(r) for r in decision.improvements],
                next_eligible_time=converters.timestamp(decision.next_eligible_at),
            )
            return self._remember(uow, "RequestIncrease", request, response)

    def ReviewAccount(self, request: pb.ReviewAccountRequest, context) -> pb.ReviewAccountResponse:
        return self._scored_decision(
            "ReviewAccount",
            request,
            ActorKind.review,
            decisions.review,
            lambda account, decision: pb.ReviewAccountResponse(
                account=converters.account_message(account),
                event=converters.event_message(decision.event, account.currency_code),
            ),
        )

    def RequestReopen(self, request: pb.RequestReopenRequest, context) -> pb.RequestReopenResponse:
        return self._scored_decision(
            "RequestReopen",
            request,
            ActorKind.customer,
            decisions.request_reopen,
            lambda account, decision: pb.RequestReopenResponse(
                reopened=decision.approved,
                account=converters.account_message(account),
                event=converters.event_message(decision.event, account.currency_code),
                next_eligible_time=converters.timestamp(decision.next_eligible_at),
            ),
        )

    def _scored_decision(self, method, request, actor, decide, respond):
        """Score the account's behaviour, then decide under its lock."""
        violations = Violations()
        _require_id(request.request_id, "request_id", violations)
        _require_id(request.account_id, "account_id", violations)
        if not request.features:
            violations.add("features", "the account's behaviour features are required")
        violations.raise_if_any()
        if (replayed := self._replayed(method, request)) is not None:
            return replayed
        with self.store.read() as uow:
            self._account(uow, request.account_id)  # NOT_FOUND before scoring
        score = self.scoring.score("behaviour", request.features)
        with self.store.unit_of_work() as uow:
            if (replayed := self._replay(uow, method, request)) is not None:
                return replayed
            account = self._locked(uow, request.account_id, getattr(request, "etag", ""))
            decision = decide(self._context(request.request_id, actor), account, score)
            account = self._apply(uow, decision)
            return self._remember(uow, method, request, respond(account, decision))

    # -- the book --------------------------------------------------------------------------

    def RunReview(self, request: pb.RunReviewRequest, context):
        """Reviews every due account, a page per transaction with the run's progress, so a
        run resumed by its request_id after a crash applies nothing twice."""
        violations = Violations()
        _require_id(request.request_id, "request_id", violations)
        violations.raise_if_any()
        as_of = (
            converters.from_timestamp(request.as_of_time)
            if request.HasField("as_of_time")
            else self.clock()
        )
        with self.store.unit_of_work() as uow:
            run = uow.get_review_run(request.request_id)
            if run is None:
                run = ReviewRun(request.request_id, as_of, request.dry_run)
                uow.save_review_run(run)
            elif run.dry_run != request.dry_run or (
                request.HasField("as_of_time") and run.as_of != as_of
            ):
                raise AlreadyExists(
                    "this request_id names a review run with other parameters",
                    reason="REQUEST_ID_REUSED",
                )
        with self.store.read() as uow:
            due = run.counts.get("reviewed", 0) + uow.count_accounts_due_for_review(
                run.as_of, run.last_account_id
            )
        yield _review_progress(run, due)
        while not run.done:
            with self.store.read() as uow:
                page = uow.accounts_due_for_review(run.as_of, run.last_account_id, REVIEW_PAGE)
            scores = self.scoring.batch_score("behaviour", [a.behaviour_profile for a in page])
            with self.store.unit_of_work() as uow:
                stored = uow.get_review_run(run.run_id, lock=True)
                if stored == run:
                    run = self._review_page(uow, run, page, scores)
                    uow.save_review_run(run)
                else:  # another call resumed this run meanwhile: carry on from where it is
                    run = stored
            yield _review_progress(run, due)

    def _review_page(self, uow: UnitOfWork, run: ReviewRun, page, scores) -> ReviewRun:
        if not page:
            return replace(run, done=True)
        counts = dict(run.counts)
        ctx = self._context(run.run_id, ActorKind.review)
        score_of = dict(zip((a.account_id for a in page), scores, strict=True))
        reviewed = []
        for account in uow.get_accounts(list(score_of), lock=True):
            if account.next_review_at is None or account.next_review_at > run.as_of:
                continue  # reviewed since the page was read
            score = score_of[account.account_id]
            decision = decisions.review(
                ctx,
                account,
                score or decisions.last_known_score(account),
                fresh_score=score is not None,
            )
            outcome = decision.event.type.value
            counts[outcome] = counts.get(outcome, 0) + 1
            counts["reviewed"] = counts.get("reviewed", 0) + 1
            reviewed.append(decision)
        if not run.dry_run:
            uow.save_accounts([d.account for d in reviewed])
            uow.append_events([d.event for d in reviewed])
        return replace(run, last_account_id=page[-1].account_id, counts=counts)

    def SimulatePolicy(
        self, request: pb.SimulatePolicyRequest, context
    ) -> pb.SimulatePolicyResponse:
        try:
            candidate = parse_policy(request.policy, "policy")
        except PolicyError as error:
            raise InvalidArgument([FieldViolation("policy", str(error))]) from None
        ctx = Context(candidate, self.clock(), "simulation", ActorKind.policy)
        tiers: dict[str, dict[str, int]] = {}
        after = ""
        while True:
            with self.store.read() as uow:
                page = uow.accounts_page(after, REVIEW_PAGE)
            if not page:
                break
            after = page[-1].account_id
            for account in page:
                if account.status in (AccountStatus.closed, AccountStatus.declined):
                    continue
                outcome, change = decisions.simulate(ctx, account)
                tier = candidate.tier_for(account.risk_band or "E")
                counts = tiers.setdefault(tier.name if tier else "declined", {})
                counts["accounts"] = counts.get("accounts", 0) + 1
                counts["exposure_change"] = counts.get("exposure_change", 0) + change
                if outcome:
                    counts[outcome] = counts.get(outcome, 0) + 1
        currency = candidate.currency_code
        return pb.SimulatePolicyResponse(
            policy_version=candidate.version,
            tiers=[
                pb.TierImpact(
                    tier=name,
                    accounts=counts.get("accounts", 0),
                    rise=counts.get("rise", 0),
                    fall=counts.get("fall", 0),
                    freeze=counts.get("freeze", 0),
                    close=counts.get("close", 0),
                    exposure_change=converters.money(counts["exposure_change"], currency),
                )
                for name, counts in sorted(tiers.items())
            ],
            exposure_change=converters.money(
                sum(c["exposure_change"] for c in tiers.values()), currency
            ),
        )

    # -- signals from monitoring ---------------------------------------------------------

    def ReportSignals(self, request: pb.ReportSignalsRequest, context) -> pb.ReportSignalsResponse:
        violations = Violations()
        if not request.signals:
            violations.add("signals", "at least one signal is required")
        for i, signal in enumerate(request.signals):
            _require_id(signal.signal_id, f"signals[{i}].signal_id", violations)
            _require_id(signal.account_id, f"signals[{i}].account_id", violations)
            if not signal.type:
                violations.add(f"signals[{i}].type", "required")
            if signal.severity not in SEVERITIES:
                violations.add(f"signals[{i}].severity", "required")
        violations.raise_if_any()
        with self.store.read() as uow:
            for signal in request.signals:
                self._account(uow, signal.account_id)
        outcomes = []
        for signal in request.signals:
            with self.store.unit_of_work() as uow:
                outcomes.append(self._apply_signal(uow, signal))
        return pb.ReportSignalsResponse(outcomes=outcomes)

    def _apply_signal(self, uow: UnitOfWork, signal: pb.Signal) -> pb.SignalOutcome:
        seen = uow.find_signal(signal.signal_id)
        account = self._locked(uow, signal.account_id, "")
        if seen is not None:
            event = uow.get_event(seen.event_id) if seen.event_id else None
            return pb.SignalOutcome(
                signal_id=signal.signal_id,
                duplicate=True,
                event=converters.event_message(event, account.currency_code) if event else None,
            )
        if signal.profile:
            account = replace(account, behaviour_profile=dict(signal.profile))
        if signal.latest_risk_band != risk_pb2.RISK_BAND_UNSPECIFIED:
            band = risk_pb2.RiskBand.Name(signal.latest_risk_band).removeprefix("RISK_BAND_")
            account = replace(account, risk_band=band)
        ctx = self._context(signal.signal_id, ActorKind.monitoring)
        detected = (
            converters.from_timestamp(signal.detect_time)
            if signal.HasField("detect_time")
            else ctx.now
        )
        decision = decisions.apply_signal(
            ctx,
            account,
            Signal(
                signal.signal_id,
                signal.type,
                SEVERITIES[signal.severity],
                detected,
                dict(signal.evidence),
            ),
        )
        account = self._apply(uow, decision)
        uow.save_signal(
            signal.signal_id,
            account.account_id,
            decision.event.event_id if decision.event else None,
        )
        return pb.SignalOutcome(
            signal_id=signal.signal_id,
            event=converters.event_message(decision.event, account.currency_code)
            if decision.event
            else None,
        )

    # -- operator and customer actions ----------------------------------------------------

    def FreezeAccount(self, request, context) -> pb.FreezeAccountResponse:
        return self._operator_action(
            "FreezeAccount", request, decisions.freeze, pb.FreezeAccountResponse
        )

    def UnfreezeAccount(self, request, context) -> pb.UnfreezeAccountResponse:
        return self._operator_action(
            "UnfreezeAccount", request, decisions.unfreeze, pb.UnfreezeAccountResponse
        )

    def CloseAccount(self, request, context) -> pb.CloseAccountResponse:
        return self._operator_action(
            "CloseAccount", request, decisions.close, pb.CloseAccountResponse
        )

    def _operator_action(self, method, request, decide, response_type):
        violations = Violations()
        _require_id(request.request_id, "request_id", violations)
        _require_id(request.account_id, "account_id", violations)
        if not request.reason.strip():
            violations.add("reason", "required: why the operator acts")
        violations.raise_if_any()
        return self._decide(
            method,
            request,
            ActorKind.operator,
            lambda ctx, account, uow: decide(ctx, account, request.reason),
            lambda account, decision: response_type(account=converters.account_message(account)),
        )

    def EnrollHardship(self, request, context) -> pb.EnrollHardshipResponse:
        violations = Violations()
        _require_id(request.request_id, "request_id", violations)
        _require_id(request.account_id, "account_id", violations)
        violations.raise_if_any()

        def enroll(ctx, account, uow):
            earlier = [
                e.created_at
                for e in uow.list_events(account.account_id, MAX_PAGE_SIZE)
                if e.type is EventType.hardship_enrolled
            ]
            return decisions.enroll_hardship(ctx, account, request.term_months, earlier)

        return self._decide(
            "EnrollHardship",
            request,
            ActorKind.customer,
            enroll,
            lambda account, _: pb.EnrollHardshipResponse(
                account=converters.account_message(account)
            ),
        )

    def SetPreferences(self, request, context) -> pb.SetPreferencesResponse:
        violations = Violations()
        _require_id(request.request_id, "request_id", violations)
        _require_id(request.account_id, "account_id", violations)
        violations.raise_if_any()

        def set_preferences(ctx, account, uow):
            cap = None
            if request.HasField("customer_cap") and request.customer_cap.minor_units:
                cap = converters.amount_of(
                    request.customer_cap, account.currency_code, "customer_cap", violations
                )
                violations.raise_if_any()
            return decisions.set_preferences(ctx, account, cap, request.automatic_increases)

        return self._decide(
            "SetPreferences",
            request,
            ActorKind.customer,
            set_preferences,
            lambda account, _: pb.SetPreferencesResponse(
                account=converters.account_message(account)
            ),
        )

    def _decide(self, method, request, actor, decide, respond):
        """An unscored decision under the account's lock, idempotent by request_id."""
        with self.store.unit_of_work() as uow:
            if (replayed := self._replay(uow, method, request)) is not None:
                return replayed
            account = self._locked(uow, request.account_id, request.etag)
            decision = decide(self._context(request.request_id, actor), account, uow)
            account = self._apply(uow, decision)
            return self._remember(uow, method, request, respond(account, decision))

    # -- appeals -------------------------------------------------------------------------

    def FileAppeal(self, request: pb.FileAppealRequest, context) -> pb.FileAppealResponse:
        violations = Violations()
        _require_id(request.request_id, "request_id", violations)
        _require_id(request.account_id, "account_id", violations)
        _require_id(request.event_id, "event_id", violations)
        if not request.statement.strip():
            violations.add("statement", "required: what the customer disputes")
        violations.raise_if_any()
        with self.store.unit_of_work() as uow:
            if (replayed := self._replay(uow, "FileAppeal", request)) is not None:
                return replayed
            self._account(uow, request.account_id)
            event = uow.get_event(request.event_id)
            if event is None or event.account_id != request.account_id:
                raise NotFound("no such decision on this account", reason="EVENT_NOT_FOUND")
            if not event.adverse:
                raise FailedPrecondition(
                    "only adverse decisions (declines, reductions, freezes, closures) are appealed",
                    reason="NOT_APPEALABLE",
                )
            appeal = Appeal(
                appeal_id=uuid.uuid4().hex,
                account_id=request.account_id,
                event_id=request.event_id,
                statement=request.statement.strip(),
                status=AppealStatus.open,
                created_at=self.clock(),
            )
            uow.insert_appeal(appeal)
            response = pb.FileAppealResponse(appeal=converters.appeal_message(appeal))
            return self._remember(uow, "FileAppeal", request, response)

    def ListAppeals(self, request: pb.ListAppealsRequest, context) -> pb.ListAppealsResponse:
        violations = Violations()
        page_size = _page_size(request.page_size, violations)
        before = converters.parse_page_token(request.page_token, violations)
        violations.raise_if_any()
        status = converters.APPEAL_STATUS_BY_PROTO.get(request.status)
        with self.store.read() as uow:
            appeals = uow.list_appeals(request.account_id or None, status, page_size + 1, before)
        page, token = _page(appeals, page_size, lambda a: (a.created_at, a.appeal_id))
        return pb.ListAppealsResponse(
            appeals=[converters.appeal_message(a) for a in page], next_page_token=token
        )

    def ResolveAppeal(self, request: pb.ResolveAppealRequest, context) -> pb.ResolveAppealResponse:
        violations = Violations()
        _require_id(request.request_id, "request_id", violations)
        _require_id(request.appeal_id, "appeal_id", violations)
        if not request.resolution.strip():
            violations.add("resolution", "required: what was decided and why")
        violations.raise_if_any()
        with self.store.unit_of_work() as uow:
            if (replayed := self._replay(uow, "ResolveAppeal", request)) is not None:
                return replayed
            appeal = uow.get_appeal(request.appeal_id, lock=True)
            if appeal is None:
                raise NotFound("no such appeal", reason="APPEAL_NOT_FOUND")
            if appeal.status is not AppealStatus.open:
                raise FailedPrecondition(f"the appeal is {appeal.status}", reason="APPEAL_CLOSED")
            ctx = self._context(request.request_id, ActorKind.operator)
            event = None
            if request.reverse:
                account = self._locked(uow, appeal.account_id, "")
                decision = decisions.reverse(ctx, account, uow.get_event(appeal.event_id))
                account = self._apply(uow, decision)
                event = converters.event_message(decision.event, account.currency_code)
            appeal = replace(
                appeal,
                status=AppealStatus.reversed if request.reverse else AppealStatus.upheld,
                resolution=request.resolution.strip(),
                resolved_at=ctx.now,
            )
            uow.save_appeal(appeal)
            response = pb.ResolveAppealResponse(
                appeal=converters.appeal_message(appeal), event=event
            )
            return self._remember(uow, "ResolveAppeal", request, response)

    # -- shared steps --------------------------------------------------------------------

    def _context(self, request_id: str, actor: ActorKind) -> Context:
        # Operators and services are named on the events they cause: the authenticated
        # principal (empty with authentication off). Customers and the policy are not.
        principal = current_principal() if actor in NAMED_ACTORS else None
        actor_id = principal.name if principal else ""
        return Context(self.policies.policy, self.clock(), request_id, actor, actor_id)

    def _account(self, uow: UnitOfWork, account_id: str) -> Account:
        account = uow.get_account(account_id)
        if account is None:
            raise NotFound(f"no account {account_id}", reason="ACCOUNT_NOT_FOUND")
        return decisions.current(account, self.clock())

    def _locked(self, uow: UnitOfWork, account_id: str, etag: str) -> Account:
        account = uow.get_account(account_id, lock=True)
        if account is None:
            raise NotFound(f"no account {account_id}", reason="ACCOUNT_NOT_FOUND")
        if etag and etag != account.etag:
            raise Aborted(
                "the account changed since it was read; read it again",
                reason="STALE_ETAG",
                metadata={"etag": account.etag},
            )
        return decisions.current(account, self.clock())

    @staticmethod
    def _apply(uow: UnitOfWork, decision: Decision) -> Account:
        account = uow.save_account(decision.account)
        if decision.event is not None:
            uow.append_event(decision.event)
        return account

    def _replayed(self, method: str, request):
        """The stored answer to a request_id, read before any scoring is done."""
        with self.store.read() as uow:
            return self._replay(uow, method, request)

    def _replay(self, uow: UnitOfWork, method: str, request):
        record = uow.find_idempotent(request.request_id)
        if record is None:
            return None
        if record.method != method or record.fingerprint != _fingerprint(request):
            raise AlreadyExists(
                "this request_id was used for a different request",
                reason="REQUEST_ID_REUSED",
                metadata={"request_id": request.request_id},
            )
        return type(self)._response_types[method].FromString(record.response)

    @staticmethod
    def _remember(uow: UnitOfWork, method: str, request, response):
        uow.save_idempotent(
            request.request_id, method, _fingerprint(request), response.SerializeToString()
        )
        return response

    _response_types = {
        name: getattr(pb, f"{name}Response")
        for name in pb.DESCRIPTOR.services_by_name["LimitsService"].methods_by_name
        if hasattr(pb, f"{name}Response")
    }


def _fingerprint(request) -> str:
    """What a request asks for, without its request_id."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _review_progress(run: ReviewRun, due: int) -> pb.RunReviewResponse:
    counts = run.counts
    return pb.RunReviewResponse(
        accounts_due=due,
        accounts_reviewed=counts.get("reviewed", 0),
        increased=counts.get(EventType.increased.value, 0),
        reduced=counts.get(EventType.reduced.value, 0),
        unchanged=counts.get(EventType.reviewed_unchanged.value, 0),
        done=run.done,
    )


def _page(items: list, page_size: int, position) -> tuple[list, str]:
    """A page of `items` (read one past the page) and the token of the next page, if any."""
    page = items[:page_size]
    if len(items) <= page_size:
        return page, ""
    return page, converters.page_token(*position(page[-1]))


def _require_id(value: str, field: str, violations: Violations) -> None:
    if not value:
        violations.add(field, "required")
    elif len(value) > MAX_ID_LENGTH:
        violations.add(field, f"at most {MAX_ID_LENGTH} characters")


def _page_size(requested: int, violations: Violations) -> int:
    if requested < 0:
        violations.add("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _affordability(request, currency: str, violations: Violations) -> Affordability:
    income = converters.amount_of(request.monthly_income, currency, "monthly_income", violations)
    debt = request.monthly_debt_payments
    if debt.minor_units < 0:
        violations.add("monthly_debt_payments.minor_units", "must not be negative")
    elif debt.minor_units and debt.currency_code != currency:
        violations.add("monthly_debt_payments.currency_code", f"must be {currency}")
    return Affordability(income or 0, max(debt.minor_units, 0))


def _increase_history(uow: UnitOfWork, account: Account, now: datetime, period_days: int):
    events = uow.list_events(account.account_id, MAX_PAGE_SIZE)
    declined = [e.created_at for e in events if e.type is EventType.increase_declined]
    window_start = now - timedelta(days=period_days)
    changes = tuple(
        e.created_at
        for e in events
        if e.type in (EventType.increased, EventType.reduced) and e.created_at >= window_start
    )
    return IncreaseHistory(max(declined, default=None), changes)
