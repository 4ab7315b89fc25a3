"""Ingest and WatchAlerts: acknowledgements in order, flow control, resuming a watch from a
cursor with no gap and no repeat, the cap on open streams, rescoring in the background."""

import threading
import time

import grpc
import pytest

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from services.scoring.modelling.training import DEFAULT_VERSIONS
from tests.monitoring.events import Customer, batch, publish
from tests.servers import eventually

wait_until = eventually

BEHAVIOUR_VERSION = DEFAULT_VERSIONS["behaviour"]


def wait_until_rescored(monitoring) -> None:
    """Waits until no account waits for rescoring (read from the store: no RPC tells), so each
    account scored has raised its `behaviour_rescored` alert, and until those alerts have
    their numbers (given just after rescoring's commit), so a test's listing is settled."""

    def rescored() -> bool:
        with monitoring.server.bindings[0].servicer.store.read() as uow:
            return not uow.accounts_due_for_rescoring(1) and not uow.any_unnumbered_alerts()

    wait_until(rescored)


def test_ingest_acknowledges_each_batch_in_order(monitoring):
    customers = [Customer(f"acct-stream-{i}") for i in range(5)]
    batches = [
        batch(c.opened(), c.advance(days=31).missed(), batch_id=f"batch-{i}")
        for i, c in enumerate(customers)
    ]
    acks = [r.ack for r in monitoring.Ingest(pb.IngestRequest(batch=b) for b in batches)]
    assert [a.batch_id for a in acks] == [f"batch-{i}" for i in range(5)]
    assert all(a.applied == 2 and a.signals_raised == 1 for a in acks)


def test_a_batch_refused_mid_stream_is_refused_after_the_batches_before_it_are_applied(monitoring):
    """The next batch is read and checked while one is applied: its refusal still comes in
    its turn, after every batch before it is acknowledged, and nothing after it applies."""
    from services.common.errors import violations_of

    customer = Customer("acct-refused-mid-stream")
    batches = [
        batch(customer.opened(), batch_id="first"),
        batch(customer.inquiry(), batch_id="second"),
        batch(customer.inquiry(), batch_id="bad"),
        batch(customer.inquiry(), batch_id="never"),
    ]
    batches[2].events[0].event_id = ""
    call = monitoring.Ingest((pb.IngestRequest(batch=b) for b in batches), timeout=30)
    acks = []
    with pytest.raises(grpc.RpcError) as raised:
        for response in call:
            acks.append(response.ack)
    assert [(a.batch_id, a.applied) for a in acks] == [("first", 1), ("second", 1)]
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in violations_of(raised.value)] == ["batch.events[0].event_id"]
    risk = monitoring.GetAccountRisk(pb.GetAccountRiskRequest(account_id=customer.account_id))
    assert risk.risk.last_sequence == 2


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # transport, not storage
def test_a_fast_producer_is_held_back_by_flow_control(monitoring):
    """The server reads the next batch only after acknowledging one, so a producer that never
    waits for acknowledgements stalls once the transport's windows are full."""
    produced = 0
    first_ack = threading.Event()
    customer = Customer("acct-flood")

    def requests():
        nonlocal produced
        yield pb.IngestRequest(batch=batch(customer.opened()))
        for _ in range(5_000):
            produced += 1
            events = [customer.advance(minutes=1).transaction(50) for _ in range(200)]
            yield pb.IngestRequest(batch=batch(*events))

    call = monitoring.Ingest(requests(), timeout=120)
    first = next(call)
    first_ack.set()
    assert first.ack.applied == 1
    # Read nothing more: the server blocks sending acks, stops reading; the producer stalls.
    stalled = wait_until(lambda: _stable(lambda: produced), timeout=60)
    # HTTP/2 windows grow with the measured bandwidth-delay product, up to a few megabytes
    # (about 950 batches of 200 events measured here), but not without bound.
    assert stalled < 2_500, f"{stalled} batches of 200 events were taken from the producer"
    call.cancel()


def _stable(read, settle: float = 1.0):
    before = read()
    time.sleep(settle)
    return before if read() == before and before > 0 else None


def watch(monitoring, **request_fields):
    """Starts a watch; returns the call and a list that fills with what arrives."""
    call = monitoring.WatchAlerts(pb.WatchAlertsRequest(**request_fields), timeout=120)
    received: list[pb.WatchAlertsResponse] = []

    def read():
        try:
            for item in call:
                received.append(item)
        except grpc.RpcError:
            pass

    threading.Thread(target=read, daemon=True).start()
    return call, received


def test_a_watch_resumes_from_its_cursor_with_no_gap_and_no_repeat(monitoring):
    customers = [Customer(f"acct-watch-{i}") for i in range(12)]
    call, received = watch(monitoring)
    time.sleep(0.3)  # the watch starts from now
    # Each customer raises two alerts: 1 day past due, then its first rescoring (awaited, so
    # that they arrive in this order).
    for c in customers[:6]:
        publish(monitoring, c.opened(), c.advance(days=31).missed())
        wait_until_rescored(monitoring)
    wait_until(lambda: len(received) >= 12)
    call.cancel()  # the client disconnects
    cursor = received[11].alert.cursor
    # Alerts raised while nobody watches are not lost.
    for c in customers[6:]:
        publish(monitoring, c.opened(), c.advance(days=31).missed())
        wait_until_rescored(monitoring)
    resumed_call, resumed = watch(monitoring, after_cursor=cursor)
    wait_until(lambda: len(resumed) >= 12)
    time.sleep(0.5)
    resumed_call.cancel()
    alerts = [(item.alert.account_id, item.alert.type) for item in received[:12] + resumed]
    assert alerts == [
        (c.account_id, kind)
        for c in customers
        for kind in ("days_past_due_1", "behaviour_rescored")
    ]


def test_a_watch_filters_and_heartbeats_carry_the_cursor_past_what_was_filtered(
    start_monitoring,
):
    monitoring = start_monitoring(servicer_options={"heartbeat_seconds": 0.2})
    call, received = watch(monitoring, filter=pb.AlertFilter(severities=[pb.ALERT_SEVERITY_MEDIUM]))
    time.sleep(0.3)
    low, medium = Customer("acct-low"), Customer("acct-medium")
    publish(monitoring, low.opened(), low.advance(days=31).missed())
    publish(monitoring, medium.opened(), medium.advance(days=60).past_due(30))
    wait_until(lambda: any(item.HasField("alert") for item in received))
    publish(monitoring, low.advance(days=1).inquiry())  # nothing to raise: heartbeats go on
    count = len(received)
    wait_until(lambda: len(received) >= count + 2)
    call.cancel()
    alerts = [item.alert for item in received if item.HasField("alert")]
    assert [(a.account_id, a.type) for a in alerts] == [
        ("acct-medium", "days_past_due_1"),
        ("acct-medium", "days_past_due_30"),
    ][1:]
    beats = [int(item.heartbeat_cursor) for item in received if item.HasField("heartbeat_cursor")]
    assert beats == sorted(beats) and beats[-1] >= int(alerts[-1].cursor)


def test_streams_beyond_the_cap_are_refused(start_monitoring):
    monitoring = start_monitoring(max_workers=3, max_streams=1)
    call, _ = watch(monitoring)
    time.sleep(0.3)
    second = monitoring.WatchAlerts(pb.WatchAlertsRequest(), timeout=10)
    with pytest.raises(grpc.RpcError) as raised:
        next(second)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Unary calls still find a thread.
    assert monitoring.ListAlerts(pb.ListAlertsRequest(), timeout=10).alerts == []
    call.cancel()


def test_a_profile_that_moves_is_rescored_and_a_worse_band_raises_a_signal(monitoring):
    gina = Customer("acct-gina")
    publish(monitoring, gina.opened(line=10_000), gina.drawn(1_000))
    request = pb.GetAccountRiskRequest(account_id="acct-gina", locale="zh-CN")
    first = wait_until(lambda: (r := monitoring.GetAccountRisk(request).risk).scored and r)
    assert first.risk_band != 0 and first.model_version == BEHAVIOUR_VERSION
    # Months of trouble: deep delinquency, many inquiries, a maxed-out line.
    events = [gina.advance(days=40).past_due(65), gina.drawn(8_900)]
    events += [gina.advance(days=1).inquiry() for _ in range(6)]
    publish(monitoring, *events)
    worse = wait_until(
        lambda: (
            "risk_band_worsened"
            in [a.type for a in monitoring.ListAlerts(pb.ListAlertsRequest()).alerts]
        )
    )
    assert worse
    wait_until_rescored(monitoring)
    risk = monitoring.GetAccountRisk(request).risk
    assert risk.risk_band > first.risk_band
    assert risk.reasons and all(r.text and r.feature for r in risk.reasons)
    assert "risk_band_worsened" in [s.type for s in risk.open_signals]
    # Every scoring was reported with its band: the first, then the worse one.
    rescorings = monitoring.ListAlerts(
        pb.ListAlertsRequest(filter=pb.AlertFilter(types=["behaviour_rescored"]))
    ).alerts
    assert [a.risk_band for a in rescorings] == [risk.risk_band, first.risk_band]
    assert rescorings[0].evidence["model_version"] == BEHAVIOUR_VERSION


def test_a_stopping_server_ends_watches_at_once_and_refuses_further_batches(start_monitoring):
    monitoring = start_monitoring(shutdown_grace_seconds=60)
    call, _ = watch(monitoring)
    customer = Customer("acct-stopping")
    batches = iter([batch(customer.opened()), batch(customer.inquiry())])
    second_sent = threading.Event()

    def requests():
        yield pb.IngestRequest(batch=next(batches))
        second_sent.wait(30)
        yield pb.IngestRequest(batch=next(batches))

    ingest = monitoring.Ingest(requests(), timeout=60)
    assert next(ingest).ack.applied == 1
    time.sleep(0.3)
    stopper = threading.Thread(target=monitoring.server.stop)
    stopper.start()
    # The watch ends cleanly long before the 60 s grace would have run out...
    wait_until(lambda: call.done(), timeout=30)
    assert call.code() == grpc.StatusCode.OK
    # ...and the ingest stream is told to send its batch elsewhere.
    second_sent.set()
    with pytest.raises(grpc.RpcError) as raised:
        next(ingest)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    stopper.join(30)
    assert not stopper.is_alive()
