"""The money side of a credit line: the granted line, the customer's own cap, what is drawn,
and the credit available. Pure and transport-free; the store applies these atomically.

Invariants, for every sequence of operations: nothing drawn is negative, no draw takes the drawn
total above the line (a reduction may leave it above: the line is then over, with nothing
available until repayments bring it under), no draw while draws are stopped, and the available
credit is never negative.
"""

from dataclasses import dataclass, replace
from enum import StrEnum

from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument


class AccountStatus(StrEnum):
    active = "active"
    watchlist = "watchlist"  # no increases; draws allowed
    frozen = "frozen"  # no draws
    closed = "closed"
    declined = "declined"


DRAWS_ALLOWED = frozenset({AccountStatus.active, AccountStatus.watchlist})


@dataclass(frozen=True)
class Line:
    """An account's line in integer minor units (fen)."""

    credit_line: int
    drawn: int = 0
    status: AccountStatus = AccountStatus.active
    # The customer's own lower cap (SetPreferences), or None.
    customer_cap: int | None = None
    # Draws pause while a hardship arrangement runs.
    in_hardship: bool = False
    # Draws stop while a payment is past due beyond the policy's limit (set from the account's
    # risk state whenever the account is read: `decisions.current`).
    draws_stopped: bool = False

    @property
    def usable_line(self) -> int:
        """The line the customer may use: the granted line, or their own lower cap."""
        if self.customer_cap is None:
            return self.credit_line
        return min(self.credit_line, self.customer_cap)

    @property
    def available_credit(self) -> int:
        if self.status not in DRAWS_ALLOWED or self.in_hardship or self.draws_stopped:
            return 0
        return max(0, self.usable_line - self.drawn)


def draw(line: Line, amount: int) -> Line:
    """Occupies `amount` of the available credit, or refuses with the reason."""
    _require_positive(amount)
    if line.status not in DRAWS_ALLOWED:
        raise FailedPrecondition(
            f"the line is {line.status}: no draws", reason=f"LINE_{line.status.upper()}"
        )
    if line.in_hardship:
        raise FailedPrecondition(
            "draws are paused during a hardship arrangement", reason="LINE_IN_HARDSHIP"
        )
    if line.draws_stopped:
        raise FailedPrecondition(
            "a payment is past due: no draws until it is repaid", reason="PAST_DUE"
        )
    if amount > line.available_credit:
        raise FailedPrecondition(
            f"the draw exceeds the available credit of {line.available_credit}",
            reason="INSUFFICIENT_CREDIT",
            metadata={"available_credit": str(line.available_credit)},
        )
    return replace(line, drawn=line.drawn + amount)


def repay(line: Line, amount: int) -> Line:
    """Releases `amount` of what is drawn; repaying more than is owed is refused."""
    _require_positive(amount)
    if amount > line.drawn:
        raise FailedPrecondition(
            f"the repayment exceeds the outstanding {line.drawn}",
            reason="REPAYMENT_EXCEEDS_OUTSTANDING",
            metadata={"drawn": str(line.drawn)},
        )
    return replace(line, drawn=line.drawn - amount)


def change_line(line: Line, new_line: int) -> Line:
    """Sets the granted line, below what is drawn if so decided (the line is then over)."""
    if new_line < 0:
        raise ValueError("a credit line cannot be negative")
    return replace(line, credit_line=new_line)


def set_status(line: Line, status: AccountStatus) -> Line:
    return replace(line, status=status)


def _require_positive(amount: int) -> None:
    if amount <= 0:
        raise InvalidArgument([FieldViolation("amount.minor_units", "must be positive")])
