"""The limits server killed with SIGKILL in the middle of a stream of draws, then restarted on
the same database: every acknowledged draw is in the balance exactly once, and every draw that
was in flight, retried with its request_id, is applied at most once.
"""

import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import grpc

from creditline.limits.v1 import limits_service_pb2 as pb
from creditline.limits.v1 import limits_service_pb2_grpc
from creditline.type.v1 import money_pb2
from tests.limits.test_service import GOOD_APPLICANT, cny, features
from tests.servers import service_process

CLIENTS = 4
DRAWS_PER_CLIENT = 400  # far more than are made before the kill: the stream is cut mid-way
KILL_AFTER_ACKNOWLEDGED = 60


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen
    address: str
    stub: limits_service_pb2_grpc.LimitsServiceStub


@contextmanager
def limits_process(database_url: str, scoring_port: int, log: Path) -> Iterator[Server]:
    """`python -m services.limits` on `database_url`, serving, and a stub to call it."""
    settings = {
        "DATABASE_URL": database_url,
        "SCORING_TARGET": f"127.0.0.1:{scoring_port}",
        "POLICY_RELOAD_INTERVAL_SECONDS": "0",
    }
    with (
        service_process("limits", settings, log) as (process, address),
        grpc.insecure_channel(address) as channel,
    ):
        yield Server(process, address, limits_service_pb2_grpc.LimitsServiceStub(channel))


@dataclass
class Outcomes:
    """What the clients saw: answered draws, and draws sent that got no answer."""

    acknowledged: dict[str, tuple[pb.DrawRequest, pb.DrawResponse]] = field(default_factory=dict)
    in_doubt: dict[str, pb.DrawRequest] = field(default_factory=dict)
    failures: list[grpc.StatusCode] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    enough: threading.Event = field(default_factory=threading.Event)


def draw_request(account_id: str, client: int, i: int) -> pb.DrawRequest:
    return pb.DrawRequest(
        request_id=f"crash-draw-{client}-{i}",
        account_id=account_id,
        # 1 to 97 fen, so that no two neighbouring draws weigh the same.
        amount=money_pb2.Money(currency_code="CNY", minor_units=1 + (i * 13 + client * 7) % 97),
        purpose="consumption",
        loan_id=f"loan-{client}-{i}",
    )


def draw_until_failure(address: str, account_id: str, client: int, outcomes: Outcomes) -> None:
    """Draws back to back on a channel of its own; stops at the first call not answered."""
    with grpc.insecure_channel(address) as channel:
        stub = limits_service_pb2_grpc.LimitsServiceStub(channel)
        for i in range(DRAWS_PER_CLIENT):
            request = draw_request(account_id, client, i)
            try:
                response = stub.Draw(request, timeout=10)
            except grpc.RpcError as error:
                with outcomes.lock:
                    outcomes.in_doubt[request.request_id] = request
                    outcomes.failures.append(error.code())
                return
            with outcomes.lock:
                outcomes.acknowledged[request.request_id] = (request, response)
                if len(outcomes.acknowledged) >= KILL_AFTER_ACKNOWLEDGED:
                    outcomes.enough.set()


def subset_sums(amounts: list[int]) -> set[int]:
    return {sum(c) for r in range(len(amounts) + 1) for c in combinations(amounts, r)}


def drawn(stub, account_id: str) -> int:
    account = stub.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=10).account
    return account.drawn.minor_units


def test_acknowledged_draws_survive_sigkill_exactly_once(database_url, scoring, tmp_path):
    log = tmp_path / "limits.log"
    outcomes = Outcomes()
    with limits_process(database_url, scoring.port, log) as server:
        opened = server.stub.OpenAccount(
            pb.OpenAccountRequest(
                request_id="crash-open",
                customer_id="cust-crash",
                features=features(GOOD_APPLICANT),
                monthly_income=cny(20_000),
            ),
            timeout=10,
        )
        account_id = opened.account.account_id
        assert opened.account.available_credit.minor_units >= CLIENTS * DRAWS_PER_CLIENT * 97
        clients = [
            threading.Thread(
                target=draw_until_failure, args=(server.address, account_id, c, outcomes)
            )
            for c in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        killed = outcomes.enough.wait(timeout=120)
        # At a random point of a transaction, not just after an answer when the next draw has
        # barely begun: now and then a draw has committed and its answer dies with the process.
        time.sleep(random.uniform(0, 0.01))
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
        for client in clients:
            client.join(60)
        assert killed, f"only {len(outcomes.acknowledged)} draws were answered; see {log}"
        assert not any(client.is_alive() for client in clients)

    # Every client was cut off mid-stream, by the kill and not by an error of the service.
    assert len(outcomes.in_doubt) == CLIENTS
    assert set(outcomes.failures) <= {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }, outcomes.failures
    acknowledged_sum = sum(r.amount.minor_units for r, _ in outcomes.acknowledged.values())
    in_doubt_amounts = [r.amount.minor_units for r in outcomes.in_doubt.values()]

    with limits_process(database_url, scoring.port, log) as server:
        stub = server.stub
        # (a) Each acknowledged draw is in the balance once; a draw in flight may have committed
        # before its answer was lost, and is in it once or not at all.
        after_restart = drawn(stub, account_id)
        assert after_restart - acknowledged_sum in subset_sums(in_doubt_amounts), (
            after_restart,
            acknowledged_sum,
            in_doubt_amounts,
        )
        # Retrying an acknowledged draw returns its first answer and changes nothing.
        for request, response in outcomes.acknowledged.values():
            assert stub.Draw(request, timeout=10) == response
        assert drawn(stub, account_id) == after_restart

        # (b) Retrying each draw in flight with its request_id applies it at most once: its
        # stored answer if it had committed, a new one if it had not; a second retry agrees.
        for request in outcomes.in_doubt.values():
            first = stub.Draw(request, timeout=10)
            assert stub.Draw(request, timeout=10) == first
        in_doubt_sum = sum(in_doubt_amounts)
        assert drawn(stub, account_id) == acknowledged_sum + in_doubt_sum
