"""The monitoring server killed with SIGKILL in the middle of an Ingest stream, then restarted on
the same database: every acknowledged event is applied exactly once, and the producer resending
what was not acknowledged finds each event either applied or a duplicate, never counted twice.
And alerts a crash left committed but unnumbered are numbered by the next replica to run.
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from creditline.monitoring.v1 import monitoring_service_pb2_grpc
from services.common.errors import Violations
from services.monitoring.converters import events_of
from services.monitoring.ingestion import ingest
from services.monitoring.rules import load_rules
from services.monitoring.store import MonitoringStore
from tests.monitoring.events import Customer, batch, publish
from tests.monitoring.test_replicas import _all_alerts, _watch_until_quiet
from tests.servers import eventually, service_process

ACCOUNTS = 20
BATCHES = 150  # more than are sent before the kill
KILL_AFTER_ACKNOWLEDGED = 25
DRAW_FEN = 100
LINE_YUAN = 1_000_000


@contextmanager
def monitoring_process(database_url: str, log: Path) -> Iterator[tuple]:
    """`python -m services.monitoring` on `database_url`, serving; yields a stub and the
    process."""
    settings = {
        "DATABASE_URL": database_url,
        "RULES_RELOAD_INTERVAL_SECONDS": "0",
        # Neither is running: signals wait in the outbox, rescoring waits for scoring.
        "LIMITS_TARGET": "127.0.0.1:1",
        "SCORING_TARGET": "127.0.0.1:1",
    }
    with (
        service_process("monitoring", settings, log) as (process, address),
        grpc.insecure_channel(address) as channel,
    ):
        yield monitoring_service_pb2_grpc.MonitoringServiceStub(channel), process


def test_acknowledged_events_survive_sigkill_exactly_once(database_url, tmp_path):
    customers = [Customer(f"acct-crash-{i}") for i in range(ACCOUNTS)]
    opened = batch(*(c.opened(line=LINE_YUAN) for c in customers), batch_id="opened")
    batches = [opened] + [
        batch(*(c.advance(hours=1).drawn(DRAW_FEN / 100) for c in customers), batch_id=f"b{i}")
        for i in range(BATCHES)
    ]
    acknowledged: list[str] = []
    killed = threading.Event()

    with monitoring_process(database_url, tmp_path / "first.log") as (stub, process):
        call = stub.Ingest((pb.IngestRequest(batch=b) for b in batches), timeout=120)
        try:
            for response in call:
                assert response.ack.applied == len(customers)
                acknowledged.append(response.ack.batch_id)
                if len(acknowledged) == KILL_AFTER_ACKNOWLEDGED:
                    process.send_signal(signal.SIGKILL)
                    killed.set()
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert killed.is_set() and len(acknowledged) >= KILL_AFTER_ACKNOWLEDGED

    with monitoring_process(database_url, tmp_path / "second.log") as (stub, _):
        # Every acknowledged event is there.
        for customer in customers:
            risk = _risk(stub, customer.account_id)
            assert risk.last_sequence >= len(acknowledged)
        # The producer resends everything after its last acknowledgement.
        outcomes = set()
        for resent in batches[len(acknowledged) :]:
            ack = stub.PublishEvents(pb.PublishEventsRequest(batch=resent), timeout=30).ack
            outcomes.update(r.outcome for r in ack.results)
        assert outcomes <= {pb.EVENT_OUTCOME_APPLIED, pb.EVENT_OUTCOME_DUPLICATE}
        for customer in customers:
            risk = _risk(stub, customer.account_id)
            assert risk.last_sequence == 1 + BATCHES
            balance = round(risk.profile["utilisation"] * LINE_YUAN * 100)
            assert balance == BATCHES * DRAW_FEN  # each draw counted once


def _risk(stub, account_id: str) -> pb.AccountRisk:
    request = pb.GetAccountRiskRequest(account_id=account_id)
    return stub.GetAccountRisk(request, timeout=10).risk


def test_alerts_a_crash_left_unnumbered_are_numbered_by_the_next_replica(
    start_monitoring, database_url
):
    """On PostgreSQL a batch commits its alerts unnumbered and numbers them just after, in a
    transaction of its own. A crash in between leaves them committed but invisible: the next
    replica to run numbers them (its signal delivery does, without any new event), in the
    order they were raised, ahead of the alerts raised after them, with no gap."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite numbers a batch's alerts in the batch's own transaction")
    early = [Customer(f"acct-unnumbered-{i}") for i in range(3)]
    lives = [event for c in early for event in (c.opened(), c.advance(days=31).missed())]
    store = MonitoringStore.open(database_url)
    try:
        # The batch as the Ingestor commits it, and then the process dies before numbering.
        with store.unit_of_work() as uow:
            raised = ingest(uow, events_of(batch(*lives), "CNY", Violations()), load_rules(),
                            datetime.now(UTC)).raised  # fmt: skip
        with store.read() as uow:
            assert uow.any_unnumbered_alerts() and uow.last_alert_number() == 0  # seen by none
    finally:
        store.close()
    assert len(raised) >= len(early)

    monitoring = start_monitoring()
    eventually(lambda: len(_all_alerts(monitoring)) >= len(raised), "the alerts numbered")
    later = Customer("acct-raised-after")
    publish(monitoring, later.opened(), later.advance(days=31).missed())
    eventually(
        lambda: later.account_id in {a.account_id for a in _all_alerts(monitoring)},
        "the later alert numbered",
    )

    watched = _watch_until_quiet(monitoring, "0")
    assert [int(a.cursor) for a in watched] == list(range(1, len(watched) + 1))
    assert [a.account_id for a in watched[: len(raised)]] == [r.account_id for r in raised]
    # After them: the later account's alert (and rescoring's, of every account).
    assert later.account_id in {a.account_id for a in watched[len(raised) :]}
