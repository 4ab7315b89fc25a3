"""Three real servers: monitoring watches a customer's repayments and tells limits, which
reduces, freezes and, once the customer is back on track, reopens the line stage by stage.
Also: signals wait in the outbox while limits is down and arrive exactly once when it is up."""

import pytest

from creditline.limits.v1 import limits_service_pb2 as lpb
from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from services.monitoring.delivery import signal_message
from tests.limits.test_service import open_account, rid
from tests.monitoring.events import Customer, publish
from tests.monitoring.test_streams import wait_until
from tests.servers import wait_serving


@pytest.fixture
def suite(start_monitoring, start_limits, scoring, clock):
    """Limits on the test's clock; monitoring telling it, both scoring with the real models."""
    limits = start_limits(scoring.port)
    monitoring = start_monitoring(limits_target=limits.address, servicer_options={"clock": clock})
    return limits, monitoring


def settled(monitoring) -> bool:
    """Whether every signal monitoring raised has been delivered to limits."""
    alerts = monitoring.ListAlerts(pb.ListAlertsRequest(page_size=500), timeout=10).alerts
    return all(a.delivery_state != pb.DELIVERY_STATE_PENDING for a in alerts)


def rescored(monitoring) -> bool:
    """Whether no account waits for rescoring (read from the store: no RPC tells)."""
    with monitoring.server.bindings[0].servicer.store.read() as uow:
        return not uow.accounts_due_for_rescoring(1)


def publish_and_settle(monitoring, *events) -> pb.BatchAck:
    """Publishes, then waits for rescoring and for delivery to limits, so steps do not race."""
    ack = publish(monitoring, *events)
    wait_until(lambda: rescored(monitoring) and settled(monitoring))
    return ack


def test_a_customer_misses_payments_is_cut_and_frozen_then_reopened_in_stages(suite, clock):
    limits, monitoring = suite
    account = open_account(limits).account
    line = account.credit_line.minor_units
    customer = Customer(account.account_id, at=clock.now)

    def after(days: int) -> Customer:
        clock.advance(days=days)
        customer.at = clock.now
        return customer

    publish_and_settle(monitoring, customer.opened(line / 100), after(1).drawn(1_000))
    publish_and_settle(monitoring, after(30).missed(days=1))
    publish_and_settle(monitoring, after(29).past_due(30))
    reduced = limits.GetAccount(lpb.GetAccountRequest(account_id=account.account_id)).account
    # Cut by half at 30 days past due (and again if rescoring found a worse band).
    assert reduced.credit_line.minor_units <= line // 2
    publish_and_settle(monitoring, after(30).past_due(60))
    frozen = limits.GetAccount(lpb.GetAccountRequest(account_id=account.account_id)).account
    assert frozen.status == lpb.ACCOUNT_STATUS_FROZEN

    # Cured, then a year of instalments paid on time.
    publish_and_settle(monitoring, after(5).repaid(1_000, "LATE", dpd_after=0))
    for _ in range(12):
        publish_and_settle(monitoring, after(30).repaid(100))
    # Limits scores the behaviour monitoring reported: the request carries none.
    state = limits.GetAccount(lpb.GetAccountRequest(account_id=account.account_id)).account.risk
    assert state.fresh and state.days_past_due == 0
    assert state.profile_time.ToDatetime() == customer.at.replace(tzinfo=None)
    reopen = limits.RequestReopen(
        lpb.RequestReopenRequest(request_id=rid(), account_id=account.account_id)
    )
    assert reopen.reopened, [r.code for r in reopen.event.reasons]
    stage_one = reopen.account.credit_line.minor_units
    assert stage_one == 20_000  # the stage's own line
    for _ in range(3):
        publish_and_settle(monitoring, after(30).repaid(100))
    advanced = limits.GetAccount(lpb.GetAccountRequest(account_id=account.account_id)).account
    assert advanced.reopening_stage == 2
    assert advanced.credit_line.minor_units > stage_one

    history = limits.ListLimitEvents(
        lpb.ListLimitEventsRequest(account_id=account.account_id, page_size=50)
    ).events
    steps = [
        lpb.LimitEventType.Name(e.type).removeprefix("LIMIT_EVENT_TYPE_") for e in reversed(history)
    ]
    expected = [
        "OPENED",
        "WATCHLISTED",
        "REDUCED",
        "FROZEN",
        "REOPENED",
        "REOPENING_STAGE_ADVANCED",
    ]
    remaining = iter(steps)  # in this order, perhaps with others between (a band cut)
    assert all(step in remaining for step in expected), steps
    for event in history:
        assert event.reasons, f"{lpb.LimitEventType.Name(event.type)} carries no reasons"
    cuts = [e for e in history if e.type == lpb.LIMIT_EVENT_TYPE_REDUCED]
    assert {e.actor.kind for e in cuts} == {lpb.ACTOR_KIND_MONITORING}
    overdue_cut = [e for e in cuts if e.reasons[0].code == "POLICY_DAYS_PAST_DUE"]
    assert len(overdue_cut) == 1 and overdue_cut[0].reasons[0].texts["zh-CN"]


def test_a_cured_customer_leaves_the_watchlist_after_the_clean_period(suite, clock):
    """One missed payment watchlists the line; cured and clean for the policy's 90 days, the
    next on-time repayment monitoring reports takes it off, with its event and reasons."""
    limits, monitoring = suite
    account = open_account(limits).account
    customer = Customer(account.account_id, at=clock.now)

    def after(days: int) -> Customer:
        clock.advance(days=days)
        customer.at = clock.now
        return customer

    def status() -> lpb.Account:
        return limits.GetAccount(lpb.GetAccountRequest(account_id=account.account_id)).account

    line = account.credit_line.minor_units
    publish_and_settle(monitoring, customer.opened(line / 100), after(1).drawn(1_000))
    publish_and_settle(monitoring, after(30).missed(days=1))
    watched = status()
    assert (
        watched.status == lpb.ACCOUNT_STATUS_WATCHLIST and watched.available_credit.minor_units == 0
    )
    publish_and_settle(monitoring, after(3).repaid(500, "LATE", dpd_after=0))
    cured = status()
    assert cured.status == lpb.ACCOUNT_STATUS_WATCHLIST  # cured, but not yet clean for long
    assert cured.risk.days_past_due == 0 and cured.available_credit.minor_units > 0
    for _ in range(2):
        publish_and_settle(monitoring, after(30).repaid(100))
    assert status().status == lpb.ACCOUNT_STATUS_WATCHLIST  # 60 days clean
    publish_and_settle(monitoring, after(31).repaid(100))  # 91 days since the cure
    assert status().status == lpb.ACCOUNT_STATUS_ACTIVE
    history = limits.ListLimitEvents(
        lpb.ListLimitEventsRequest(account_id=account.account_id, page_size=50)
    ).events
    (lifted,) = [e for e in history if e.type == lpb.LIMIT_EVENT_TYPE_WATCHLIST_LIFTED]
    assert lifted.reasons[0].code == "POLICY_CLEAN_PERIOD" and lifted.reasons[0].texts["zh-CN"]


def test_signals_wait_while_limits_is_down_and_arrive_exactly_once(
    start_monitoring, start_limits, scoring, clock
):
    limits = start_limits(scoring.port)
    port = int(limits.address.rsplit(":", 1)[1])
    accounts = [open_account(limits).account.account_id for _ in range(3)]
    limits_server = limits.server
    limits_server.stop(0)  # limits goes down

    monitoring = start_monitoring(limits_target=limits.address, servicer_options={"clock": clock})
    customers = [Customer(a, at=clock.now) for a in accounts]
    for customer in customers:
        events = [customer.opened(), customer.drawn(500)]
        events += [customer.advance(days=30).repaid(100) for _ in range(3)]
        events += [customer.advance(days=31).missed(days=1), customer.advance(days=29).past_due(30)]
        publish(monitoring, *events)
    reported = [
        a
        for a in monitoring.ListAlerts(pb.ListAlertsRequest(page_size=500)).alerts
        if a.delivery_state != pb.DELIVERY_STATE_NOT_REPORTED
    ]
    warnings_and_repayments = [a for a in reported if a.type != "behaviour_rescored"]
    assert len(warnings_and_repayments) == 3 * 5  # three on-time repayments, 1 and 30 dpd
    # While limits is down, the signals wait and delivery keeps trying.
    wait_until(lambda: _attempted(monitoring))
    assert not settled(monitoring)

    restarted = start_limits(scoring.port, port=port)  # limits comes back, same database
    wait_serving(port)
    wait_until(lambda: settled(monitoring), timeout=90)
    delivered = monitoring.ListAlerts(pb.ListAlertsRequest(page_size=500)).alerts
    assert {a.delivery_state for a in delivered if a.type != "on_time_streak"} == {
        pb.DELIVERY_STATE_DELIVERED
    }
    for account_id in accounts:
        history = restarted.ListLimitEvents(
            lpb.ListLimitEventsRequest(account_id=account_id, page_size=50)
        ).events
        kinds = sorted(lpb.LimitEventType.Name(e.type) for e in history)
        assert kinds == [
            "LIMIT_EVENT_TYPE_OPENED",
            "LIMIT_EVENT_TYPE_REDUCED",
            "LIMIT_EVENT_TYPE_WATCHLISTED",
        ]
    # Sent again (as after a crash between delivery and its record): applied once still.
    store = monitoring.server.bindings[0].servicer.store
    with store.read() as uow:
        records = [
            record
            for a in reported
            for record in uow.alerts_by_signal_id(a.account_id, [a.signal_id])
        ]
    again = restarted.ReportSignals(
        lpb.ReportSignalsRequest(signals=[signal_message(record) for record in records])
    )
    assert len(again.outcomes) == len(reported)
    assert all(outcome.duplicate for outcome in again.outcomes)


def _attempted(monitoring) -> bool:
    from services.monitoring.store import alerts

    store = monitoring.server.bindings[0].servicer.store
    with store.read() as uow:
        attempts = uow._connection.execute(alerts.select()).all()
    return any(row.delivery_attempts > 0 for row in attempts)


def test_a_signal_limits_refuses_for_good_is_set_aside_and_the_rest_delivered(
    start_monitoring, start_limits, scoring, clock
):
    limits = start_limits(scoring.port)
    known = open_account(limits).account.account_id
    monitoring = start_monitoring(limits_target=limits.address)
    stranger, member = Customer("not-a-limits-account"), Customer(known)
    publish(
        monitoring,
        stranger.opened(),
        stranger.advance(days=31).missed(),
        member.opened(),
        member.advance(days=31).missed(),
    )
    wait_until(lambda: settled(monitoring))
    states = {
        a.account_id: a.delivery_state for a in monitoring.ListAlerts(pb.ListAlertsRequest()).alerts
    }
    assert states == {
        "not-a-limits-account": pb.DELIVERY_STATE_REJECTED,
        known: pb.DELIVERY_STATE_DELIVERED,
    }
