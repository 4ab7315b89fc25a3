"""The monitoring server killed with SIGKILL in the middle of an Ingest stream, then restarted on
the same database: every acknowledged event is applied exactly once, and the producer resending
what was not acknowledged finds each event either applied or a duplicate, never counted twice.
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from creditline.monitoring.v1 import monitoring_service_pb2_grpc
from tests.monitoring.events import Customer, batch
from tests.servers import service_process

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
