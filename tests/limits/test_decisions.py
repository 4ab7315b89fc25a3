"""Every rule of the default policy, through the transport-free policy engine."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import FailedPrecondition, InvalidArgument
from services.limits import decisions, ledger
from services.limits.decisions import (
    Affordability,
    Context,
    IncreaseHistory,
    Score,
    Signal,
    add_months,
)
from services.limits.ledger import AccountStatus, Line
from services.limits.policy import Severity, load_policy
from services.limits.records import ActorKind, EventType, Reason, ReasonSource, RiskState

POLICY = load_policy()
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
RICH = Affordability(monthly_income=3_000_000, monthly_debt_payments=0)  # 30,000 yuan a month
NO_HISTORY = IncreaseHistory(last_declined_at=None, line_changes_in_period=())
MODEL_REASON = Reason(
    "APP_CHECKING_ACCOUNT",
    {"en": "Checking account balance or status", "zh-CN": "支票账户的余额或状态"},
    ReasonSource.model,
)


def ctx(now=NOW, actor=ActorKind.customer) -> Context:
    return Context(POLICY, now, "req-1", actor)


def score(band: str) -> Score:
    return Score(band, 0.05, 600, (MODEL_REASON,), "application", "1.0.0")


def opened(band="B", months_ago=12, **changes):
    decision = decisions.open_account(
        ctx(add_months(NOW, -months_ago)), "acct-1", "cust-1", score(band), RICH
    )
    return replace(decision.account, **changes)


def codes(event) -> list[str]:
    return [r.code for r in event.reasons]


# -- opening -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("band", "tier", "line"),
    [("A", "prime", 500_000), ("B", "standard", 200_000), ("C", "emerging", 80_000)],
)
def test_first_line_follows_the_tier(band, tier, line):
    decision = decisions.open_account(ctx(), "a", "c", score(band), RICH)
    assert decision.approved
    assert (decision.account.tier, decision.account.line.credit_line) == (tier, line)
    assert decision.account.status is AccountStatus.active
    assert decision.account.next_review_at == NOW + timedelta(days=365)
    assert decision.event.type is EventType.opened and not decision.event.adverse
    assert decision.event.policy_version == POLICY.version
    assert decision.event.model_version == "1.0.0"


def test_an_application_band_d_is_declined_though_behaviour_band_d_keeps_a_line():
    """Bands mean what their own model's holdout says: application D went bad at 53.4%."""
    assert not decisions.open_account(ctx(), "a", "c", score("D"), RICH).approved
    account = opened("B", months_ago=12)
    reviewed = decisions.review(ctx(), account, score("D"))  # behaviour D: the thin_file tier
    assert reviewed.account.tier == "thin_file"
    # 2,000 yuan fits under thin_file's 3,000 maximum, but a worse tier raises nothing.
    assert reviewed.event.type is EventType.reviewed_unchanged
    assert reviewed.account.line.credit_line == 200_000


def test_band_e_is_declined_with_policy_and_model_reasons_and_a_notice():
    """The score decided: its factors are principal reasons."""
    decision = decisions.open_account(ctx(), "a", "c", score("E"), RICH)
    assert not decision.approved
    assert decision.account.status is AccountStatus.declined
    event = decision.event
    assert event.type is EventType.declined and event.adverse
    assert codes(event) == ["POLICY_DECLINED_RISK_BAND", "APP_CHECKING_ACCOUNT"]
    assert "appeal" in event.notice.texts["en"] and "申诉" in event.notice.texts["zh-CN"]


def test_an_application_that_cannot_afford_the_first_line_is_declined():
    poor = Affordability(monthly_income=10_000, monthly_debt_payments=4_000)
    decision = decisions.open_account(ctx(), "a", "c", score("A"), poor)
    # The model did not decide it: ability to pay is the only principal reason.
    assert codes(decision.event) == ["POLICY_ABILITY_TO_PAY"]
    assert decision.next_eligible_at == NOW + timedelta(days=30)


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        ((2027, 9, 18), 3, (2027, 12, 18)),  # the same day of the month
        ((2027, 1, 5), 1, (2027, 2, 5)),
        ((2027, 1, 31), 1, (2027, 2, 28)),  # the 31st of a shorter month is its last day
        ((2028, 1, 30), 1, (2028, 2, 29)),
        ((2027, 11, 30), 3, (2028, 2, 29)),
        ((2027, 3, 31), -1, (2027, 2, 28)),
    ],
)
def test_add_months_keeps_the_day_of_the_month(start, months, expected):
    assert add_months(datetime(*start, 9, tzinfo=UTC), months) == datetime(*expected, 9, tzinfo=UTC)


# -- requested increase --------------------------------------------------------------------


def test_an_increase_is_one_tier_step():
    account = opened("B")
    decision = decisions.request_increase(ctx(), account, None, score("B"), RICH, NO_HISTORY)
    assert decision.approved
    assert decision.account.line.credit_line == 300_000
    assert decision.event.type is EventType.increased and not decision.event.adverse


def test_a_smaller_requested_line_is_honoured_and_a_lower_one_refused():
    account = opened("B")
    decision = decisions.request_increase(ctx(), account, 250_000, score("B"), RICH, NO_HISTORY)
    assert decision.account.line.credit_line == 250_000
    with pytest.raises(InvalidArgument):
        decisions.request_increase(ctx(), account, 100_000, score("B"), RICH, NO_HISTORY)


def test_at_the_tier_maximum_the_request_is_declined_with_what_would_change_it():
    account = opened("B", line=Line(credit_line=2_000_000))
    decision = decisions.request_increase(ctx(), account, None, score("B"), RICH, NO_HISTORY)
    assert not decision.approved
    assert codes(decision.event) == ["POLICY_TIER_MAXIMUM"]
    assert decision.improvements[0].texts["en"].startswith("A better risk assessment")
    assert decision.next_eligible_at == NOW + timedelta(days=30)


def test_too_new_an_account_is_declined_until_its_months_on_book():
    account = opened("B", months_ago=2)
    decision = decisions.request_increase(ctx(), account, None, score("B"), RICH, NO_HISTORY)
    assert codes(decision.event) == ["POLICY_MONTHS_ON_BOOK"]
    assert decision.next_eligible_at == add_months(account.opened_at, 6)


def test_a_worse_score_declines_with_the_models_reasons():
    account = opened("B")
    decision = decisions.request_increase(ctx(), account, None, score("C"), RICH, NO_HISTORY)
    assert codes(decision.event) == ["POLICY_RISK_NOT_IMPROVED", "APP_CHECKING_ACCOUNT"]
    assert decision.event.adverse


def test_ability_to_pay_assumes_the_new_line_fully_drawn_at_the_tiers_rate():
    account = opened("B")
    # 0.5 * 5,000 - 800 = 1,700 yuan a month: far more than a 3,000-yuan line needs.
    fine = Affordability(monthly_income=500_000, monthly_debt_payments=80_000)
    assert decisions.request_increase(ctx(), account, None, score("B"), fine, NO_HISTORY).approved
    # Debts leave room for 200 yuan a month. Repaid in 12 equal instalments at the standard
    # tier's 10.8% a year (0.9% a month), that carries 200 * (1 - 1.009^-12) / 0.009 =
    # 2,265.30 yuan (2,400 without interest): the step is cut down to what fits.
    tight = Affordability(monthly_income=100_000, monthly_debt_payments=30_000)
    decision = decisions.request_increase(ctx(), account, None, score("B"), tight, NO_HISTORY)
    assert decision.account.line.credit_line == 226_530
    assert decision.account.annual_rate_bp == decision.event.annual_rate_bp == 1_080
    assert decisions.monthly_instalment(226_530, 1_080, 12) == 20_000
    # No room above the current line at all: declined.
    broke = Affordability(monthly_income=100_000, monthly_debt_payments=40_000)
    decision = decisions.request_increase(ctx(), account, None, score("B"), broke, NO_HISTORY)
    assert codes(decision.event) == ["POLICY_ABILITY_TO_PAY"]


def test_cool_off_after_a_decline_and_the_cap_on_changes():
    account = opened("B")
    recent = IncreaseHistory(last_declined_at=NOW - timedelta(days=3), line_changes_in_period=())
    with pytest.raises(FailedPrecondition) as raised:
        decisions.request_increase(ctx(), account, None, score("B"), RICH, recent)
    assert raised.value.reason == "COOL_OFF"
    assert raised.value.metadata["next_eligible_time"] == (NOW + timedelta(days=27)).isoformat()
    busy = IncreaseHistory(None, (NOW - timedelta(days=100), NOW - timedelta(days=10)))
    with pytest.raises(FailedPrecondition) as raised:
        decisions.request_increase(ctx(), account, None, score("B"), RICH, busy)
    assert raised.value.reason == "CHANGE_LIMIT"


def test_watchlist_declines_and_frozen_refuses():
    watched = opened("B", line=Line(credit_line=200_000, status=AccountStatus.watchlist))
    decision = decisions.request_increase(ctx(), watched, None, score("B"), RICH, NO_HISTORY)
    assert codes(decision.event)[0] == "POLICY_WATCHLIST"
    frozen = opened("B", line=Line(credit_line=200_000, status=AccountStatus.frozen))
    with pytest.raises(FailedPrecondition) as raised:
        decisions.request_increase(ctx(), frozen, None, score("B"), RICH, NO_HISTORY)
    assert raised.value.reason == "LINE_FROZEN"


# -- review --------------------------------------------------------------------------------


def test_review_raises_by_a_step_keeps_or_lowers_within_the_largest_change():
    raised = decisions.review(ctx(), opened("B"), score("B"))
    assert raised.event.type is EventType.increased
    assert raised.account.line.credit_line == 300_000
    assert raised.account.next_review_at == NOW + timedelta(days=365)

    big = opened("B", line=Line(credit_line=2_000_000, drawn=100_000))
    lowered = decisions.review(ctx(), big, score("C"))  # emerging: at most 8,000 yuan
    assert lowered.event.type is EventType.reduced and lowered.event.adverse
    assert lowered.account.line.credit_line == 1_000_000  # at most half in one review

    declined_band = decisions.review(ctx(), opened("B"), score("E"))
    assert declined_band.account.line.credit_line == 100_000

    opted_out = decisions.review(ctx(), opened("B", automatic_increases=False), score("B"))
    assert opted_out.event.type is EventType.reviewed_unchanged
    assert opted_out.account.line.credit_line == 200_000


def test_a_review_raises_only_what_the_declared_income_carries():
    # 0.5 * 2,000 - 700 = 300 yuan a month carries about 3,398 yuan at 10.8% over 12 months:
    # the review's 1,000-yuan step from 2,000 fits whole.
    modest = opened("B", declared_monthly_income=200_000, declared_monthly_debt_payments=70_000)
    assert decisions.review(ctx(), modest, score("B")).account.line.credit_line == 300_000
    # 150 yuan a month carries about 1,699 yuan: nothing above the 2,000-yuan line.
    stretched = replace(modest, declared_monthly_debt_payments=85_000)
    kept = decisions.review(ctx(), stretched, score("B"))
    assert kept.event.type is EventType.reviewed_unchanged
    assert codes(kept.event) == ["POLICY_SCHEDULED_REVIEW", "POLICY_ABILITY_TO_PAY"]
    never_declared = replace(modest, declared_monthly_income=None)
    assert decisions.review(ctx(), never_declared, score("B")).account.line.credit_line == 200_000


# -- signals -------------------------------------------------------------------------------


def signal(kind: str, severity: Severity = Severity.info, **fields) -> Signal:
    return Signal(f"sig-{kind}", kind, severity, NOW, **fields)


def dpd(days: int, severity: Severity = Severity.low, loan_id="loan-1") -> Signal:
    return signal("days_past_due", severity, days_past_due=days, loan_id=loan_id)


def test_days_past_due_escalates_watchlist_reduce_freeze_close():
    account = opened("B", line=Line(credit_line=200_000, drawn=150_000))
    one = decisions.apply_signal(ctx(), account, dpd(1))
    assert one.event.type is EventType.watchlisted and one.account.risk.days_past_due == 1
    assert one.account.risk.loans_past_due == {"loan-1": 1}
    thirty = decisions.apply_signal(ctx(), one.account, dpd(30, Severity.medium))
    assert thirty.event.type is EventType.reduced
    # Half, below what is drawn: the account is over its line with nothing available.
    assert thirty.account.line.credit_line == 100_000
    assert thirty.account.over_line and thirty.account.line.available_credit == 0
    assert codes(thirty.event) == ["POLICY_DAYS_PAST_DUE"]
    assert thirty.event.details == {"signal_id": "sig-days_past_due"}
    assert thirty.event.notice is not None
    sixty = decisions.apply_signal(ctx(), thirty.account, dpd(60, Severity.high))
    assert sixty.event.type is EventType.frozen and sixty.account.suspended_at == NOW
    with pytest.raises(FailedPrecondition):
        ledger.draw(sixty.account.line, 1)
    ninety = decisions.apply_signal(ctx(), sixty.account, dpd(90, Severity.critical))
    assert ninety.event.type is EventType.closed
    assert ninety.account.line_before_closure == 100_000


def test_a_fully_drawn_line_is_still_cut_with_an_event_and_a_notice():
    account = opened("B", line=Line(credit_line=200_000, drawn=200_000))
    cut = decisions.apply_signal(ctx(), account, signal("income_decline", Severity.medium))
    assert cut.event.type is EventType.reduced and cut.event.notice is not None
    assert cut.account.line.credit_line == 140_000 and cut.account.over_line


def test_past_due_stops_draws_from_the_policys_days():
    account = decisions.apply_signal(ctx(), opened("B"), dpd(1)).account
    account = decisions.current(account, POLICY, NOW)
    assert account.line.draws_stopped and account.line.available_credit == 0
    with pytest.raises(FailedPrecondition) as raised:
        decisions.draw(ctx(), account, 100, "consumption")
    assert raised.value.reason == "PAST_DUE"


def test_an_on_time_repayment_of_one_loan_does_not_cure_another():
    account = decisions.apply_signal(ctx(), opened("B"), dpd(45, loan_id="loan-a")).account
    report = decisions.RiskReport({"days_past_due": 45.0}, NOW, days_past_due=45)
    paid_b = decisions.apply_signal(
        ctx(), account, signal("on_time_repayment", loan_id="loan-b", report=report)
    ).account
    assert paid_b.risk.days_past_due == 45 and paid_b.risk.loans_past_due == {"loan-a": 45}
    cured = decisions.apply_signal(
        ctx(), paid_b,
        signal("delinquency_cured", report=decisions.RiskReport({}, NOW, days_past_due=0)),
    ).account  # fmt: skip
    assert not cured.risk.past_due and cured.risk.loans_past_due == {}


def test_an_older_report_never_replaces_a_newer_one():
    newer = decisions.RiskReport({"utilisation": 0.5}, NOW, days_past_due=3)
    older = decisions.RiskReport({"utilisation": 0.1}, NOW - timedelta(days=1), days_past_due=0)
    account = decisions.apply_report(ctx(), opened("B"), newer)
    assert decisions.apply_report(ctx(), account, older) == account


def test_the_watchlist_is_left_after_a_cure_and_the_clean_period():
    watched = decisions.apply_signal(ctx(), opened("B"), dpd(1)).account
    assert watched.status is AccountStatus.watchlist
    later = NOW + timedelta(days=200)
    assert decisions.settle(ctx(later), watched) == []  # still past due: no time takes it off
    cure_at = NOW + timedelta(days=10)
    cured = decisions.apply_report(
        ctx(cure_at), watched, decisions.RiskReport({}, cure_at, days_past_due=0)
    )
    clean_until = cure_at + timedelta(days=POLICY.watchlist.clean_period_days)
    assert decisions.watchlist_lifts_at(POLICY, cured) == clean_until
    assert decisions.settle(ctx(clean_until - timedelta(seconds=1)), cured) == []
    (lifted,) = decisions.settle(ctx(clean_until), cured)
    assert lifted.event.type is EventType.watchlist_lifted
    assert codes(lifted.event) == ["POLICY_CLEAN_PERIOD"]
    assert lifted.account.status is AccountStatus.active


def test_a_signal_below_its_rules_severity_changes_no_line():
    account = opened("B")
    decision = decisions.apply_signal(ctx(), account, signal("multiple_lending", Severity.low))
    assert decision.event is None and decision.account.status is AccountStatus.active


def test_abnormal_transactions_freeze_and_open_an_anomaly_an_operator_resolves():
    decision = decisions.apply_signal(
        ctx(), opened("B"), signal("abnormal_transaction", Severity.high)
    )
    assert decision.event.type is EventType.frozen and decision.account.risk.anomaly_since == NOW
    resolved = decisions.resolve_anomaly(ctx(actor=ActorKind.operator), decision.account, "ok")
    assert resolved.event.type is EventType.anomaly_resolved
    assert resolved.account.risk.anomaly_since is None
    with pytest.raises(FailedPrecondition):
        decisions.resolve_anomaly(ctx(actor=ActorKind.operator), resolved.account, "again")


def fresh(account, band="B", at=NOW):
    """The account with a fresh risk state monitoring scored `band`."""
    risk = RiskState(
        profile={"utilisation": 0.2}, profile_at=at, behaviour_band=band, behaviour_scored_at=at
    )
    return replace(account, risk=risk)


def test_six_on_time_repayments_and_six_months_earn_a_step_unless_opted_out():
    account = fresh(opened("B", months_ago=7))
    for _ in range(5):
        account = decisions.apply_signal(ctx(), account, signal("on_time_repayment")).account
    assert account.line.credit_line == 200_000 and account.on_time_streak == 5
    sixth = decisions.apply_signal(ctx(), account, signal("on_time_repayment"))
    assert sixth.event.type is EventType.increased
    assert sixth.account.line.credit_line == 300_000 and sixth.account.on_time_streak == 0
    # A reward is an increase like any other: none the declared income cannot carry.
    strained = replace(account, declared_monthly_debt_payments=1_490_000)  # 100 yuan room
    assert decisions.apply_signal(ctx(), strained, signal("on_time_repayment")).event is None
    opted_out = replace(account, automatic_increases=False)
    assert decisions.apply_signal(ctx(), opted_out, signal("on_time_repayment")).event is None
    # A reward stands on a fresh behaviour score: none without one, or with a stale one.
    stale = fresh(account, at=NOW - timedelta(days=POLICY.risk_state.max_age_days + 1))
    for unscored in (replace(account, risk=RiskState()), stale):
        assert decisions.apply_signal(ctx(), unscored, signal("on_time_repayment")).event is None


def test_a_stale_risk_state_declines_an_increase_with_a_reason_the_customer_reads():
    decision = decisions.request_increase(ctx(), opened("B"), None, None, RICH, NO_HISTORY)
    assert not decision.approved
    assert codes(decision.event) == ["POLICY_NO_RECENT_HISTORY"]
    assert decision.event.reasons[0].texts["en"] == "Not enough recent repayment history"
    assert decisions.is_fresh(POLICY, fresh(opened("B")).risk, NOW)
    assert not decisions.is_fresh(POLICY, RiskState(profile={"u": 1.0}), NOW)  # no time


def test_a_review_without_a_fresh_score_keeps_or_lowers():
    kept = decisions.review(ctx(), opened("B"), None)
    assert kept.event.type is EventType.reviewed_unchanged
    assert "POLICY_NO_RECENT_HISTORY" in codes(kept.event)
    big = opened("B", line=Line(credit_line=3_000_000), risk_band="B")
    assert decisions.review(ctx(), big, None).event.type is EventType.reduced


# -- staged reopening ----------------------------------------------------------------------


def closed_account(days_ago: int, **changes):
    account = opened("B", line=Line(credit_line=300_000))
    closed = decisions.close(ctx(NOW - timedelta(days=days_ago), ActorKind.operator), account, "")
    return replace(closed.account, **changes)


def test_reopening_is_refused_until_every_rule_holds():
    account = closed_account(10, risk=RiskState(days_past_due=5, anomaly_since=NOW))
    decision = decisions.request_reopen(ctx(), account, score("D"))
    assert not decision.approved
    assert codes(decision.event) == [
        "POLICY_REOPEN_TOO_SOON",
        "POLICY_DAYS_PAST_DUE",
        "POLICY_NO_RECENT_ON_TIME_REPAYMENT",
        "POLICY_OPEN_ANOMALY",
    ]
    assert decision.next_eligible_at == NOW + timedelta(days=80)
    stale = closed_account(100, last_on_time_repayment_at=NOW - timedelta(days=5))
    assert codes(decisions.request_reopen(ctx(), stale, None).event) == ["POLICY_NO_RECENT_HISTORY"]


def test_staged_reopening_moves_forward_with_on_time_repayments():
    account = closed_account(100, last_on_time_repayment_at=NOW - timedelta(days=5))
    stage1 = decisions.request_reopen(ctx(), account, score("B"))
    assert stage1.approved and stage1.event.type is EventType.reopened
    assert (stage1.account.reopening_stage, stage1.account.line.credit_line) == (1, 20_000)
    assert stage1.account.status is AccountStatus.active
    # The stage's own line holds even below what is still drawn.
    drawn = replace(account, line=replace(account.line, drawn=64_000))
    over = decisions.request_reopen(ctx(), drawn, score("B")).account
    assert over.line.credit_line == 20_000 and over.over_line
    assert over.line.available_credit == 0

    account = stage1.account
    for _ in range(3):
        step = decisions.apply_signal(ctx(), account, signal("on_time_repayment"))
        account = step.account
    assert step.event.type is EventType.reopening_stage_advanced
    assert (account.reopening_stage, account.line.credit_line) == (2, 150_000)  # half of before

    for _ in range(6):
        step = decisions.apply_signal(ctx(), account, signal("on_time_repayment"))
        account = step.account
    assert (account.reopening_stage, account.line.credit_line) == (3, 200_000)  # the tier's line


def test_a_reopening_stage_raises_the_line_only_as_far_as_the_income_carries():
    # 0.5 * 2,000 - 850 = 150 yuan a month carries about 1,699 yuan at 10.8% over 12 months.
    account = closed_account(
        100,
        last_on_time_repayment_at=NOW - timedelta(days=5),
        declared_monthly_income=200_000,
        declared_monthly_debt_payments=85_000,
    )
    account = decisions.request_reopen(ctx(), account, score("B")).account  # 200 yuan: fits
    for _ in range(3):
        step = decisions.apply_signal(ctx(), account, signal("on_time_repayment"))
        account = step.account
    # Stage 2 would be 1,500 yuan (half of before): it fits too. Stage 3, the tier's 2,000
    # yuan, does not: the line stops at what the declared income carries.
    assert (account.reopening_stage, account.line.credit_line) == (2, 150_000)
    for _ in range(6):
        account = decisions.apply_signal(ctx(), account, signal("on_time_repayment")).account
    assert account.reopening_stage == 3
    assert 150_000 < account.line.credit_line < 170_000
    assert decisions.monthly_instalment(account.line.credit_line, 1_080, 12) <= 15_000


def test_only_closed_or_frozen_lines_reopen():
    with pytest.raises(FailedPrecondition):
        decisions.request_reopen(ctx(), opened("B"), score("B"))


# -- operators, hardship, preferences, appeals ---------------------------------------------


def test_operator_freeze_unfreeze_close():
    operator = ctx(actor=ActorKind.operator)
    frozen = decisions.freeze(operator, opened("B"), "fraud check")
    assert frozen.event.details == {"note": "fraud check"} and frozen.event.adverse
    assert codes(frozen.event) == ["POLICY_OPERATOR"]
    unfrozen = decisions.unfreeze(operator, frozen.account, "cleared")
    assert unfrozen.account.status is AccountStatus.active
    with pytest.raises(FailedPrecondition):
        decisions.unfreeze(operator, unfrozen.account, "again")
    closed = decisions.close(operator, unfrozen.account, "")
    assert closed.account.status is AccountStatus.closed


def test_hardship_pauses_draws_for_its_term_and_is_limited():
    account = opened("B", months_ago=12, line=Line(credit_line=200_000, drawn=120_000))
    decision = decisions.enroll_hardship(ctx(), account, 12, [])
    # 1,200 yuan repaid over 12 months at the standard tier's 10.8% a year.
    assert decision.account.hardship.monthly_instalment == 10_595
    assert decision.account.line.available_credit == 0
    later = add_months(NOW, 12) + timedelta(days=1)
    assert decisions.current(decision.account, POLICY, later).line.available_credit == 80_000
    (ended,) = decisions.settle(ctx(later), decision.account)
    assert ended.event.type is EventType.hardship_ended
    assert not ended.account.line.in_hardship

    with pytest.raises(FailedPrecondition, match="limited"):
        decisions.enroll_hardship(ctx(), account, 6, [NOW - timedelta(days=100)])
    with pytest.raises(FailedPrecondition, match="months on book"):
        decisions.enroll_hardship(ctx(), opened("B", months_ago=3), 6, [])
    with pytest.raises(InvalidArgument):
        decisions.enroll_hardship(ctx(), account, 48, [])


def test_preferences_cap_the_line_and_opt_out_of_increases():
    decision = decisions.set_preferences(ctx(), opened("B"), 50_000, automatic_increases=False)
    assert decision.account.line.available_credit == 50_000
    assert not decision.account.automatic_increases
    with pytest.raises(InvalidArgument):
        decisions.set_preferences(ctx(), opened("B"), 300_000, automatic_increases=True)


def test_a_reversed_appeal_restores_the_line_and_status():
    account = opened("B", line=Line(credit_line=200_000, drawn=10_000))
    cut = decisions.apply_signal(ctx(), account, signal("income_decline", Severity.medium))
    assert cut.account.line.credit_line == 140_000
    restored = decisions.reverse(ctx(actor=ActorKind.operator), cut.account, cut.event, [])
    assert restored.account.line.credit_line == 200_000
    assert restored.event.type is EventType.appeal_reversed
    assert restored.event.details == {"appealed_event_id": cut.event.event_id, "restored": "line"}


def test_a_reversal_never_reopens_a_line_closed_since():
    account = opened("B", line=Line(credit_line=200_000, drawn=10_000))
    cut = decisions.apply_signal(ctx(), account, signal("income_decline", Severity.medium))
    closed = decisions.apply_signal(ctx(), cut.account, dpd(90, Severity.critical))
    reversed_ = decisions.reverse(
        ctx(actor=ActorKind.operator), closed.account, cut.event, [closed.event]
    )
    assert reversed_.account.status is AccountStatus.closed
    assert reversed_.account.line == closed.account.line
    assert reversed_.event.details["restored"] == "none"


# -- invariants under any sequence of decisions (hypothesis) -------------------------------

SIGNAL_TYPES = [
    ("days_past_due", 1), ("days_past_due", 30), ("days_past_due", 60), ("days_past_due", 90),
    ("partial_payments", 0), ("multiple_lending", 0), ("utilisation_spike", 0),
    ("income_decline", 0), ("abnormal_transaction", 0), ("risk_band_worsened", 0),
    ("on_time_repayment", 0), ("delinquency_cured", 0), ("behaviour_rescored", 0),
]  # fmt: skip
steps = st.lists(
    st.one_of(
        st.tuples(st.just("draw"), st.integers(1, 600_000)),
        st.tuples(st.just("repay"), st.integers(1, 600_000)),
        st.tuples(st.just("signal"), st.tuples(st.sampled_from(SIGNAL_TYPES),
                                               st.sampled_from(list(Severity)))),
        st.tuples(st.just("report"), st.tuples(st.integers(0, 120), st.sampled_from("ABCDE"))),
        st.tuples(st.just("review"), st.sampled_from("ABCDE")),
        st.tuples(st.just("increase"), st.sampled_from("ABCDE")),
        st.tuples(st.just("reopen"), st.sampled_from("ABCDE")),
        st.tuples(st.just("operator"), st.sampled_from(["freeze", "unfreeze", "close"])),
        st.tuples(st.just("days"), st.integers(1, 120)),
    ),
    max_size=40,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(band=st.sampled_from("ABCD"), sequence=steps)
def test_line_invariants_hold_under_any_sequence_of_decisions(band, sequence):
    """No draw takes the drawn amount above the line, none goes through while a payment is
    past due, a reduction holds, and no status changes without its event."""
    now = NOW
    account = decisions.open_account(ctx(now), "a", "c", score(band), RICH).account
    drawn = 0
    operator = {"freeze": decisions.freeze, "unfreeze": decisions.unfreeze,
                "close": decisions.close}  # fmt: skip
    for number, (kind, value) in enumerate(sequence):
        c = ctx(now)
        before = account = decisions.current(account, POLICY, now)
        events = []
        try:
            for exit_decision in decisions.settle(c, account):
                events.append(exit_decision.event)
                account = exit_decision.account
            decision = None
            if kind == "draw":
                account = decisions.draw(c, account, value, "consumption")
                assert account.line.drawn <= account.line.usable_line
                assert not before.risk.past_due
                drawn += value
            elif kind == "repay":
                decision = decisions.repay(c, account, value)
                drawn -= value
            elif kind == "signal":
                (signal_type, days), severity = value
                event = Signal(f"s{number}", signal_type, severity, now, days_past_due=days)
                decision = decisions.apply_signal(c, account, event)
            elif kind == "report":
                days, scored = value
                report = decisions.RiskReport({"u": 0.1}, now, days, scored, now)
                account = decisions.apply_report(c, account, report)
            elif kind == "review":
                decision = decisions.review(c, account, score(value))
            elif kind == "increase":
                decision = decisions.request_increase(
                    c, account, None, score(value), RICH, NO_HISTORY
                )
            elif kind == "reopen":
                decision = decisions.request_reopen(c, account, score(value))
            elif kind == "operator":
                decision = operator[value](c, account, "")
            else:
                now += timedelta(days=value)
            if decision is not None:
                events.append(decision.event)
                account = decision.account
        except (FailedPrecondition, InvalidArgument):
            account = before  # refused: the account is as it was
            events = []
        line = account.line
        assert line.drawn == drawn >= 0  # decisions never draw or repay
        assert 0 <= line.available_credit <= line.credit_line
        if account.status not in ledger.DRAWS_ALLOWED:
            assert line.available_credit == 0
        if line.credit_line != before.line.credit_line:  # no line moves silently
            assert any(e and e.line_after == line.credit_line for e in events)
        if account.status is not before.status:  # no entry or exit without its event
            assert any(
                e
                and (e.status_before, e.status_after) == (before.status, account.status)
                or e
                and e.status_after is account.status
                for e in events
            ), (before.status, account.status, [e.type for e in events if e])
