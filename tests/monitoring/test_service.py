"""MonitoringService over real channels, on SQLite and PostgreSQL."""

import grpc
import pytest

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from tests.monitoring.events import Customer, batch, publish
from tests.monitoring.test_streams import wait_until_rescored

APPLIED, DUPLICATE, OUT_OF_SEQUENCE = (
    pb.EVENT_OUTCOME_APPLIED,
    pb.EVENT_OUTCOME_DUPLICATE,
    pb.EVENT_OUTCOME_OUT_OF_SEQUENCE,
)


def test_events_are_applied_and_alerts_listed(monitoring):
    alice = Customer("acct-alice")
    ack = publish(monitoring, alice.opened(), alice.drawn(1000), alice.advance(days=30).missed())
    assert [r.outcome for r in ack.results] == [APPLIED] * 3
    assert ack.signals_raised == 1
    wait_until_rescored(monitoring)
    alerts = monitoring.ListAlerts(pb.ListAlertsRequest(), timeout=10).alerts
    assert [a.type for a in alerts] == ["behaviour_rescored", "days_past_due_1"]
    risk = monitoring.GetAccountRisk(pb.GetAccountRiskRequest(account_id="acct-alice")).risk
    assert risk.profile["days_past_due"] == 1
    assert risk.profile["utilisation"] == pytest.approx(0.2)
    assert [s.type for s in risk.open_signals] == ["days_past_due_1"]


def alert_types(monitoring, **filter_fields) -> list[str]:
    request = pb.ListAlertsRequest(filter=pb.AlertFilter(**filter_fields), page_size=500)
    return [a.type for a in monitoring.ListAlerts(request, timeout=10).alerts]


def test_a_batch_sent_again_is_all_duplicates_and_changes_nothing(monitoring):
    bob = Customer("acct-bob")
    events = [bob.opened(), bob.drawn(4_700), bob.advance(days=31).missed(days=1)]
    first = publish(monitoring, *events)
    again = publish(monitoring, *events)
    assert [r.outcome for r in again.results] == [DUPLICATE] * 3
    assert (again.applied, again.duplicates, again.signals_raised) == (0, 3, 0)
    assert first.signals_raised == 2  # utilisation at 94%, then 1 day past due
    # And one rescoring: the batch sent again moved nothing.
    wait_until_rescored(monitoring)
    assert sorted(alert_types(monitoring)) == [
        "behaviour_rescored",
        "days_past_due_1",
        "utilisation_spike",
    ]


def test_a_repeated_event_id_within_a_batch_is_applied_once(monitoring):
    carol = Customer("acct-carol")
    opened, inquiry = carol.opened(), carol.inquiry()
    ack = publish(monitoring, opened, inquiry, inquiry)
    assert [r.outcome for r in ack.results] == [APPLIED, APPLIED, DUPLICATE]
    risk = monitoring.GetAccountRisk(pb.GetAccountRiskRequest(account_id="acct-carol")).risk
    assert risk.profile["inquiries_7d"] == 1


def test_events_out_of_order_within_a_batch_are_applied_in_sequence(monitoring):
    dave = Customer("acct-dave")
    events = [dave.opened(), *(dave.advance(days=1).inquiry() for _ in range(3))]
    ack = publish(monitoring, *reversed(events))
    assert [r.event_id for r in ack.results] == [e.event_id for e in reversed(events)]
    assert [r.outcome for r in ack.results] == [APPLIED] * 4
    wait_until_rescored(monitoring)
    alerts = monitoring.ListAlerts(pb.ListAlertsRequest(), timeout=10).alerts
    assert [a.type for a in alerts] == ["behaviour_rescored", "multiple_lending"]
    assert alerts[1].event_id == events[3].event_id  # the third inquiry raised it


def test_a_gap_in_the_sequence_is_refused_with_the_sequence_expected_then_filled(monitoring):
    erin = Customer("acct-erin")
    opened, first, second, third = erin.opened(), erin.inquiry(), erin.inquiry(), erin.inquiry()
    publish(monitoring, opened, first)
    ack = publish(monitoring, third)
    assert ack.results[0].outcome == OUT_OF_SEQUENCE
    assert ack.results[0].expected_sequence == 3
    assert ack.out_of_sequence == 1
    assert [r.outcome for r in publish(monitoring, second, third).results] == [APPLIED] * 2
    # A stale sequence with a new id is refused too: never counted twice.
    stale = pb.RepaymentEvent()
    stale.CopyFrom(second)
    stale.event_id = "ev-erin-replayed"
    assert publish(monitoring, stale).results[0].expected_sequence == 5
    risk = monitoring.GetAccountRisk(pb.GetAccountRiskRequest(account_id="acct-erin")).risk
    assert (risk.profile["inquiries_7d"], risk.last_sequence) == (3, 4)


def violations(error: grpc.RpcError) -> dict[str, str]:
    from services.common.errors import violations_of

    return {v.field: v.description for v in violations_of(error)}


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=10)
    return raised.value


def test_an_event_for_an_unknown_account_refuses_the_whole_batch(monitoring):
    frank, ghost = Customer("acct-frank"), Customer("acct-ghost")
    ghost.opened()  # never sent
    request = pb.PublishEventsRequest(batch=batch(frank.opened(), ghost.inquiry()))
    error = refused(monitoring.PublishEvents, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {
        "batch.events[1].account_id": "unknown account: an account's first event must be "
        "account_opened"
    }
    # Nothing of the batch was applied: frank's opening can be sent again as new.
    assert publish(monitoring, request.batch.events[0]).results[0].outcome == APPLIED


def test_bad_events_are_refused_field_by_field(monitoring):
    good = Customer("acct-good")
    missing_ids = good.opened()
    missing_ids.event_id, missing_ids.account_id = "", ""
    negative = good.drawn(100)
    negative.line_drawn.amount.minor_units = -100
    empty = good.event()  # no kind at all
    no_time = good.inquiry()
    no_time.ClearField("occurred_at")
    no_sequence = good.inquiry()
    no_sequence.sequence = 0
    wrong_currency = good.income(100)
    wrong_currency.income_updated.monthly_income.currency_code = "USD"
    no_timing = good.repaid(100)
    no_timing.repayment.timing = pb.REPAYMENT_TIMING_UNSPECIFIED
    too_late = good.past_due(5000)
    request = pb.PublishEventsRequest(
        batch=batch(
            missing_ids, negative, empty, no_time, no_sequence, wrong_currency, no_timing, too_late
        )
    )
    error = refused(monitoring.PublishEvents, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    assert set(found) == {
        "batch.events[0].event_id",
        "batch.events[0].account_id",
        "batch.events[1].line_drawn.amount.minor_units",
        "batch.events[2].kind",
        "batch.events[3].occurred_at",
        "batch.events[4].sequence",
        "batch.events[5].income_updated.monthly_income.currency_code",
        "batch.events[6].repayment.timing",
        "batch.events[7].days_past_due_updated.days_past_due",
    }
    assert found["batch.events[1].line_drawn.amount.minor_units"] == "must be positive"
    assert "account_opened" in found["batch.events[2].kind"]


@pytest.mark.parametrize(
    ("call", "request_", "field"),
    [
        ("PublishEvents", pb.PublishEventsRequest(), "batch.events"),
        ("ListAlerts", pb.ListAlertsRequest(page_token="abc"), "page_token"),
        ("ListAlerts", pb.ListAlertsRequest(page_size=-1), "page_size"),
        (
            "ListAlerts",
            pb.ListAlertsRequest(filter=pb.AlertFilter(severities=[9])),
            "filter.severities[0]",
        ),
        ("GetAccountRisk", pb.GetAccountRiskRequest(), "account_id"),
        ("GetAccountRisk", pb.GetAccountRiskRequest(account_id="a", locale="fr"), "locale"),
    ],
)
def test_bad_requests_name_the_field(monitoring, call, request_, field):
    error = refused(getattr(monitoring, call), request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(error)


def test_a_bad_cursor_ends_the_watch_with_invalid_argument(monitoring):
    stream = monitoring.WatchAlerts(pb.WatchAlertsRequest(after_cursor="-1"), timeout=10)
    with pytest.raises(grpc.RpcError) as raised:
        next(stream)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_unknown_account_has_no_risk(monitoring):
    error = refused(monitoring.GetAccountRisk, pb.GetAccountRiskRequest(account_id="nobody"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_alerts_are_listed_newest_first_in_pages_and_filtered(monitoring):
    customers = [Customer(f"acct-page-{i}") for i in range(3)]
    for customer in customers:
        publish(monitoring, customer.opened(), customer.advance(days=35).past_due(31))
    wait_until_rescored(monitoring)
    listed, token = [], ""
    while True:
        page = monitoring.ListAlerts(pb.ListAlertsRequest(page_size=4, page_token=token))
        listed.extend(page.alerts)
        token = page.next_page_token
        if not token:
            break
    assert len(listed) == 9  # two thresholds and one rescoring each
    assert [int(a.cursor) for a in listed] == sorted((int(a.cursor) for a in listed), reverse=True)
    assert alert_types(monitoring, account_id="acct-page-1") == [
        "behaviour_rescored",
        "days_past_due_30",
        "days_past_due_1",
    ]
    assert (
        alert_types(monitoring, severities=[pb.ALERT_SEVERITY_MEDIUM]) == ["days_past_due_30"] * 3
    )
    assert alert_types(monitoring, types=["days_past_due_1"]) == ["days_past_due_1"] * 3


def test_ingestion_and_signals_are_counted_in_metrics(monitoring):
    from prometheus_client import REGISTRY

    def sample(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        sample("creditline_monitoring_events_total", outcome="applied"),
        sample("creditline_monitoring_events_total", outcome="duplicate"),
        sample("creditline_monitoring_signals_total", type="days_past_due_1", severity="low"),
    )
    henry = Customer("acct-henry")
    events = [henry.opened(), henry.advance(days=31).missed()]
    publish(monitoring, *events)
    publish(monitoring, *events)
    after = (
        sample("creditline_monitoring_events_total", outcome="applied"),
        sample("creditline_monitoring_events_total", outcome="duplicate"),
        sample("creditline_monitoring_signals_total", type="days_past_due_1", severity="low"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2, 1]
