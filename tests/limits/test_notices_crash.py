"""The notice stream across a SIGKILL of the limits server: a watch resumed from the last
cursor it received, on a restarted server over the same database, misses no notice and repeats
none, while decisions were being taken when the server died."""

import signal
import threading

import grpc

from creditline.limits.v1 import limits_service_pb2 as pb
from creditline.limits.v1 import limits_service_pb2_grpc
from tests.limits.test_crash import limits_process
from tests.limits.test_service import GOOD_APPLICANT, cny, features

KILL_AFTER_NOTICES = 25


def opening(customer: str) -> pb.OpenAccountRequest:
    return pb.OpenAccountRequest(
        request_id=f"open-{customer}",
        customer_id=customer,
        features=features(GOOD_APPLICANT),
        monthly_income=cny(20_000),
    )


def open_until_failure(address: str, opened: list[str], in_doubt: list[str]) -> None:
    """Opens lines back to back until a call is not answered (the server died)."""
    with grpc.insecure_channel(address) as channel:
        stub = limits_service_pb2_grpc.LimitsServiceStub(channel)
        for i in range(10_000):
            customer = f"crash-{i}"
            try:
                stub.OpenAccount(opening(customer), timeout=10)
            except grpc.RpcError:
                in_doubt.append(customer)
                return
            opened.append(customer)


def collect(stub, after: str, until, received: list[pb.Notice]) -> None:
    """Appends the notices after `after` until `until(notice)` holds or the stream breaks."""
    stream = stub.WatchNotices(pb.WatchNoticesRequest(after_cursor=after), timeout=60)
    try:
        for item in stream:
            if item.HasField("notice"):
                received.append(item.notice)
                if until(item.notice):
                    stream.cancel()
                    return
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            raise


def test_the_notice_stream_resumes_without_gap_or_repeat_after_sigkill(
    database_url, scoring, tmp_path
):
    log = tmp_path / "limits.log"
    opened: list[str] = []
    in_doubt: list[str] = []
    received: list[pb.Notice] = []
    with limits_process(database_url, scoring.port, log) as server:
        decider = threading.Thread(
            target=open_until_failure, args=(server.address, opened, in_doubt)
        )
        decider.start()
        # Killed while the lines are still being opened, after some notices were streamed.
        collect(server.stub, "0", lambda _: len(received) >= KILL_AFTER_NOTICES, received)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
        decider.join(60)
    assert len(received) == KILL_AFTER_NOTICES, f"see {log}"
    assert in_doubt, "the server died before the decisions stopped"

    with limits_process(database_url, scoring.port, log) as server:
        last = received[-1].cursor
        for customer in ("after-1", "after-2", "after-3"):
            server.stub.OpenAccount(opening(customer), timeout=10)
        opened += ["after-1", "after-2", "after-3"]
        account_of = {}
        for customer in opened:
            account_of[customer] = server.stub.OpenAccount(opening(customer), timeout=10)
        newest = account_of["after-3"].account.account_id
        collect(server.stub, last, lambda n: n.account_id == newest, received)
        everything: list[pb.Notice] = []
        collect(server.stub, "0", lambda n: n.account_id == newest, everything)

    # Resumed after the last cursor it had: the same notices, in the same order, as a watch
    # from the start; numbered without a gap.
    assert [n.notice_id for n in received] == [n.notice_id for n in everything]
    assert [int(n.cursor) for n in everything] == list(range(1, len(everything) + 1))
    # Exactly one notice per line opened and acknowledged; the call in flight at the kill has
    # one if it committed, none if it did not.
    told = [n.account_id for n in everything]
    assert len(told) == len(set(told))
    acknowledged = {account_of[c].account.account_id for c in opened}
    assert acknowledged <= set(told)
    assert len(set(told) - acknowledged) <= len(in_doubt)
