"""Monitoring's detection rules as data: what raises a warning or a positive signal, how
severe it is, how long it stays quiet afterwards, and which signals limits hears about.

A rules document is YAML (`default_rules.yaml` ships as the default), validated when loaded,
every problem named by its path; `RulesHolder` swaps in a changed file only when it validates.
"""

from enum import IntEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator

from creditline.type.v1 import signal_pb2
from services.common.documents import (
    DocumentError,
    ReloadingDocument,
    StrictModel,
    parse_document,
    read_document,
)

DEFAULT_RULES = Path(__file__).with_name("default_rules.yaml")

Share = Annotated[float, Field(gt=0, le=1)]
Days = Annotated[int, Field(gt=0, le=3650)]

# The one table of what limits hears each reported signal as, by kind; every
# `days_past_due_<days>` threshold is a DAYS_PAST_DUE signal (the days travel with it). A kind
# missing here cannot be reported: the rules refuse `report: true` for it.
REPORTED_TYPES: dict[str, signal_pb2.SignalType.ValueType] = {
    "days_past_due": signal_pb2.SIGNAL_TYPE_DAYS_PAST_DUE,
    "partial_payments": signal_pb2.SIGNAL_TYPE_PARTIAL_PAYMENTS,
    "multiple_lending": signal_pb2.SIGNAL_TYPE_MULTIPLE_LENDING,
    "utilisation_spike": signal_pb2.SIGNAL_TYPE_UTILISATION_SPIKE,
    "income_decline": signal_pb2.SIGNAL_TYPE_INCOME_DECLINE,
    "abnormal_transaction": signal_pb2.SIGNAL_TYPE_ABNORMAL_TRANSACTION,
    "risk_band_worsened": signal_pb2.SIGNAL_TYPE_RISK_BAND_WORSENED,
    "on_time_repayment": signal_pb2.SIGNAL_TYPE_ON_TIME_REPAYMENT,
    "delinquency_cured": signal_pb2.SIGNAL_TYPE_DELINQUENCY_CURED,
    "behaviour_rescored": signal_pb2.SIGNAL_TYPE_BEHAVIOUR_RESCORED,
}


def reported_type(kind: str) -> signal_pb2.SignalType.ValueType:
    """The type limits hears a signal of this kind as (unspecified: none, not reportable)."""
    if kind.startswith("days_past_due_"):
        kind = "days_past_due"
    return REPORTED_TYPES.get(kind, signal_pb2.SIGNAL_TYPE_UNSPECIFIED)


class Severity(IntEnum):
    info = 1
    low = 2
    medium = 3
    high = 4
    critical = 5


class _RulePart(StrictModel):
    """A part of the rules, where a severity may be given by its name."""

    @field_validator("severity", mode="before", check_fields=False)
    @classmethod
    def _severity_by_name(cls, value):
        if isinstance(value, str):
            try:
                return Severity[value]
            except KeyError:
                raise ValueError(f"one of {', '.join(s.name for s in Severity)}") from None
        return value


class DaysPastDueThreshold(_RulePart):
    days: int = Field(gt=0, le=3650)
    severity: Severity


class DaysPastDueRule(_RulePart):
    # Each threshold raises `days_past_due_<days>` once per delinquency episode.
    thresholds: list[DaysPastDueThreshold] = Field(min_length=1)

    @field_validator("thresholds")
    @classmethod
    def _ascending(cls, thresholds: list[DaysPastDueThreshold]) -> list[DaysPastDueThreshold]:
        days = [t.days for t in thresholds]
        if days != sorted(set(days)):
            raise ValueError("thresholds must be in ascending order of days, each once")
        return thresholds


class PartialPaymentsRule(_RulePart):
    consecutive: int = Field(gt=0)
    severity: Severity


class InquiryWindow(_RulePart):
    window_days: Days
    min_inquiries: int = Field(gt=0)
    severity: Severity


class MultipleLendingRule(_RulePart):
    windows: list[InquiryWindow] = Field(min_length=1)


class UtilisationRule(_RulePart):
    # Utilisation at or above this share of the line...
    at_least: Share
    # ...or up by this many points (as a share) within `window_days`.
    rise: Share
    window_days: Days
    severity: Severity


class IncomeDeclineRule(_RulePart):
    # Income down by at least this share against the highest income of the window.
    at_least: Share
    window_days: Days
    severity: Severity


class AbnormalTransactionRule(_RulePart):
    # A transaction whose robust z-score (median and MAD of the account's own history) is at
    # least this, once the account has `min_history` transactions.
    robust_z: float = Field(gt=0)
    min_history: int = Field(ge=3)
    history_size: int = Field(ge=3, le=1000)
    # Or at least `burst_draws` draws within `burst_hours`.
    burst_draws: int = Field(ge=2)
    burst_hours: float = Field(gt=0, le=24 * 30)
    severity: Severity

    @model_validator(mode="after")
    def _history_holds_the_minimum(self) -> Self:
        if self.min_history > self.history_size:
            raise ValueError("min_history is larger than history_size")
        return self


class RiskBandRule(_RulePart):
    # Bands worse by at least this many steps (A to C is 2) after a rescoring.
    min_steps: int = Field(ge=1, le=4)
    severity: Severity


class OnTimeRule(_RulePart):
    # Streak lengths worth an alert of their own (each on-time repayment is reported anyway).
    streak_milestones: list[int] = Field(default_factory=list)


class CuredRule(_RulePart):
    # A delinquency this deep or deeper, brought back to 0 days past due, raises a signal.
    min_days_past_due: int = Field(gt=0)


class Rescoring(_RulePart):
    # A profile moved materially, and is rescored, when a count feature changes or one of these
    # features moves by at least this much since its last score.
    numeric_change: dict[str, float]
    # Accounts scored in one BatchScore call.
    batch_size: int = Field(gt=0, le=10_000)


class SignalType(_RulePart):
    # Quiet period after a signal of this type on an account (by event time), on top of the
    # episode: one episode raises one signal.
    cool_off_days: float = Field(ge=0)
    # Whether limits receives it (an alert is raised either way).
    report: bool


class Rules(_RulePart):
    version: str = Field(min_length=1)
    days_past_due: DaysPastDueRule
    partial_payments: PartialPaymentsRule
    multiple_lending: MultipleLendingRule
    utilisation: UtilisationRule
    income_decline: IncomeDeclineRule
    abnormal_transaction: AbnormalTransactionRule
    risk_band: RiskBandRule
    on_time: OnTimeRule
    delinquency_cured: CuredRule
    rescoring: Rescoring
    signals: dict[str, SignalType]

    @model_validator(mode="after")
    def _every_signal_declared(self) -> Self:
        missing = sorted(set(self.signal_types()) - set(self.signals))
        if missing:
            raise ValueError(f"signals: no entry for {', '.join(missing)}")
        unknown = sorted(set(self.signals) - set(self.signal_types()))
        if unknown:
            raise ValueError(f"signals: no rule raises {', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _every_reported_signal_has_a_type(self) -> Self:
        unreportable = [
            f"signals.{kind}.report: limits has no signal type for {kind}"
            for kind, spec in self.signals.items()
            if spec.report and reported_type(kind) == signal_pb2.SIGNAL_TYPE_UNSPECIFIED
        ]
        if unreportable:
            raise ValueError("; ".join(unreportable))
        return self

    def signal_types(self) -> list[str]:
        """Every signal type these rules can raise."""
        return [
            *(f"days_past_due_{t.days}" for t in self.days_past_due.thresholds),
            "partial_payments",
            "multiple_lending",
            "utilisation_spike",
            "income_decline",
            "abnormal_transaction",
            "risk_band_worsened",
            "on_time_repayment",
            "on_time_streak",
            "delinquency_cured",
            "behaviour_rescored",
        ]


RulesError = DocumentError


def parse_rules(text: str, source: str = "rules") -> Rules:
    return parse_document(text, Rules, source, "rules")


def load_rules(path: Path = DEFAULT_RULES) -> Rules:
    return parse_rules(read_document(path), str(path))


class RulesHolder(ReloadingDocument[Rules]):
    """The rules in force, reloaded from their file when it changes and validates."""

    def __init__(self, path: Path = DEFAULT_RULES) -> None:
        super().__init__(path, load_rules, "rules")

    @property
    def rules(self) -> Rules:
        return self.current
