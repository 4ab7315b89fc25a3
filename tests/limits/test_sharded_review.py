"""Review runs split into shards that several servers work at once, a server killed mid-run,
and the policy simulation paged and held to the caller's deadline."""

import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from creditline.limits.v1 import limits_service_pb2 as pb
from creditline.limits.v1 import limits_service_pb2_grpc
from services.common.errors import error_info_of, violations_of
from services.limits import application
from services.limits.ledger import Line
from services.limits.policy import DEFAULT_POLICY
from services.limits.records import Account
from services.limits.store import LimitsStore
from tests.limits.test_book import book, lines
from tests.servers import eventually, service_process

SHARDS = 4


def review_events(stub, account_id: str) -> list[pb.LimitEvent]:
    events = stub.ListLimitEvents(pb.ListLimitEventsRequest(account_id=account_id), timeout=10)
    return [e for e in events.events if e.actor.kind == pb.ACTOR_KIND_REVIEW]


def outcomes(progress: pb.RunReviewResponse) -> tuple[int, int, int, int]:
    return progress.accounts_reviewed, progress.increased, progress.reduced, progress.unchanged


def test_two_servers_review_one_sharded_run_as_one_server_does(
    start_limits, scoring, clock, monkeypatch
):
    monkeypatch.setattr(application, "REVIEW_PAGE", 2)
    first = start_limits(scoring.port)
    second = start_limits(scoring.port)
    ids = book(first, clock, fresh=8, stale=3, plain=3)
    # What one server decides, without applying it: the plan the two must carry out.
    alone = list(first.RunReview(pb.RunReviewRequest(request_id="plan", dry_run=True), timeout=60))

    request = pb.RunReviewRequest(request_id="shared", shards=SHARDS)
    with ThreadPoolExecutor(max_workers=2) as pool:
        streams = [
            pool.submit(lambda s=s: list(s.RunReview(request, timeout=60))) for s in (first, second)
        ]
        finals = [stream.result()[-1] for stream in streams]

    assert all(final.done for final in finals)
    assert [outcomes(final) for final in finals] == [outcomes(alone[-1])] * 2
    assert outcomes(alone[-1]) == (14, 8, 0, 6)
    assert lines(first, ids) == [700_000] * 8 + [500_000] * 6  # as test_book's one server
    for account_id in ids:  # each reviewed once, whichever server took its shard
        assert len(review_events(second, account_id)) == 1, account_id
    # Called again, the run is done and applies nothing twice.
    again = list(second.RunReview(request, timeout=30))
    assert again[-1].done and again[-1].accounts_reviewed == 14
    assert lines(second, ids) == [700_000] * 8 + [500_000] * 6


def test_a_resumed_run_keeps_its_shards_and_the_count_is_bounded(limits, clock):
    book(limits, clock, fresh=1, stale=0, plain=1)
    done = list(limits.RunReview(pb.RunReviewRequest(request_id="r", shards=3), timeout=30))
    assert done[-1].done and done[-1].accounts_reviewed == 2
    with pytest.raises(grpc.RpcError) as other:
        list(limits.RunReview(pb.RunReviewRequest(request_id="r", shards=5), timeout=30))
    assert other.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as too_many:
        list(limits.RunReview(pb.RunReviewRequest(request_id="s", shards=257), timeout=30))
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in violations_of(too_many.value)] == ["shards"]


# -- a server killed mid-run ----------------------------------------------------------------

BOOK = 240


def seed_due_book(database_url: str, accounts: int) -> list[str]:
    """Lines opened two years ago, due for review, with no reported behaviour (a review keeps
    them): written straight to the store, as a migrated book would be."""
    opened = datetime.now(UTC) - timedelta(days=730)
    store = LimitsStore.open(database_url)
    ids = [f"acct-{i:05d}" for i in range(accounts)]
    try:
        with store.unit_of_work() as uow:
            for i, account_id in enumerate(ids):
                uow.insert_account(
                    Account(
                        account_id=account_id,
                        customer_id=f"cust-{i}",
                        currency_code="CNY",
                        line=Line(credit_line=200_000),
                        opened_at=opened,
                        tier="standard",
                        next_review_at=opened + timedelta(days=365),
                    )
                )
    finally:
        store.close()
    return ids


def limits_settings(database_url: str, scoring_port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SCORING_TARGET": f"127.0.0.1:{scoring_port}",
        "POLICY_RELOAD_INTERVAL_SECONDS": "0",
        "REVIEW_SHARDS": str(SHARDS),
        "REVIEW_PAGE_SIZE": "3",
        "REVIEW_LEASE_SECONDS": "3",
        "REVIEW_POLL_SECONDS": "0.1",
    }


def test_a_server_killed_mid_run_leaves_its_shard_to_the_other_after_the_lease(
    database_url, scoring, tmp_path: Path
):
    ids = seed_due_book(database_url, BOOK)
    settings = limits_settings(database_url, scoring.port)
    request = pb.RunReviewRequest(request_id="killed")
    with (
        service_process("limits", settings, tmp_path / "first.log") as (first, first_address),
        service_process("limits", settings, tmp_path / "second.log") as (_, second_address),
        grpc.insecure_channel(first_address) as first_channel,
        grpc.insecure_channel(second_address) as second_channel,
    ):
        first_stub = limits_service_pb2_grpc.LimitsServiceStub(first_channel)
        second_stub = limits_service_pb2_grpc.LimitsServiceStub(second_channel)
        reviewed_before_kill = 0
        for progress in first_stub.RunReview(request, timeout=60):
            if progress.accounts_reviewed:  # a page committed: the worker is inside a shard
                reviewed_before_kill = progress.accounts_reviewed
                first.send_signal(signal.SIGKILL)
                break
        first.wait(30)
        assert 0 < reviewed_before_kill < BOOK, "the first server finished before the kill"

        # The second server takes the free shards at once, and the dead one's when its lease
        # runs out; its stream ends when every shard is done.
        progress = list(second_stub.RunReview(request, timeout=120))
        last = progress[-1]
        assert last.done and (last.accounts_reviewed, last.unchanged) == (BOOK, BOOK)
        reviewed = Counter(
            account_id for account_id in ids for _ in review_events(second_stub, account_id)
        )
        assert reviewed == Counter({account_id: 1 for account_id in ids})


# -- the simulation, paged and held to the deadline -------------------------------------------


def test_a_streamed_simulation_ends_with_what_the_unary_one_reports(limits, clock, monkeypatch):
    book(limits, clock, fresh=3, stale=1, plain=1)
    whole = limits.SimulatePolicy(
        pb.SimulatePolicyRequest(policy=DEFAULT_POLICY.read_text()), timeout=30
    )
    monkeypatch.setattr(application, "REVIEW_PAGE", 2)
    pages = list(
        limits.StreamSimulatePolicy(
            pb.StreamSimulatePolicyRequest(policy=DEFAULT_POLICY.read_text()), timeout=30
        )
    )
    assert [p.accounts_simulated for p in pages] == [2, 4, 5, 5]
    assert [bool(p.next_page_token) for p in pages] == [True, True, True, False]
    assert pages[-1].done and pages[-1].impact == whole

    # Resumed after the second page, it reports the rest, which adds up to the whole.
    rest = list(
        limits.StreamSimulatePolicy(
            pb.StreamSimulatePolicyRequest(
                policy=DEFAULT_POLICY.read_text(), page_token=pages[1].next_page_token
            ),
            timeout=30,
        )
    )
    (tier,), (before,), (after,) = whole.tiers, pages[1].impact.tiers, rest[-1].impact.tiers
    assert rest[-1].accounts_simulated == 1
    assert (before.accounts + after.accounts, before.rise + after.rise) == (
        tier.accounts,
        tier.rise,
    )


def test_a_simulation_stops_at_the_callers_deadline_and_resumes(limits, clock, monkeypatch):
    book(limits, clock, fresh=4, stale=0, plain=4)
    monkeypatch.setattr(application, "REVIEW_PAGE", 1)
    score_accounts = application.LimitsApplication._score_accounts
    pages_scored = []

    def slow_scoring(self, policy, accounts):
        time.sleep(0.25)
        pages_scored.append(len(accounts))
        return score_accounts(self, policy, accounts)

    monkeypatch.setattr(application.LimitsApplication, "_score_accounts", slow_scoring)
    policy = DEFAULT_POLICY.read_text()
    with pytest.raises(grpc.RpcError) as unary:
        limits.SimulatePolicy(pb.SimulatePolicyRequest(policy=policy), timeout=0.8)
    assert unary.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server's own answer, before the deadline: not a call cut off by the client.
    assert error_info_of(unary.value).reason == "SIMULATION_DEADLINE"
    scored = eventually(lambda: len(pages_scored) or None, "a page scored")
    time.sleep(0.6)
    assert len(pages_scored) == scored < 8  # nothing ran on past the deadline

    received = []
    with pytest.raises(grpc.RpcError) as streamed:
        for page in limits.StreamSimulatePolicy(
            pb.StreamSimulatePolicyRequest(policy=policy), timeout=0.8
        ):
            received.append(page)
    assert streamed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_info_of(streamed.value).reason == "SIMULATION_DEADLINE"
    assert received and not received[-1].done
    rest = list(
        limits.StreamSimulatePolicy(
            pb.StreamSimulatePolicyRequest(policy=policy, page_token=received[-1].next_page_token),
            timeout=30,
        )
    )
    assert received[-1].accounts_simulated + rest[-1].accounts_simulated == 8


def test_a_page_token_of_another_policy_is_invalid(limits, clock):
    book(limits, clock, fresh=0, stale=0, plain=2)
    with pytest.raises(grpc.RpcError) as raised:
        list(
            limits.StreamSimulatePolicy(
                pb.StreamSimulatePolicyRequest(policy=DEFAULT_POLICY.read_text(), page_token="??"),
                timeout=10,
            )
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in violations_of(raised.value)] == ["page_token"]
