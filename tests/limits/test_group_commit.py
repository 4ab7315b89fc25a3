"""Group commit of draws through a real server: calls that pile up behind a busy transaction
are committed together, each answered with its own outcome, and exactly once by request_id."""

import threading
import time
from concurrent import futures

import grpc
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from creditline.limits.v1 import limits_service_pb2 as pb
from services.common.database import create_engine, transaction
from services.limits.store import accounts
from tests.limits.test_service import cny, draw, open_account, rid


def group_sizes() -> tuple[float, float]:
    """How many groups were committed, and how many calls they held, so far."""
    count = REGISTRY.get_sample_value("creditline_limits_draw_group_size_count") or 0.0
    total = REGISTRY.get_sample_value("creditline_limits_draw_group_size_sum") or 0.0
    return count, total


def moves_of(limits):
    """The server's group commit of draws and repayments."""
    return limits.server.bindings[0].servicer.app._moves


def held_up(limits, database_url: str, account_ids: list[str], calls: list):
    """Runs `calls` at once while another transaction holds the database (SQLite's write lock,
    the accounts' row locks on PostgreSQL), so that they pile up behind the first groups; lets
    go once every call has reached the group commit, and returns each one's answer or its
    RpcError."""
    engine = create_engine(database_url)
    pool = futures.ThreadPoolExecutor(len(calls))
    try:
        with transaction(engine) as connection:
            connection.execute(
                select(accounts.c.account_id)
                .where(accounts.c.account_id.in_(account_ids))
                .with_for_update()
            )
            pending = [pool.submit(_outcome, call) for call in calls]
            deadline = time.monotonic() + 30
            while moves_of(limits).unanswered < len(calls):
                assert time.monotonic() < deadline, "the calls never reached the server"
                time.sleep(0.02)
        return [p.result(timeout=30) for p in pending]
    finally:
        pool.shutdown()
        engine.dispose()


def _outcome(call):
    try:
        return call()
    except grpc.RpcError as error:
        return error


@pytest.fixture
def roomy_limits(start_limits, scoring):
    """A limits server with threads enough for every call of these tests at once."""
    return start_limits(scoring.port, max_workers=24, max_streams=2)


def test_draws_held_up_together_commit_each_with_its_own_outcome(roomy_limits, database_url):
    limits = roomy_limits
    first = open_account(limits).account.account_id  # 5,000 yuan each
    second = open_account(limits).account.account_id
    frozen = open_account(limits).account.account_id
    limits.FreezeAccount(
        pb.FreezeAccountRequest(request_id=rid(), account_id=frozen, reason="fraud check"),
        timeout=5,
    )
    retried = rid()
    calls = [
        lambda: draw(limits, first, 100),
        lambda: draw(limits, first, 200),
        lambda: draw(limits, first, 300),
        lambda: draw(limits, second, 400, request_id=retried),
        lambda: draw(limits, second, 400, request_id=retried),  # the same call, retried
        lambda: draw(limits, frozen, 100),  # refused: the line is frozen
        lambda: draw(limits, second, 5_001),  # refused: more than the line
        lambda: draw(limits, second, 50, purpose="securities"),  # refused: the purpose
        lambda: limits.Repay(
            pb.RepayRequest(request_id=rid(), account_id=first, amount=cny(100)), timeout=10
        ),
        lambda: draw(limits, second, 500),
    ]
    before = group_sizes()

    outcomes = held_up(limits, database_url, [first, second, frozen], calls)

    refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert [o.code() for o in refused] == [grpc.StatusCode.FAILED_PRECONDITION] * 3
    assert "frozen" in refused[0].details() and "securities" in refused[2].details()
    assert outcomes[3] == outcomes[4]  # answered once, from the record
    count, total = (after - earlier for after, earlier in zip(group_sizes(), before, strict=True))
    assert total == len(calls) and count < total, "some calls were committed together"

    def drawn(account_id: str) -> int:
        account = limits.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5)
        return account.account.drawn.minor_units

    assert drawn(first) == 100_00 + 200_00 + 300_00 - 100_00
    assert drawn(second) == 400_00 + 500_00
    assert drawn(frozen) == 0
    # Every answer stands on a retry; nothing is drawn twice.
    assert draw(limits, second, 400, request_id=retried) == outcomes[3]
    assert drawn(second) == 400_00 + 500_00


def test_a_group_on_one_account_never_overdraws_and_retries_are_answered_from_the_record(
    roomy_limits, database_url
):
    limits = roomy_limits
    account_id = open_account(limits).account.account_id  # 5,000 yuan
    ids = [rid() for _ in range(12)]
    calls = [lambda i=i: draw(limits, account_id, 450, request_id=ids[i]) for i in range(12)]

    outcomes = held_up(limits, database_url, [account_id], calls)

    granted = [o for o in outcomes if not isinstance(o, grpc.RpcError)]
    refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert len(granted) == 11 and len(refused) == 1  # 11 x 450 fits in 5,000; a 12th does not
    assert refused[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert sorted(g.account.drawn.minor_units for g in granted) == [
        450_00 * n for n in range(1, 12)
    ]
    retried = [
        _outcome(lambda i=i: draw(limits, account_id, 450, request_id=ids[i])) for i in range(12)
    ]
    for again, first in zip(retried, outcomes, strict=True):
        if isinstance(first, grpc.RpcError):
            # A refusal stores no answer: the retry is decided anew, and refused again.
            assert isinstance(again, grpc.RpcError)
            assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
        else:
            assert again == first
    current = limits.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5)
    assert current.account.drawn.minor_units == 11 * 450_00


def test_concurrent_draws_across_accounts_commit_together(roomy_limits):
    limits = roomy_limits
    account_ids = [open_account(limits).account.account_id for _ in range(6)]
    errors: list[BaseException] = []

    def client(account_id: str) -> None:
        try:
            for _ in range(20):
                draw(limits, account_id, 10)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(a,)) for a in account_ids for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for account_id in account_ids:
        account = limits.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5)
        assert account.account.drawn.minor_units == 2 * 20 * 10_00
