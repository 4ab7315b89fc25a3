"""Every rule, from event sequences, on the pure detection engine (no server, no database)."""

from datetime import timedelta

import pytest

from services.monitoring.detection import ScoredProfile, new_account, process, rescored
from services.monitoring.profile import DAY, AccountState, Event, EventKind, Timing, features
from services.monitoring.rules import Severity, load_rules

RULES = load_rules()
T0 = 1_767_600_000.0  # 2026-01-05


class Account:
    """Feeds events to one account's state and keeps what they raised."""

    def __init__(self, line: int = 500_000, income: int = 2_000_000) -> None:
        self.now = T0
        self.sequence = 0
        self.state: AccountState | None = None
        self.raised = []
        self.feed(EventKind.account_opened, amount=line, income=income)

    def feed(self, kind: EventKind, after_days: float = 0, **fields) -> list[str]:
        self.now += after_days * DAY
        self.sequence += 1
        event = Event(f"e{self.sequence}", "acct", self.sequence, self.now, kind, **fields)
        if self.state is None:
            self.state = new_account(event)
        raised = process(self.state, event, RULES)
        self.raised.extend(raised)
        return [r.type for r in raised]

    def dpd(self, days: int, after_days: float = 0) -> list[str]:
        return self.feed(EventKind.days_past_due_updated, after_days, days_past_due=days)

    def repay(self, amount: int = 10_000, timing=Timing.on_time, after_days: float = 0, dpd=0):
        return self.feed(
            EventKind.repayment, after_days, amount=amount, timing=timing, days_past_due=dpd
        )

    def draw(self, amount: int, after_days: float = 0) -> list[str]:
        return self.feed(EventKind.line_drawn, after_days, amount=amount)


def test_days_past_due_thresholds_raise_once_per_episode_with_rising_severity():
    account = Account()
    assert account.feed(EventKind.payment_missed, 30, days_past_due=1) == ["days_past_due_1"]
    assert account.dpd(15, 14) == []  # same episode, no new threshold
    assert account.dpd(30, 15) == ["days_past_due_30"]
    assert account.dpd(31, 1) == []
    assert account.dpd(60, 29) == ["days_past_due_60"]
    assert account.dpd(90, 30) == ["days_past_due_90"]
    severities = [r.severity for r in account.raised]
    assert severities == [Severity.low, Severity.medium, Severity.high, Severity.critical]
    evidence = account.raised[1].evidence
    assert evidence == {"days_past_due": "30", "threshold_days": "30"}


def test_signals_raised_by_an_event_naming_a_loan_carry_the_loan():
    account = Account()

    def repay(timing: Timing, dpd: int) -> list[str]:
        return account.feed(
            EventKind.repayment, 1, amount=100, timing=timing, days_past_due=dpd, loan_id="loan-7"
        )

    missed = account.feed(EventKind.payment_missed, 30, days_past_due=1, loan_id="loan-7")
    assert missed == ["days_past_due_1"]
    assert [repay(Timing.partial, 1) for _ in range(2)] == [[], ["partial_payments"]]
    assert account.dpd(30, 28) == ["days_past_due_30"]  # an event naming no loan
    assert repay(Timing.late, 0) == ["delinquency_cured"]
    assert repay(Timing.on_time, 0) == ["on_time_repayment"]
    loans = [r.evidence.get("loan_id") for r in account.raised]
    assert loans == ["loan-7", "loan-7", None, "loan-7", "loan-7"]


def test_a_jump_raises_every_threshold_crossed_in_order():
    account = Account()
    assert account.dpd(65, 40) == ["days_past_due_1", "days_past_due_30", "days_past_due_60"]


def test_a_cure_ends_the_episode_raises_cured_and_a_new_delinquency_raises_again():
    account = Account()
    account.dpd(35, 40)
    assert account.repay(timing=Timing.late, dpd=0, after_days=5) == ["delinquency_cured"]
    cured = account.raised[-1]
    assert cured.severity is Severity.info and cured.evidence == {"worst_days_past_due": "35"}
    assert account.state.episodes == {}
    assert account.dpd(1, 30) == ["days_past_due_1"]
    profile = features(account.state)
    assert profile["max_dpd_3m"] == 35 and profile["dpd30_episodes_12m"] == 1


def test_consecutive_partial_payments_raise_once_until_a_full_payment():
    account = Account()
    assert account.repay(timing=Timing.partial, after_days=30) == []
    assert account.repay(timing=Timing.partial, after_days=30) == ["partial_payments"]
    assert account.repay(timing=Timing.partial, after_days=30) == []  # same run
    assert account.repay(timing=Timing.on_time, after_days=30) == ["on_time_repayment"]
    assert "partial_payments" not in account.state.episodes
    assert account.repay(timing=Timing.partial, after_days=30) == []
    # A new run, past the 30-day cool-off: raised again.
    assert account.repay(timing=Timing.partial, after_days=30) == ["partial_payments"]
    assert features(account.state)["partial_payments_6m"] == 5


def test_inquiries_at_other_lenders_raise_multiple_lending_and_escalate_by_window():
    account = Account()
    assert account.feed(EventKind.credit_inquiry, 10) == []
    assert account.feed(EventKind.credit_inquiry, 1) == []
    assert account.feed(EventKind.credit_inquiry, 1) == ["multiple_lending"]  # 3 in 7 days
    assert account.raised[-1].severity is Severity.medium
    assert account.feed(EventKind.credit_inquiry, 1) == []
    assert account.feed(EventKind.credit_inquiry, 6) == []
    assert account.feed(EventKind.credit_inquiry, 6) == ["multiple_lending"]  # 6 in 30 days
    assert account.raised[-1].severity is Severity.high
    assert account.raised[-1].evidence == {"inquiries": "6", "window_days": "30"}
    # A month later the windows are empty: the episode ends.
    account.feed(EventKind.income_updated, 40, income=2_000_000)
    assert "multiple_lending" not in account.state.episodes


def test_inquiries_spread_out_raise_nothing():
    account = Account()
    for _ in range(10):
        assert account.feed(EventKind.credit_inquiry, 8) == []


def test_utilisation_at_or_above_90_percent_raises_once():
    account = Account(line=100_000)
    assert account.draw(50_000, 1) == []
    assert account.draw(40_000, 10) == ["utilisation_spike"]
    assert account.raised[-1].evidence["utilisation"] == "0.90"
    assert account.draw(5_000, 1) == []
    account.repay(60_000, after_days=20)
    assert "utilisation_spike" not in account.state.episodes


def test_utilisation_up_50_points_within_7_days_raises():
    account = Account(line=100_000)
    assert account.draw(10_000, 1) == []
    assert account.draw(55_000, 3) == ["utilisation_spike"]
    assert account.raised[-1].evidence == {"rise": "0.55", "window_days": "7"}


def test_a_slow_rise_in_utilisation_raises_nothing():
    account = Account(line=100_000)
    for _ in range(8):
        assert account.draw(10_000, 8) == []


def test_income_down_30_percent_raises_and_smaller_changes_do_not():
    account = Account(income=2_000_000)
    assert account.feed(EventKind.income_updated, 30, income=1_500_000) == []  # -25%
    assert account.feed(EventKind.income_updated, 30, income=1_380_000) == ["income_decline"]
    assert account.raised[-1].evidence == {"decline": "0.31"}
    assert features(account.state)["income_change"] == pytest.approx(-0.31)


def test_a_transaction_far_outside_the_accounts_history_raises():
    account = Account()
    for amount in (10_000, 12_000, 9_000, 11_000, 10_500, 9_500, 12_500, 10_000):
        assert account.feed(EventKind.transaction, 2, amount=amount) == []
    assert account.feed(EventKind.transaction, 2, amount=14_000) == []  # unusual, not far out
    assert account.feed(EventKind.transaction, 2, amount=200_000) == ["abnormal_transaction"]
    assert float(account.raised[-1].evidence["robust_z"]) > 5
    # Within the one-day cool-off another outlier is the same episode.
    assert account.feed(EventKind.transaction, 0.1, amount=250_000) == []


def test_a_short_history_never_makes_an_outlier():
    account = Account()
    assert account.feed(EventKind.transaction, 1, amount=10_000) == []
    assert account.feed(EventKind.transaction, 1, amount=900_000) == []


def test_many_draws_in_a_short_window_raise_abnormal_transaction():
    account = Account(line=1_000_000)
    raised = [account.draw(1_000, 0.1) for _ in range(5)]
    assert raised == [[], [], [], [], ["abnormal_transaction"]]
    assert account.raised[-1].evidence == {"draws": "5", "hours": "24.0"}


def scored_now(state: AccountState) -> ScoredProfile:
    return ScoredProfile(state.profile_version, state.last_event_at, features(state))


def test_every_rescoring_raises_behaviour_rescored_with_the_band_and_the_profile_scored():
    account = Account()
    account.dpd(5, 3)
    scored = scored_now(account.state)
    first = rescored(account.state, scored, "B", "1.0.0", RULES)  # no band before: no change
    assert [r.type for r in first] == ["behaviour_rescored"]
    report = first[0]
    assert (report.severity, report.risk_band, report.event_id) == (Severity.info, "B", "")
    assert report.evidence == {"risk_band": "B", "model_version": "1.0.0"}
    assert report.profile == scored.features and report.detected_at == scored.at
    assert report.report and "behaviour_rescored" not in account.state.episodes
    # The same profile scored again (another model) is reported again, under another id.
    account.state.score = {"risk_band": "B"}
    again = rescored(account.state, scored, "B", "1.1.0", RULES)
    assert [r.type for r in again] == ["behaviour_rescored"]
    assert again[0].signal_id != report.signal_id
    assert rescored(account.state, scored, "B", "1.0.0", RULES)[0].signal_id == report.signal_id


def test_rescoring_reports_the_profile_scored_even_when_events_moved_the_account_since():
    account = Account()
    scored = scored_now(account.state)
    account.dpd(40, 35)  # arrives while the profile above is being scored
    [report] = rescored(account.state, scored, "C", "1.0.0", RULES)
    assert report.profile == scored.features and report.profile["days_past_due"] == 0
    assert report.detected_at == T0


def test_a_worse_band_after_rescoring_raises_and_a_better_one_does_not():
    account = Account()
    account.state.score = {"risk_band": "B"}
    scored = scored_now(account.state)
    assert [r.type for r in rescored(account.state, scored, "B", "1.0.0", RULES)] == [
        "behaviour_rescored"
    ]
    worse = rescored(account.state, scored, "D", "1.0.0", RULES)
    assert [(r.type, r.risk_band) for r in worse] == [
        ("behaviour_rescored", "D"),
        ("risk_band_worsened", "D"),
    ]
    assert (worse[1].evidence["from_band"], worse[1].evidence["to_band"]) == ("B", "D")
    assert worse[1].event_id == ""
    account.state.score = {"risk_band": "D"}
    assert [r.type for r in rescored(account.state, scored, "A", "1.0.0", RULES)] == [
        "behaviour_rescored"
    ]
    assert "risk_band_worsened" not in account.state.episodes


def test_every_on_time_repayment_is_reported_and_streak_milestones_are_alerts():
    account = Account()
    types = [account.repay(after_days=30) for _ in range(3)]
    assert types == [["on_time_repayment"]] * 2 + [["on_time_repayment", "on_time_streak"]]
    streak = account.raised[-1]
    assert streak.evidence == {"on_time_streak": "3"} and not streak.report
    assert all(r.report for r in account.raised[:-1])
    account.repay(timing=Timing.late, after_days=30)
    assert features(account.state)["on_time_streak"] == 0


def test_signal_ids_come_from_the_event_so_a_replay_raises_the_same_ids():
    first, second = Account(), Account()
    for account in (first, second):
        account.dpd(40, 35)
    assert [r.signal_id for r in first.raised] == [r.signal_id for r in second.raised]
    assert len({r.signal_id for r in first.raised}) == 2


def test_the_profile_windows_roll_over_a_year():
    account = Account()
    account.dpd(65, 40)
    account.repay(timing=Timing.late, after_days=10)
    profile = features(account.state)
    assert (profile["max_dpd_3m"], profile["dpd60_episodes_12m"]) == (65, 1)
    account.feed(EventKind.income_updated, 100, income=2_000_000)  # ~110 days later
    profile = features(account.state)
    assert (profile["max_dpd_3m"], profile["max_dpd_6m"]) == (0, 65)
    account.feed(EventKind.income_updated, 300, income=2_000_000)  # over a year later
    profile = features(account.state)
    assert (profile["max_dpd_12m"], profile["dpd60_episodes_12m"]) == (0, 0)
    assert profile["months_on_book"] == 1 + int((account.now - T0) // (30 * DAY))


def test_state_round_trips_through_json():
    account = Account()
    account.dpd(40, 35)
    account.feed(EventKind.credit_inquiry, 1)
    again = AccountState.from_json(account.state.to_json())
    assert again == account.state


def test_time_moving_backwards_never_rewinds_the_windows():
    account = Account()
    account.feed(EventKind.credit_inquiry, 10)
    account.now -= timedelta(days=5).total_seconds()
    account.feed(EventKind.credit_inquiry)
    assert account.state.last_event_at == T0 + 10 * DAY
