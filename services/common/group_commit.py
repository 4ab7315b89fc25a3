"""Group commit: calls that arrive while a transaction commits are done together in the next one.

No thread of its own: a caller that finds fewer than `leaders` groups being committed leads
one, made of every call waiting at that moment (up to `max_group`); the others wait for its
outcome, and one of them leads the next group. (More than one leader suits a database whose
transactions on different rows run side by side: PostgreSQL, not SQLite.) Each caller gets
its own result, or its own exception, and only once the group's transaction is over, so an
answer is never given before its commit.
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


@dataclass
class _Call(Generic[J, R]):
    job: J
    taken: bool = False  # into a group, which answers it
    done: bool = False
    result: R | None = None
    error: BaseException | None = None


class GroupCommit(Generic[J, R]):
    """Runs jobs through `commit_group`, which does a group of them in one transaction and
    returns, in their order, each one's result or the exception to raise to its caller."""

    def __init__(
        self,
        commit_group: Callable[[list[J]], Sequence[R | BaseException]],
        max_group: int,
        leaders: int = 1,
    ) -> None:
        if max_group < 1 or leaders < 1:
            raise ValueError(f"groups of {max_group} under {leaders} leaders: at least 1 each")
        self._commit_group = commit_group
        self.max_group = max_group
        self.leaders = leaders
        self._changed = threading.Condition()
        self._waiting: list[_Call[J, R]] = []
        self._leading = 0  # groups being committed
        self._unanswered = 0  # calls submitted and not yet answered

    @property
    def waiting(self) -> int:
        """Calls waiting for a group to take them."""
        with self._changed:
            return len(self._waiting)

    @property
    def unanswered(self) -> int:
        """Calls submitted and not answered yet: waiting, or in a group being committed."""
        with self._changed:
            return self._unanswered

    def submit(self, job: J) -> R:
        """The job's result once its group has committed; its exception raised here."""
        call: _Call[J, R] = _Call(job)
        with self._changed:
            self._waiting.append(call)
            self._unanswered += 1
        while True:
            with self._changed:
                while not call.done and (call.taken or self._leading >= self.leaders):
                    self._changed.wait()
                if call.done:
                    break
                self._leading += 1
                group = self._waiting[: self.max_group]
                del self._waiting[: self.max_group]
                for taken in group:
                    taken.taken = True
            self._lead(group)
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]  # set with done, error unset

    def _lead(self, group: list[_Call[J, R]]) -> None:
        try:
            outcomes: Sequence[R | BaseException] = self._commit_group([c.job for c in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"{len(outcomes)} outcomes for a group of {len(group)}")
        except BaseException as error:  # the group's transaction failed: so did every call
            outcomes = [error] * len(group)
        with self._changed:
            for call, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    call.error = outcome
                else:
                    call.result = outcome
                call.done = True
            self._unanswered -= len(group)
            self._leading -= 1
            self._changed.notify_all()
