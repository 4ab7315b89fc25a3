"""The LimitsService RPCs, transport only: validate each request field by field, convert it into
the application's typed command, and convert the outcome back (`application.py` decides and
stores; `converters.py` converts).

Every mutation is idempotent by request_id: the answer is stored with the change it made, in
the same transaction, so a retry gets the first answer even after a crash between commit and
reply; the same id with other parameters is refused.
"""

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from creditline.limits.v1 import limits_service_pb2 as pb
from creditline.limits.v1 import limits_service_pb2_grpc
from services.common.errors import FieldViolation, InvalidArgument, Violations
from services.common.feeds import Heartbeat, StreamSlots, follow, parse_cursor
from services.limits import application as app
from services.limits import converters
from services.limits.application import (
    Idempotency,
    LimitsApplication,
    Respond,
    ReviewSharding,
    SimulatedPage,
)
from services.limits.decisions import Affordability, Signal
from services.limits.notices import TemplatesHolder
from services.limits.policy import (
    SIGNAL_TYPES,
    PolicyError,
    PolicyHolder,
    Severity,
    is_time_zone,
    parse_policy,
)
from services.limits.records import EventType
from services.limits.scoring_client import ScoringClient

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
MAX_ID_LENGTH = 128
# Notices (treatment steps) read from the store per round of a watch.
WATCH_PAGE = 500
# How far ahead of this server's clock a reported delivery may be (the sender's clock drifts).
DELIVERY_CLOCK_SKEW = timedelta(minutes=5)
# Shards a review run may be split into: each holds at least 4 of the 1,024 review buckets.
MAX_REVIEW_SHARDS = 256
# What a request's idempotency record is scoped by, where it is not the account it names.
IDEMPOTENCY_SCOPES: dict[str, str | None] = {
    "OpenAccount": "customer_id",
    "ResolveAppeal": "appeal_id",
    "AcknowledgeNotice": "notice_id",
    "AcknowledgeTreatmentStep": "step_id",
    "RunCollections": None,  # the whole book: no scope
}
SEVERITIES = {pb.SignalSeverity.Value(f"SIGNAL_SEVERITY_{s.name.upper()}"): s for s in Severity}


def utc_now() -> datetime:
    return datetime.now(UTC)


def _account(outcome: app.Outcome) -> pb.Account:
    """The account an outcome answers with, as of its decision."""
    account, policy, decided_at = outcome.account, outcome.policy, outcome.decided_at
    if account is None or policy is None or decided_at is None:
        raise ValueError("an outcome without its account, policy or time")
    return converters.account_message(account, policy, decided_at)


def _event(outcome: app.Outcome) -> pb.LimitEvent:
    """The decision an outcome recorded."""
    if outcome.account is None or outcome.event is None:
        raise ValueError("an outcome without its account or event")
    return converters.event_message(outcome.event, outcome.account.currency_code)


def _appeal(outcome: app.Outcome) -> pb.Appeal:
    if outcome.appeal is None:
        raise ValueError("an outcome without its appeal")
    return converters.appeal_message(outcome.appeal)


def _account_only(response_type) -> Respond:
    return Respond(lambda o: response_type(account=_account(o)), response_type.FromString)


OPENED: Respond[app.Outcome, pb.OpenAccountResponse] = Respond(
    lambda o: pb.OpenAccountResponse(account=_account(o), event=_event(o)),
    pb.OpenAccountResponse.FromString,
)
INCREASE: Respond[app.Outcome, pb.RequestIncreaseResponse] = Respond(
    lambda o: pb.RequestIncreaseResponse(
        approved=o.approved,
        account=_account(o),
        event=_event(o),
        improvements=[converters.reason_message(r) for r in o.improvements],
        next_eligible_time=converters.timestamp(o.next_eligible_at),
    ),
    pb.RequestIncreaseResponse.FromString,
)
REVIEWED: Respond[app.Outcome, pb.ReviewAccountResponse] = Respond(
    lambda o: pb.ReviewAccountResponse(account=_account(o), event=_event(o)),
    pb.ReviewAccountResponse.FromString,
)
REOPEN: Respond[app.Outcome, pb.RequestReopenResponse] = Respond(
    lambda o: pb.RequestReopenResponse(
        reopened=o.approved,
        account=_account(o),
        event=_event(o),
        next_eligible_time=converters.timestamp(o.next_eligible_at),
    ),
    pb.RequestReopenResponse.FromString,
)
APPEAL_FILED: Respond[app.Outcome, pb.FileAppealResponse] = Respond(
    lambda o: pb.FileAppealResponse(appeal=_appeal(o)),
    pb.FileAppealResponse.FromString,
)
APPEAL_RESOLVED: Respond[app.Outcome, pb.ResolveAppealResponse] = Respond(
    lambda o: pb.ResolveAppealResponse(
        appeal=_appeal(o), event=_event(o) if o.event is not None else None
    ),
    pb.ResolveAppealResponse.FromString,
)


NOTICE_ACKNOWLEDGED: Respond[app.Outcome, pb.AcknowledgeNoticeResponse] = Respond(
    lambda o: pb.AcknowledgeNoticeResponse(notice=converters.notice_message(_notice(o))),
    pb.AcknowledgeNoticeResponse.FromString,
)


STEP_ACKNOWLEDGED: Respond[app.Outcome, pb.AcknowledgeTreatmentStepResponse] = Respond(
    lambda o: pb.AcknowledgeTreatmentStepResponse(step=converters.treatment_step_message(_step(o))),
    pb.AcknowledgeTreatmentStepResponse.FromString,
)
COLLECTIONS_RUN: Respond[app.CollectionsRun, pb.RunCollectionsResponse] = Respond(
    lambda run: pb.RunCollectionsResponse(
        accounts_examined=run.accounts_examined, contacts=run.contacts, stops=run.stops
    ),
    pb.RunCollectionsResponse.FromString,
)


def _step(outcome: app.Outcome):
    if outcome.step is None:
        raise ValueError("an outcome without its treatment step")
    return outcome.step


def _notice(outcome: app.Outcome):
    if outcome.notice is None:
        raise ValueError("an outcome without its notice")
    return outcome.notice


class LimitsServicer(limits_service_pb2_grpc.LimitsServiceServicer):
    def __init__(
        self,
        store,
        policies: PolicyHolder,
        scoring: ScoringClient,
        clock: Callable[[], datetime] = utc_now,
        *,
        templates: TemplatesHolder | None = None,
        max_streams: int = 2,
        poll_seconds: float = 0.5,
        heartbeat_seconds: float = 15.0,
        review: ReviewSharding | None = None,
        draw_group: int | None = None,
    ) -> None:
        self.app = LimitsApplication(
            store, policies, scoring, clock, templates, review, draw_group=draw_group
        )
        self._streams = StreamSlots(max_streams)
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds

    @property
    def store(self):
        return self.app.store

    def attach_store(self, store) -> None:
        self.app.attach_store(store)

    def close(self) -> None:
        self.app.close()

    # -- accounts ----------------------------------------------------------------------

    def OpenAccount(self, request: pb.OpenAccountRequest, context) -> pb.OpenAccountResponse:
        policy = self.app.policies.policy
        violations = Violations()
        key = _key("OpenAccount", request, violations)
        _require_id(request.customer_id, "customer_id", violations)
        currency = request.currency_code or policy.currency_code
        if currency != policy.currency_code:
            violations.add("currency_code", f"lines are granted in {policy.currency_code}")
        affordability = _affordability(request, currency, violations)
        if not request.features:
            violations.add("features", "the application features are required")
        if request.time_zone and not is_time_zone(request.time_zone):
            violations.add("time_zone", "not an IANA time zone, such as Asia/Shanghai")
        violations.raise_if_any()
        command = app.OpenAccount(
            key, request.customer_id, request.features, affordability, request.time_zone or None
        )
        return self.app.open_account(command, OPENED)

    def GetAccount(self, request: pb.GetAccountRequest, context) -> pb.GetAccountResponse:
        violations = Violations()
        _require_id(request.account_id, "account_id", violations)
        violations.raise_if_any()
        account = self.app.account(request.account_id)
        policy, now = self.app.policies.policy, self.app.clock()
        return pb.GetAccountResponse(account=converters.account_message(account, policy, now))

    def ListLimitEvents(
        self, request: pb.ListLimitEventsRequest, context
    ) -> pb.ListLimitEventsResponse:
        violations = Violations()
        _require_id(request.account_id, "account_id", violations)
        page_size = _page_size(request.page_size, violations)
        before = converters.parse_page_token(request.page_token, violations)
        violations.raise_if_any()
        account, events = self.app.history(request.account_id, page_size + 1, before)
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
        return self._move_credit("Draw", request, violations, request.purpose, pb.DrawResponse)

    def Repay(self, request: pb.RepayRequest, context) -> pb.RepayResponse:
        return self._move_credit("Repay", request, Violations(), None, pb.RepayResponse)

    def _move_credit(self, method, request, violations: Violations, purpose, response_type):
        key = _key(method, request, violations)
        _require_id(request.account_id, "account_id", violations)
        # Every line is granted in the policy's currency.
        currency = self.app.policies.policy.currency_code
        amount = converters.amount_of(request.amount, currency, "amount", violations)
        violations.raise_if_any()
        assert amount is not None  # required: raise_if_any reported it missing
        command = app.MoveCredit(
            key, request.account_id, amount, request.amount.currency_code, request.etag, purpose
        )
        return self.app.move_credit(command, _account_only(response_type))

    # -- decisions that score the account's risk state ---------------------------------------

    def RequestIncrease(
        self, request: pb.RequestIncreaseRequest, context
    ) -> pb.RequestIncreaseResponse:
        violations = Violations()
        key = _key("RequestIncrease", request, violations)
        _require_id(request.account_id, "account_id", violations)
        violations.raise_if_any()
        currency = self.app.account(request.account_id).currency_code
        requested = converters.amount_of(
            request.requested_line, currency, "requested_line", violations, required=False
        )
        affordability = _affordability(request, currency, violations)
        violations.raise_if_any()
        command = app.RequestIncrease(
            key, request.account_id, requested, affordability, request.etag
        )
        return self.app.request_increase(command, INCREASE)

    def ReviewAccount(self, request: pb.ReviewAccountRequest, context) -> pb.ReviewAccountResponse:
        command = self._scored_request("ReviewAccount", request)
        return self.app.review_account(command, REVIEWED)

    def RequestReopen(self, request: pb.RequestReopenRequest, context) -> pb.RequestReopenResponse:
        command = self._scored_request("RequestReopen", request)
        return self.app.request_reopen(command, REOPEN)

    def _scored_request(self, method: str, request) -> app.ScoredRequest:
        violations = Violations()
        key = _key(method, request, violations)
        _require_id(request.account_id, "account_id", violations)
        violations.raise_if_any()
        return app.ScoredRequest(key, request.account_id, getattr(request, "etag", ""))

    # -- the book --------------------------------------------------------------------------

    def RunReview(self, request: pb.RunReviewRequest, context):
        violations = Violations()
        _require_id(request.request_id, "request_id", violations)
        if not 0 <= request.shards <= MAX_REVIEW_SHARDS:
            violations.add("shards", f"from 1 to {MAX_REVIEW_SHARDS}, or 0 for the default")
        violations.raise_if_any()
        as_of = (
            converters.from_timestamp(request.as_of_time)
            if request.HasField("as_of_time")
            else None
        )
        for progress in self.app.run_review(
            request.request_id, as_of, request.dry_run, request.shards or None, context.is_active
        ):
            counts = progress.counts
            yield pb.RunReviewResponse(
                accounts_due=progress.due,
                accounts_reviewed=counts.get("reviewed", 0),
                increased=counts.get(EventType.increased.value, 0),
                reduced=counts.get(EventType.reduced.value, 0),
                unchanged=counts.get(EventType.reviewed_unchanged.value, 0),
                done=progress.run.done,
                undecided=counts.get("undecided", 0),
                undecided_accounts=[
                    pb.UndecidedAccount(account_id=account_id, reason=reason)
                    for account_id, reason in progress.undecided
                ],
            )

    def SimulatePolicy(
        self, request: pb.SimulatePolicyRequest, context
    ) -> pb.SimulatePolicyResponse:
        candidate = _candidate_policy(request.policy)
        *_, last = self.app.simulate(candidate, stop=_deadline_near(context))
        return _impact(candidate, last)

    def StreamSimulatePolicy(self, request: pb.StreamSimulatePolicyRequest, context):
        candidate = _candidate_policy(request.policy)
        after = _parse_simulation_token(request.page_token, candidate.version)
        for page in self.app.simulate(candidate, after, stop=_deadline_near(context)):
            yield pb.StreamSimulatePolicyResponse(
                impact=_impact(candidate, page),
                accounts_simulated=page.accounts,
                next_page_token=""
                if page.done
                else _simulation_token(candidate.version, page.last_account_id),
                done=page.done,
            )

    # -- signals from monitoring ---------------------------------------------------------

    def ReportSignals(self, request: pb.ReportSignalsRequest, context) -> pb.ReportSignalsResponse:
        violations = Violations()
        if not request.signals:
            violations.add("signals", "at least one signal is required")
        now = self.app.clock()
        signals = [
            _signal(message, f"signals[{i}]", now, violations)
            for i, message in enumerate(request.signals)
        ]
        violations.raise_if_any()
        outcomes = self.app.report_signals(signals, [s.account_id for s in request.signals])
        return pb.ReportSignalsResponse(
            outcomes=[
                pb.SignalOutcome(
                    signal_id=outcome.signal_id,
                    duplicate=outcome.duplicate,
                    event=converters.event_message(outcome.event, outcome.currency_code)
                    if outcome.event
                    else None,
                )
                for outcome in outcomes
            ]
        )

    # -- operator and customer actions ----------------------------------------------------

    def FreezeAccount(self, request, context) -> pb.FreezeAccountResponse:
        command = self._operator_action("FreezeAccount", request)
        return self.app.freeze(command, _account_only(pb.FreezeAccountResponse))

    def UnfreezeAccount(self, request, context) -> pb.UnfreezeAccountResponse:
        command = self._operator_action("UnfreezeAccount", request)
        return self.app.unfreeze(command, _account_only(pb.UnfreezeAccountResponse))

    def CloseAccount(self, request, context) -> pb.CloseAccountResponse:
        command = self._operator_action("CloseAccount", request)
        return self.app.close_account(command, _account_only(pb.CloseAccountResponse))

    def ResolveAnomaly(self, request, context) -> pb.ResolveAnomalyResponse:
        command = self._operator_action("ResolveAnomaly", request)
        return self.app.resolve_anomaly(command, _account_only(pb.ResolveAnomalyResponse))

    def _operator_action(self, method: str, request) -> app.OperatorAction:
        violations = Violations()
        key = _key(method, request, violations)
        _require_id(request.account_id, "account_id", violations)
        if not request.reason.strip():
            violations.add("reason", "required: why the operator acts")
        violations.raise_if_any()
        return app.OperatorAction(key, request.account_id, request.reason, request.etag)

    def EnrollHardship(self, request, context) -> pb.EnrollHardshipResponse:
        violations = Violations()
        key = _key("EnrollHardship", request, violations)
        _require_id(request.account_id, "account_id", violations)
        violations.raise_if_any()
        command = app.EnrollHardship(key, request.account_id, request.term_months, request.etag)
        return self.app.enroll_hardship(command, _account_only(pb.EnrollHardshipResponse))

    def SetPreferences(self, request, context) -> pb.SetPreferencesResponse:
        violations = Violations()
        key = _key("SetPreferences", request, violations)
        _require_id(request.account_id, "account_id", violations)
        cap = None
        if request.HasField("customer_cap") and request.customer_cap.minor_units:  # 0: no cap
            currency = self.app.policies.policy.currency_code
            cap = converters.amount_of(request.customer_cap, currency, "customer_cap", violations)
        violations.raise_if_any()
        command = app.SetPreferences(
            key, request.account_id, cap, request.automatic_increases, request.etag
        )
        return self.app.set_preferences(command, _account_only(pb.SetPreferencesResponse))

    # -- appeals -------------------------------------------------------------------------

    def FileAppeal(self, request: pb.FileAppealRequest, context) -> pb.FileAppealResponse:
        violations = Violations()
        key = _key("FileAppeal", request, violations)
        _require_id(request.account_id, "account_id", violations)
        _require_id(request.event_id, "event_id", violations)
        if not request.statement.strip():
            violations.add("statement", "required: what the customer disputes")
        violations.raise_if_any()
        command = app.FileAppeal(
            key, request.account_id, request.event_id, request.statement.strip()
        )
        return self.app.file_appeal(command, APPEAL_FILED)

    def ListAppeals(self, request: pb.ListAppealsRequest, context) -> pb.ListAppealsResponse:
        violations = Violations()
        page_size = _page_size(request.page_size, violations)
        before = converters.parse_page_token(request.page_token, violations)
        violations.raise_if_any()
        status = converters.APPEAL_STATUS_BY_PROTO.get(request.status)
        appeals = self.app.appeals(request.account_id or None, status, page_size + 1, before)
        page, token = _page(appeals, page_size, lambda a: (a.created_at, a.appeal_id))
        return pb.ListAppealsResponse(
            appeals=[converters.appeal_message(a) for a in page], next_page_token=token
        )

    def ResolveAppeal(self, request: pb.ResolveAppealRequest, context) -> pb.ResolveAppealResponse:
        violations = Violations()
        key = _key("ResolveAppeal", request, violations)
        _require_id(request.appeal_id, "appeal_id", violations)
        if not request.resolution.strip():
            violations.add("resolution", "required: what was decided and why")
        violations.raise_if_any()
        command = app.ResolveAppeal(
            key, request.appeal_id, request.reverse, request.resolution.strip()
        )
        return self.app.resolve_appeal(command, APPEAL_RESOLVED)

    # -- notices and the customer's view ----------------------------------------------------

    def WatchNotices(self, request: pb.WatchNoticesRequest, context):
        yield from self._watch(
            request.after_cursor,
            self.app.last_notice_number,
            self.app.notices_after,
            self.app.notice_feed,
            context,
            lambda cursor: pb.WatchNoticesResponse(heartbeat_cursor=cursor),
            lambda notice: pb.WatchNoticesResponse(notice=converters.notice_message(notice)),
        )

    def _watch(self, after_cursor: str, last, read, feed, context, heartbeat, message):
        """An outbox (notices, treatment steps) from the cursor, or from now without one: each
        row as `message(row)`, a quiet spell as `heartbeat(cursor)`."""
        violations = Violations()
        after = parse_cursor(after_cursor, "after_cursor", violations)
        violations.raise_if_any()
        with self._streams.held():
            if after is None:
                after = last()
            for item in follow(
                read,
                lambda row: row.number,
                after,
                feed,
                context.is_active,
                page_size=WATCH_PAGE,
                poll_seconds=self.poll_seconds,
                heartbeat_seconds=self.heartbeat_seconds,
            ):
                if isinstance(item, Heartbeat):
                    yield heartbeat(str(item.cursor))
                else:
                    yield message(item)

    def AcknowledgeNotice(
        self, request: pb.AcknowledgeNoticeRequest, context
    ) -> pb.AcknowledgeNoticeResponse:
        violations = Violations()
        key = _key("AcknowledgeNotice", request, violations)
        _require_id(request.notice_id, "notice_id", violations)
        channel = converters.NOTICE_CHANNELS.get(request.channel)
        if channel is None:
            violations.add("channel", "required: a NoticeChannel")
        delivered_at = self._reported_time(request, "delivery_time", violations)
        violations.raise_if_any()
        command = app.AcknowledgeNotice(key, request.notice_id, delivered_at, channel or "")
        return self.app.acknowledge_notice(command, NOTICE_ACKNOWLEDGED)

    # -- early collections -------------------------------------------------------------------

    def RunCollections(
        self, request: pb.RunCollectionsRequest, context
    ) -> pb.RunCollectionsResponse:
        violations = Violations()
        key = _key("RunCollections", request, violations)
        violations.raise_if_any()
        return self.app.run_collections(key, COLLECTIONS_RUN)

    def WatchTreatmentSteps(self, request: pb.WatchTreatmentStepsRequest, context):
        yield from self._watch(
            request.after_cursor,
            self.app.last_treatment_step_number,
            self.app.treatment_steps_after,
            self.app.treatment_feed,
            context,
            lambda cursor: pb.WatchTreatmentStepsResponse(heartbeat_cursor=cursor),
            lambda step: pb.WatchTreatmentStepsResponse(
                step=converters.treatment_step_message(step)
            ),
        )

    def AcknowledgeTreatmentStep(
        self, request: pb.AcknowledgeTreatmentStepRequest, context
    ) -> pb.AcknowledgeTreatmentStepResponse:
        violations = Violations()
        key = _key("AcknowledgeTreatmentStep", request, violations)
        _require_id(request.step_id, "step_id", violations)
        carried_out_at = self._reported_time(request, "carry_out_time", violations)
        violations.raise_if_any()
        command = app.AcknowledgeTreatmentStep(key, request.step_id, carried_out_at)
        return self.app.acknowledge_treatment_step(command, STEP_ACKNOWLEDGED)

    def _reported_time(self, request, field: str, violations: Violations) -> datetime:
        """A time a caller reports something happened: now when unset; never in the future
        (beyond the sender's clock drift)."""
        now = self.app.clock()
        if not request.HasField(field):
            return now
        try:
            reported = converters.from_timestamp(getattr(request, field))
        except (ValueError, OverflowError):
            violations.add(field, "not a valid time")
            return now
        if reported > now + DELIVERY_CLOCK_SKEW:
            violations.add(field, "in the future")
        return reported

    def GetCustomerView(
        self, request: pb.GetCustomerViewRequest, context
    ) -> pb.GetCustomerViewResponse:
        violations = Violations()
        _require_id(request.customer_id, "customer_id", violations)
        violations.raise_if_any()
        views = self.app.customer_view(request.customer_id)
        policy, now = self.app.policies.policy, self.app.clock()
        return pb.GetCustomerViewResponse(
            customer_id=request.customer_id,
            accounts=[
                pb.CustomerAccountView(
                    account=converters.account_message(view.account, policy, now),
                    decisions=[
                        converters.customer_decision_message(e, view.account.currency_code)
                        for e in view.decisions
                    ],
                    notices=[converters.notice_message(n) for n in view.notices],
                    open_appeals=[converters.appeal_message(a) for a in view.open_appeals],
                    treatment_steps=[converters.treatment_step_message(s) for s in view.treatment],
                )
                for view in views
            ],
        )


def _key(method: str, request, violations: Violations) -> Idempotency:
    _require_id(request.request_id, "request_id", violations)
    scope_field = IDEMPOTENCY_SCOPES.get(method, "account_id")
    scope = getattr(request, scope_field) if scope_field else ""
    return Idempotency(method, request.request_id, _fingerprint(request), scope)


def _candidate_policy(document: str):
    try:
        return parse_policy(document, "policy")
    except PolicyError as error:
        raise InvalidArgument([FieldViolation("policy", str(error))]) from None


def _impact(candidate, page: SimulatedPage) -> pb.SimulatePolicyResponse:
    currency = candidate.currency_code
    return pb.SimulatePolicyResponse(
        policy_version=candidate.version,
        tiers=[
            pb.TierImpact(
                tier=name,
                accounts=impact.accounts,
                rise=impact.counts.get("rise", 0),
                fall=impact.counts.get("fall", 0),
                unchanged=impact.counts.get("unchanged", 0),
                undecided=impact.counts.get("undecided", 0),
                exposure_change=converters.money(impact.exposure_change, currency),
            )
            for name, impact in sorted(page.tiers.items())
        ],
        exposure_change=converters.money(
            sum(impact.exposure_change for impact in page.tiers.values()), currency
        ),
    )


def _deadline_near(context) -> Callable[[], bool]:
    """Asked before each page: has the call ended, or would its deadline pass during a page
    as long as the last one took (twice that, to leave the answer time to get back)?"""
    last_asked = time.monotonic()

    def near() -> bool:
        nonlocal last_asked
        now = time.monotonic()
        page_seconds, last_asked = now - last_asked, now
        remaining = context.time_remaining()
        if not context.is_active():
            return True
        return remaining is not None and remaining < max(2 * page_seconds, 0.05)

    return near


def _simulation_token(policy_version: str, after_account_id: str) -> str:
    document = json.dumps({"policy_version": policy_version, "after": after_account_id})
    return base64.urlsafe_b64encode(document.encode()).decode()


def _parse_simulation_token(token: str, policy_version: str) -> str:
    """The account a simulation resumes after ("" without a token)."""
    if not token:
        return ""
    try:
        document = json.loads(base64.urlsafe_b64decode(token.encode()))
        version, after = document["policy_version"], document["after"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgument(
            [FieldViolation("page_token", "not a token from a previous response")]
        ) from None
    if version != policy_version or not isinstance(after, str):
        raise InvalidArgument(
            [FieldViolation("page_token", "from a simulation of another policy version")]
        )
    return after


def _fingerprint(request) -> str:
    """What a request asks for, without its request_id."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _signal(message: pb.Signal, path: str, now: datetime, violations: Violations) -> Signal:
    _require_id(message.signal_id, f"{path}.signal_id", violations)
    _require_id(message.account_id, f"{path}.account_id", violations)
    kind = SIGNAL_TYPES.get(message.type)
    if kind is None:
        violations.add(f"{path}.type", "required: a SignalType")
    if message.severity not in SEVERITIES:
        violations.add(f"{path}.severity", "required")
    if kind == "days_past_due" and message.days_past_due < 1:
        violations.add(f"{path}.days_past_due", "at least 1 for a days_past_due signal")
    if message.days_past_due < 0:
        violations.add(f"{path}.days_past_due", "must not be negative")
    report = None
    if message.HasField("risk"):
        report = converters.risk_report(message.risk, f"{path}.risk", violations)
    detected = (
        converters.from_timestamp(message.detect_time) if message.HasField("detect_time") else now
    )
    return Signal(
        signal_id=message.signal_id,
        type=kind or "",
        severity=SEVERITIES.get(message.severity, Severity.info),
        detected_at=detected,
        days_past_due=message.days_past_due,
        loan_id=message.loan_id,
        evidence=dict(message.evidence),
        report=report,
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
