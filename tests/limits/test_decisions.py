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
from services.limits.records import ActorKind, EventType, Reason, ReasonSource

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
    [("A", "prime", 500_000), ("B", "standard", 200_000), ("D", "thin_file", 25_000)],
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


def test_band_e_is_declined_with_policy_and_model_reasons_and_a_notice():
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
    assert codes(decision.event)[0] == "POLICY_ABILITY_TO_PAY"


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


def test_ability_to_pay_assumes_the_new_line_fully_drawn():
    account = opened("B")
    # 0.5 * 5,000 - 800 = 1,700 yuan a month; over 12 months a 20,400-yuan line, but the
    # current line is 2,000 yuan and one step is 1,000: affordable, so granted in full.
    fine = Affordability(monthly_income=500_000, monthly_debt_payments=80_000)
    assert decisions.request_increase(ctx(), account, None, score("B"), fine, NO_HISTORY).approved
    # Debts leave room for 2,400 yuan over 12 months: the step is cut down to what fits.
    tight = Affordability(monthly_income=100_000, monthly_debt_payments=30_000)
    decision = decisions.request_increase(ctx(), account, None, score("B"), tight, NO_HISTORY)
    assert decision.account.line.credit_line == 240_000
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


# -- signals -------------------------------------------------------------------------------


def signal(kind: str, severity: Severity, **evidence) -> Signal:
    return Signal(f"sig-{kind}", kind, severity, NOW, {k: str(v) for k, v in evidence.items()})


def test_days_past_due_escalates_watchlist_reduce_freeze_close():
    account = opened("B", line=Line(credit_line=200_000, drawn=150_000))
    one = decisions.apply_signal(ctx(), account, signal("days_past_due_1", Severity.low))
    assert one.event.type is EventType.watchlisted and one.account.days_past_due == 1
    thirty = decisions.apply_signal(ctx(), one.account, signal("days_past_due_30", Severity.medium))
    assert thirty.event.type is EventType.reduced
    assert thirty.account.line.credit_line == 150_000  # half is 100,000: never below drawn
    assert codes(thirty.event) == ["POLICY_DAYS_PAST_DUE"]
    assert thirty.event.details == {"signal_id": "sig-days_past_due_30"}
    sixty = decisions.apply_signal(ctx(), thirty.account, signal("days_past_due_60", Severity.high))
    assert sixty.event.type is EventType.frozen and sixty.account.suspended_at == NOW
    with pytest.raises(FailedPrecondition):
        ledger.draw(sixty.account.line, 1)
    ninety = decisions.apply_signal(
        ctx(), sixty.account, signal("days_past_due_90", Severity.critical)
    )
    assert ninety.event.type is EventType.closed
    assert ninety.account.line_before_closure == 150_000


def test_a_signal_below_its_rules_severity_changes_no_line():
    account = opened("B")
    decision = decisions.apply_signal(ctx(), account, signal("multiple_lending", Severity.low))
    assert decision.event is None and decision.account.status is AccountStatus.active


def test_abnormal_transactions_freeze_and_mark_an_open_anomaly():
    decision = decisions.apply_signal(
        ctx(), opened("B"), signal("abnormal_transaction", Severity.high)
    )
    assert decision.event.type is EventType.frozen and decision.account.open_anomaly


def test_six_on_time_repayments_and_six_months_earn_a_step_unless_opted_out():
    account = opened("B", months_ago=7)
    for _ in range(5):
        account = decisions.apply_signal(
            ctx(), account, signal("on_time_repayment", Severity.info)
        ).account
    assert account.line.credit_line == 200_000 and account.on_time_streak == 5
    sixth = decisions.apply_signal(ctx(), account, signal("on_time_repayment", Severity.info))
    assert sixth.event.type is EventType.increased
    assert sixth.account.line.credit_line == 300_000 and sixth.account.on_time_streak == 0
    opted_out = replace(account, automatic_increases=False)
    assert (
        decisions.apply_signal(ctx(), opted_out, signal("on_time_repayment", Severity.info)).event
        is None
    )


# -- staged reopening ----------------------------------------------------------------------


def closed_account(days_ago: int, **changes):
    account = opened("B", line=Line(credit_line=300_000))
    closed = decisions.close(ctx(NOW - timedelta(days=days_ago), ActorKind.operator), account, "")
    return replace(closed.account, **changes)


def test_reopening_is_refused_until_every_rule_holds():
    account = closed_account(10, days_past_due=5, open_anomaly=True)
    decision = decisions.request_reopen(ctx(), account, score("D"))
    assert not decision.approved
    assert codes(decision.event) == [
        "POLICY_REOPEN_TOO_SOON",
        "POLICY_DAYS_PAST_DUE",
        "POLICY_NO_RECENT_ON_TIME_REPAYMENT",
        "POLICY_OPEN_ANOMALY",
    ]
    assert decision.next_eligible_at == NOW + timedelta(days=80)


def test_staged_reopening_moves_forward_with_on_time_repayments():
    account = closed_account(100, last_on_time_repayment_at=NOW - timedelta(days=5))
    stage1 = decisions.request_reopen(ctx(), account, score("B"))
    assert stage1.approved and stage1.event.type is EventType.reopened
    assert (stage1.account.reopening_stage, stage1.account.line.credit_line) == (1, 20_000)
    assert stage1.account.status is AccountStatus.active

    account = stage1.account
    for _ in range(3):
        step = decisions.apply_signal(ctx(), account, signal("on_time_repayment", Severity.info))
        account = step.account
    assert step.event.type is EventType.reopening_stage_advanced
    assert (account.reopening_stage, account.line.credit_line) == (2, 150_000)  # half of before

    for _ in range(6):
        step = decisions.apply_signal(ctx(), account, signal("on_time_repayment", Severity.info))
        account = step.account
    assert (account.reopening_stage, account.line.credit_line) == (3, 200_000)  # the tier's line


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
    assert decision.account.hardship.monthly_instalment == 10_000
    assert decision.account.line.available_credit == 0
    later = add_months(NOW, 12) + timedelta(days=1)
    assert decisions.current(decision.account, later).line.available_credit == 80_000

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
    restored = decisions.reverse(ctx(actor=ActorKind.operator), cut.account, cut.event)
    assert restored.account.line.credit_line == 200_000
    assert restored.event.type is EventType.appeal_reversed
    assert restored.event.details == {"appealed_event_id": cut.event.event_id}


# -- invariants under any sequence of decisions (hypothesis) -------------------------------

SIGNAL_TYPES = [
    "days_past_due_1", "days_past_due_30", "days_past_due_60", "days_past_due_90",
    "partial_payments", "multiple_lending", "utilisation_spike", "income_decline",
    "abnormal_transaction", "risk_band_worsened", "on_time_repayment", "delinquency_cured",
]  # fmt: skip
steps = st.lists(
    st.one_of(
        st.tuples(st.just("draw"), st.integers(1, 600_000)),
        st.tuples(st.just("repay"), st.integers(1, 600_000)),
        st.tuples(st.just("signal"), st.tuples(st.sampled_from(SIGNAL_TYPES),
                                               st.sampled_from(list(Severity)))),
        st.tuples(st.just("review"), st.sampled_from("ABCDE")),
        st.tuples(st.just("increase"), st.sampled_from("ABCDE")),
        st.tuples(st.just("reopen"), st.sampled_from("ABCDE")),
        st.tuples(st.just("days"), st.integers(1, 120)),
    ),
    max_size=40,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(band=st.sampled_from("ABCD"), sequence=steps)
def test_line_invariants_hold_under_any_sequence_of_decisions(band, sequence):
    now = NOW
    account = decisions.open_account(ctx(now), "a", "c", score(band), RICH).account
    drawn = 0
    for number, (kind, value) in enumerate(sequence):
        try:
            if kind == "draw":
                account = replace(account, line=ledger.draw(account.line, value))
                drawn += value
            elif kind == "repay":
                account = replace(account, line=ledger.repay(account.line, value))
                drawn -= value
            elif kind == "signal":
                signal_type, severity = value
                event = Signal(f"s{number}", signal_type, severity, now)
                account = decisions.apply_signal(ctx(now), account, event).account
            elif kind == "review":
                account = decisions.review(ctx(now), account, score(value)).account
            elif kind == "increase":
                account = decisions.request_increase(
                    ctx(now), account, None, score(value), RICH, NO_HISTORY
                ).account
            elif kind == "reopen":
                account = decisions.request_reopen(ctx(now), account, score(value)).account
            else:
                now += timedelta(days=value)
        except (FailedPrecondition, InvalidArgument):
            pass  # refused: the account is as it was
        line = account.line
        assert 0 <= line.drawn <= line.credit_line
        assert line.drawn == drawn  # decisions never draw or repay
        assert 0 <= line.available_credit <= line.credit_line
        if account.status not in ledger.DRAWS_ALLOWED:
            assert line.available_credit == 0
