"""GroupCommit: calls that wait together are done together, each answered with its own outcome."""

import threading

import pytest

from services.common.group_commit import GroupCommit


class Refused(Exception):
    pass


def test_waiting_calls_are_done_in_groups_each_with_its_own_result():
    groups: list[list[int]] = []
    leading, gate = threading.Event(), threading.Event()

    def commit_group(jobs: list[int]) -> list[int | BaseException]:
        if not leading.is_set():  # the first group holds the others up until they all wait
            leading.set()
            gate.wait(10)
        groups.append(jobs)
        return [Refused(job) if job % 5 == 0 else job * 10 for job in jobs]

    commit = GroupCommit(commit_group, max_group=4)
    results: dict[int, object] = {}

    def call(job: int) -> None:
        try:
            results[job] = commit.submit(job)
        except Refused as refused:
            results[job] = refused

    first = threading.Thread(target=call, args=(1,))
    first.start()
    assert leading.wait(10)  # the first call leads a group of its own
    others = [threading.Thread(target=call, args=(job,)) for job in range(2, 11)]
    for thread in others:
        thread.start()
    while commit.waiting < 9:
        threading.Event().wait(0.01)
    gate.set()
    for thread in [first, *others]:
        thread.join(10)

    assert sorted(job for group in groups for job in group) == list(range(1, 11))
    assert groups[0] == [1] and max(len(group) for group in groups) == 4
    for job in range(1, 11):
        if job % 5 == 0:
            assert isinstance(results[job], Refused) and results[job].args == (job,)
        else:
            assert results[job] == job * 10


def test_a_group_that_fails_fails_each_of_its_calls_and_no_other():
    def commit_group(jobs: list[str]) -> list[str | BaseException]:
        if "bad" in jobs:
            raise RuntimeError("the transaction failed")
        return [job.upper() for job in jobs]

    commit = GroupCommit(commit_group, max_group=8)
    with pytest.raises(RuntimeError):
        commit.submit("bad")
    assert commit.submit("good") == "GOOD"


def test_a_group_is_at_least_one_call():
    with pytest.raises(ValueError):
        GroupCommit(lambda jobs: jobs, max_group=0)


def test_with_two_leaders_every_call_is_answered_once_and_no_group_is_empty():
    groups: list[list[int]] = []
    lock = threading.Lock()

    def commit_group(jobs: list[int]) -> list[int | BaseException]:
        with lock:
            groups.append(jobs)
        threading.Event().wait(0.002)  # a commit takes a moment: calls pile up meanwhile
        return [job + 1 for job in jobs]

    commit = GroupCommit(commit_group, max_group=8, leaders=2)
    results: dict[int, int] = {}

    def call(first: int) -> None:
        for job in range(first, first + 50):
            results[job] = commit.submit(job)

    threads = [threading.Thread(target=call, args=(n * 1000,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert all(groups) and sorted(j for g in groups for j in g) == sorted(results)
    assert all(result == job + 1 for job, result in results.items()) and len(results) == 300
    assert commit.unanswered == 0
