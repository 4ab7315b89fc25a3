"""Ledger invariants under random sequences of draws, repayments, line changes and status
changes (hypothesis), and the refusals a customer sees."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import FailedPrecondition, InvalidArgument, ServiceError
from services.limits.ledger import AccountStatus, Line, change_line, draw, repay, set_status

amounts = st.integers(min_value=-1_000, max_value=2_000_000)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("draw"), amounts),
        st.tuples(st.just("repay"), amounts),
        st.tuples(st.just("change_line"), st.integers(min_value=0, max_value=3_000_000)),
        st.tuples(st.just("status"), st.sampled_from(list(AccountStatus))),
        st.tuples(st.just("cap"), st.one_of(st.none(), st.integers(0, 3_000_000))),
        st.tuples(st.just("stopped"), st.booleans()),
    ),
    max_size=60,
)


def apply(line: Line, operation) -> Line:
    kind, value = operation
    if kind == "draw":
        return draw(line, value)
    if kind == "repay":
        return repay(line, value)
    if kind == "change_line":
        return change_line(line, value)
    if kind == "status":
        return set_status(line, value)
    if kind == "stopped":
        return replace(line, draws_stopped=value)
    return replace(line, customer_cap=value)


@settings(max_examples=300, deadline=None)
@given(initial=st.integers(0, 1_000_000), steps=operations)
def test_invariants_hold_for_any_sequence(initial, steps):
    line = Line(credit_line=initial)
    drawn_by_us = 0
    for step in steps:
        before = line
        try:
            line = apply(line, step)
        except ServiceError:
            assert line == before  # a refused operation changes nothing
            continue
        if step[0] == "draw":
            drawn_by_us += step[1]
            # No draw takes the drawn amount above the line, or happens while stopped.
            assert line.drawn <= line.usable_line and not before.draws_stopped
        elif step[0] == "repay":
            drawn_by_us -= step[1]
        assert line.drawn >= 0
        assert line.available_credit >= 0
        assert line.available_credit <= max(0, line.usable_line - line.drawn)
        assert line.drawn == drawn_by_us  # nothing appears or vanishes


def test_a_draw_beyond_the_available_credit_is_refused_with_the_amount():
    line = draw(Line(credit_line=25_000), 20_000)
    with pytest.raises(FailedPrecondition) as raised:
        draw(line, 5_001)
    assert raised.value.reason == "INSUFFICIENT_CREDIT"
    assert raised.value.metadata == {"available_credit": "5000"}
    assert draw(line, 5_000).available_credit == 0


@pytest.mark.parametrize(
    ("status", "reason"),
    [(AccountStatus.frozen, "LINE_FROZEN"), (AccountStatus.closed, "LINE_CLOSED")],
)
def test_frozen_and_closed_lines_refuse_draws(status, reason):
    line = set_status(Line(credit_line=100_000), status)
    assert line.available_credit == 0
    with pytest.raises(FailedPrecondition) as raised:
        draw(line, 1)
    assert raised.value.reason == reason


def test_hardship_pauses_draws_but_not_repayments():
    line = Line(credit_line=100_000, drawn=50_000, in_hardship=True)
    with pytest.raises(FailedPrecondition, match="hardship"):
        draw(line, 1)
    assert repay(line, 10_000).drawn == 40_000


def test_a_reduction_holds_below_what_is_drawn_until_repayments_bring_it_under():
    line = change_line(draw(Line(credit_line=100_000), 70_000), 50_000)
    assert (line.credit_line, line.available_credit) == (50_000, 0)
    with pytest.raises(FailedPrecondition):
        draw(line, 1)
    line = repay(line, 30_000)
    assert line.available_credit == 10_000


def test_draws_stop_while_a_payment_is_past_due():
    line = Line(credit_line=100_000, draws_stopped=True)
    assert line.available_credit == 0
    with pytest.raises(FailedPrecondition) as raised:
        draw(line, 1)
    assert raised.value.reason == "PAST_DUE"


def test_the_customer_cap_limits_what_can_be_drawn():
    line = Line(credit_line=100_000, customer_cap=30_000)
    assert line.available_credit == 30_000
    with pytest.raises(FailedPrecondition):
        draw(line, 30_001)


@pytest.mark.parametrize("amount", [0, -1])
def test_non_positive_amounts_are_invalid(amount):
    with pytest.raises(InvalidArgument) as raised:
        draw(Line(credit_line=100), amount)
    assert [v.field for v in raised.value.violations] == ["amount.minor_units"]
    with pytest.raises(InvalidArgument):
        repay(Line(credit_line=100, drawn=50), amount)


def test_repaying_more_than_is_owed_is_refused():
    with pytest.raises(FailedPrecondition) as raised:
        repay(Line(credit_line=100, drawn=50), 51)
    assert raised.value.reason == "REPAYMENT_EXCEEDS_OUTSTANDING"
