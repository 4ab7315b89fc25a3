"""Conversions between the limits protos and the transport-free records."""

import base64
import math
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from creditline.limits.v1 import limits_service_pb2 as pb
from creditline.type.v1 import decision_pb2, money_pb2, risk_pb2
from services.common.errors import Violations
from services.limits import decisions
from services.limits.collections import StepKind, StopReason, TreatmentStep
from services.limits.decisions import RiskReport
from services.limits.ledger import AccountStatus
from services.limits.policy import ContactChannel, Policy, TreatmentAction
from services.limits.reasons import customer_improvements
from services.limits.records import (
    Account,
    Appeal,
    AppealStatus,
    CustomerNotice,
    LimitEvent,
    NoticeType,
    Reason,
)

ACCOUNT_STATUS = {
    status: pb.AccountStatus.Value(f"ACCOUNT_STATUS_{status.upper()}") for status in AccountStatus
}
EVENT_TYPE_PREFIX = "LIMIT_EVENT_TYPE_"
APPEAL_STATUS = {
    status: pb.AppealStatus.Value(f"APPEAL_STATUS_{status.upper()}") for status in AppealStatus
}
APPEAL_STATUS_BY_PROTO = {value: status for status, value in APPEAL_STATUS.items()}
NOTICE_TYPE = {kind: pb.NoticeType.Value(f"NOTICE_TYPE_{kind.upper()}") for kind in NoticeType}
# Delivery channels by their stored names: NOTICE_CHANNEL_SMS is "sms".
NOTICE_CHANNELS: dict[pb.NoticeChannel.ValueType, str] = {
    value: name.removeprefix("NOTICE_CHANNEL_").lower()
    for name, value in pb.NoticeChannel.items()
    if value != pb.NOTICE_CHANNEL_UNSPECIFIED
}
NOTICE_CHANNEL_BY_NAME = {name: value for value, name in NOTICE_CHANNELS.items()}
STEP_KIND = {
    kind: pb.TreatmentStepKind.Value(f"TREATMENT_STEP_KIND_{kind.upper()}") for kind in StepKind
}
TREATMENT_ACTION = {
    action.value: pb.TreatmentAction.Value(f"TREATMENT_ACTION_{action.upper()}")
    for action in TreatmentAction
}
CONTACT_CHANNEL = {
    channel.value: pb.ContactChannel.Value(f"CONTACT_CHANNEL_{channel.upper()}")
    for channel in ContactChannel
}
STOP_REASON = {
    reason: pb.TreatmentStopReason.Value(f"TREATMENT_STOP_REASON_{reason.upper()}")
    for reason in StopReason
}
# Where a hardship offer leads: the customer enrols through this RPC.
ENROLL_HARDSHIP_METHOD = (
    f"{pb.DESCRIPTOR.services_by_name['LimitsService'].full_name}/EnrollHardship"
)


def timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    proto = timestamp_pb2.Timestamp()
    proto.FromDatetime(moment)
    return proto


def from_timestamp(proto: timestamp_pb2.Timestamp) -> datetime:
    return proto.ToDatetime(tzinfo=UTC)


def money(minor_units: int, currency_code: str) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency_code, minor_units=minor_units)


def amount_of(
    proto: money_pb2.Money,
    currency_code: str,
    field: str,
    violations: Violations,
    *,
    required: bool = True,
) -> int | None:
    """Minor units of a Money field in the account's currency, or a violation."""
    if not proto.currency_code and not proto.minor_units:
        if required:
            violations.add(field, "required")
        return None
    if proto.currency_code != currency_code:
        violations.add(f"{field}.currency_code", f"must be {currency_code}")
    if proto.minor_units <= 0:
        violations.add(f"{field}.minor_units", "must be positive")
    return proto.minor_units


def band_message(band: str | None) -> risk_pb2.RiskBand.ValueType:
    return risk_pb2.RiskBand.Value(f"RISK_BAND_{band}") if band else risk_pb2.RISK_BAND_UNSPECIFIED


def band_of(value: risk_pb2.RiskBand.ValueType) -> str | None:
    if value == risk_pb2.RISK_BAND_UNSPECIFIED:
        return None
    return risk_pb2.RiskBand.Name(value).removeprefix("RISK_BAND_")


def risk_report(message: pb.RiskReport, path: str, violations: Violations) -> RiskReport | None:
    """Monitoring's report of the account's behaviour, checked field by field."""
    if not message.HasField("profile_time"):
        violations.add(f"{path}.profile_time", "required: the event time the profile describes")
    if message.days_past_due < 0:
        violations.add(f"{path}.days_past_due", "must not be negative")
    if message.risk_band not in risk_pb2.RiskBand.values():
        violations.add(f"{path}.risk_band", "not a risk band")
    for name, value in message.profile.items():
        if not math.isfinite(value):
            violations.add(f"{path}.profile[{name}]", "must be a finite number")
    if violations:
        return None
    return RiskReport(
        profile=dict(message.profile),
        profile_at=from_timestamp(message.profile_time),
        days_past_due=message.days_past_due,
        risk_band=band_of(message.risk_band),
        scored_at=from_timestamp(message.score_time) if message.HasField("score_time") else None,
    )


def account_message(account: Account, policy: Policy, now: datetime) -> pb.Account:
    currency, line = account.currency_code, account.line
    hardship = account.hardship
    risk = account.risk
    return pb.Account(
        account_id=account.account_id,
        customer_id=account.customer_id,
        status=ACCOUNT_STATUS[account.status],
        credit_line=money(line.credit_line, currency),
        customer_cap=money(line.customer_cap or 0, currency),
        drawn=money(line.drawn, currency),
        available_credit=money(line.available_credit, currency),
        tier=account.tier or "",
        risk_band=band_message(account.risk_band),
        reopening_stage=account.reopening_stage,
        next_review_time=timestamp(account.next_review_at),
        automatic_increases=account.automatic_increases,
        hardship=pb.HardshipArrangement(
            start_time=timestamp(hardship.started_at),
            end_time=timestamp(hardship.ends_at),
            term_months=hardship.term_months,
            monthly_instalment=money(hardship.monthly_instalment, currency),
        )
        if hardship
        else None,
        open_time=timestamp(account.opened_at),
        etag=account.etag,
        annual_rate_basis_points=decisions.rate_of(policy, account),
        time_zone=account.time_zone or "",
        risk=pb.AccountRiskState(
            days_past_due=risk.days_past_due,
            loans_past_due=risk.loans_past_due,
            profile_time=timestamp(risk.profile_at),
            fresh=decisions.is_fresh(policy, risk, now),
            behaviour_risk_band=band_message(risk.behaviour_band),
            behaviour_score_time=timestamp(risk.behaviour_scored_at),
            conditions=[
                pb.AccountCondition(
                    type=pb.ConditionType.Value(f"CONDITION_TYPE_{condition.type.upper()}"),
                    since_time=timestamp(condition.since),
                    exit=condition.exit,
                    earliest_exit_time=timestamp(condition.earliest_exit_at),
                )
                for condition in decisions.conditions(policy, account, now)
            ],
        ),
    )


def reason_message(reason: Reason) -> decision_pb2.DecisionReason:
    return decision_pb2.DecisionReason(
        code=reason.code,
        texts=reason.texts,
        source=decision_pb2.ReasonSource.Value(f"REASON_SOURCE_{reason.source.upper()}"),
    )


def event_message(event: LimitEvent, currency_code: str) -> pb.LimitEvent:
    return pb.LimitEvent(
        event_id=event.event_id,
        account_id=event.account_id,
        type=pb.LimitEventType.Value(EVENT_TYPE_PREFIX + event.type.upper()),
        line_before=money(event.line_before, currency_code),
        line_after=money(event.line_after, currency_code),
        status_before=ACCOUNT_STATUS[event.status_before],
        status_after=ACCOUNT_STATUS[event.status_after],
        adverse=event.adverse,
        reasons=[reason_message(r) for r in event.reasons],
        notice=pb.AdverseActionNotice(
            texts=event.notice.texts, notice_time=timestamp(event.notice.sent_at)
        )
        if event.notice
        else None,
        policy_version=event.policy_version,
        model_name=event.model_name,
        model_version=event.model_version,
        actor=pb.Actor(
            kind=pb.ActorKind.Value(f"ACTOR_KIND_{event.actor_kind.upper()}"), id=event.actor_id
        ),
        create_time=timestamp(event.created_at),
        request_id=event.request_id,
        annual_rate_basis_points=event.annual_rate_bp or 0,
    )


def notice_message(notice: CustomerNotice) -> pb.Notice:
    return pb.Notice(
        notice_id=notice.notice_id,
        account_id=notice.account_id,
        type=NOTICE_TYPE[notice.type],
        adverse=notice.adverse,
        reasons=[reason_message(r) for r in notice.reasons],
        improvements=[reason_message(r) for r in notice.improvements],
        how_to_appeal=notice.how_to_appeal,
        texts=notice.texts,
        event_id=notice.event_id or "",
        appeal_id=notice.appeal_id or "",
        create_time=timestamp(notice.created_at),
        due_time=timestamp(notice.due_at),
        delivery_time=timestamp(notice.delivered_at),
        delivery_channel=NOTICE_CHANNEL_BY_NAME.get(
            notice.delivery_channel, pb.NOTICE_CHANNEL_UNSPECIFIED
        ),
        cursor=str(notice.number),
        templates_version=notice.templates_version,
        policy_version=notice.policy_version,
    )


def treatment_step_message(step: TreatmentStep) -> pb.TreatmentStep:
    return pb.TreatmentStep(
        step_id=step.step_id,
        account_id=step.account_id,
        kind=STEP_KIND[step.kind],
        action=TREATMENT_ACTION.get(step.action, pb.TREATMENT_ACTION_UNSPECIFIED),
        channel=CONTACT_CHANNEL.get(step.channel, pb.CONTACT_CHANNEL_UNSPECIFIED),
        stop_reason=(
            STOP_REASON[step.stop_reason]
            if step.stop_reason is not None
            else pb.TREATMENT_STOP_REASON_UNSPECIFIED
        ),
        days_past_due=step.days_past_due,
        reason=reason_message(step.reason),
        past_due_since=timestamp(step.episode_started_at),
        create_time=timestamp(step.created_at),
        offers_hardship=step.offers_hardship,
        enroll_method=ENROLL_HARDSHIP_METHOD if step.offers_hardship else "",
        time_zone=step.time_zone,
        carry_out_time=timestamp(step.carried_out_at),
        cursor=str(step.number),
        policy_version=step.policy_version,
    )


def customer_decision_message(event: LimitEvent, currency_code: str) -> pb.CustomerDecision:
    """A decision as its customer sees it: without who decided, the request or the internal
    details (an operator's note, a signal id)."""
    return pb.CustomerDecision(
        event_id=event.event_id,
        type=pb.LimitEventType.Value(EVENT_TYPE_PREFIX + event.type.upper()),
        line_before=money(event.line_before, currency_code),
        line_after=money(event.line_after, currency_code),
        status_after=ACCOUNT_STATUS[event.status_after],
        adverse=event.adverse,
        reasons=[reason_message(r) for r in event.reasons],
        improvements=[
            reason_message(r)
            for r in (customer_improvements(event.reasons) if event.adverse else ())
        ],
        create_time=timestamp(event.created_at),
    )


def appeal_message(appeal: Appeal) -> pb.Appeal:
    return pb.Appeal(
        appeal_id=appeal.appeal_id,
        account_id=appeal.account_id,
        event_id=appeal.event_id,
        statement=appeal.statement,
        status=APPEAL_STATUS[appeal.status],
        resolution=appeal.resolution,
        create_time=timestamp(appeal.created_at),
        resolve_time=timestamp(appeal.resolved_at),
    )


def page_token(created_at: datetime, item_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{item_id}".encode()).decode()


def parse_page_token(token: str, violations: Violations) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        created, item_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), item_id
    except (ValueError, UnicodeDecodeError):
        violations.add("page_token", "not a token from a previous response")
        return None
