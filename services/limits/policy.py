"""The credit policy as data: tiers, review, reward, requested increases, signal actions,
staged reopening and hardship, validated when loaded.

A policy is a YAML document (`default_policy.yaml` ships as the default). Loading checks every
field and the rules between them, and names each problem by its path; a policy that fails is
never used. `PolicyHolder` keeps the policy in force and swaps in a changed file only when the
new one validates.
"""

import functools
from datetime import time
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self
from zoneinfo import available_timezones

from pydantic import Field, field_validator, model_validator

from creditline.type.v1 import signal_pb2
from services.common.documents import (
    DocumentError,
    ReloadingDocument,
    StrictModel,
    parse_document,
    read_document,
)

DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")
BANDS = ("A", "B", "C", "D", "E")
DECLINED = "declined"

Fen = Annotated[int, Field(ge=0, description="Integer minor units (fen).")]
PositiveFen = Annotated[int, Field(gt=0, description="Integer minor units (fen).")]
Fraction = Annotated[float, Field(gt=0, le=1)]
Band = Literal["A", "B", "C", "D", "E"]

# The signal types of the shared contract (creditline.type.v1.SignalType), by the names the
# policy uses: SIGNAL_TYPE_DAYS_PAST_DUE is `days_past_due`.
SIGNAL_TYPES: dict[int, str] = {
    value: name.removeprefix("SIGNAL_TYPE_").lower()
    for name, value in signal_pb2.SignalType.items()
    if value != signal_pb2.SIGNAL_TYPE_UNSPECIFIED
}
# The ones that say something went wrong, which the policy may act on.
WARNING_SIGNALS = frozenset(SIGNAL_TYPES.values()) - {
    "on_time_repayment",
    "delinquency_cured",
    "behaviour_rescored",
}


class Severity(IntEnum):
    info = 1
    low = 2
    medium = 3
    high = 4
    critical = 5


class SignalAction(StrEnum):
    watchlist = "watchlist"  # no increases
    reduce = "reduce"  # to a fraction of the line, even below what is drawn
    freeze = "freeze"  # no draws
    close = "close"


class Tier(StrictModel):
    name: str = Field(min_length=1)
    initial_line: PositiveFen
    max_line: PositiveFen
    increase_step: PositiveFen
    min_months_on_book_for_increase: int = Field(ge=0)
    # The tier's price: the annual interest rate of its lines (at most 36%, the ceiling
    # Chinese courts enforce for private lending), in basis points on the account.
    annual_rate: float = Field(gt=0, le=0.36)

    @property
    def annual_rate_bp(self) -> int:
        return round(self.annual_rate * 10_000)

    @model_validator(mode="after")
    def _lines_in_order(self) -> Self:
        if self.initial_line > self.max_line:
            raise ValueError("initial_line is above max_line")
        return self


class Review(StrictModel):
    cadence_days: int = Field(gt=0)
    max_change_fraction: Fraction


class Reward(StrictModel):
    consecutive_on_time_repayments: int = Field(gt=0)
    min_months_on_book: int = Field(ge=0)


class RequestedIncrease(StrictModel):
    cool_off_days_after_decline: int = Field(ge=0)
    max_changes: int = Field(gt=0)
    period_days: int = Field(gt=0)


class AbilityToPay(StrictModel):
    # Every line granted or raised (first line, request, review, reward, reopening stage) is
    # fully drawn and repaid in equal monthly instalments at its tier's rate over
    # `assumed_term_months`: existing debt payments plus that instalment, over the monthly
    # income the customer declared, at most `max_debt_to_income`.
    max_debt_to_income: Fraction
    assumed_term_months: int = Field(gt=0)


class SignalRule(StrictModel):
    # A warning signal type of the contract (SIGNAL_TYPES), checked at load.
    signal: str = Field(min_length=1)
    min_severity: Severity = Severity.info
    # For `days_past_due` only, and required there: from how many days past due it applies.
    min_days_past_due: int | None = Field(None, gt=0)
    action: SignalAction
    # For `reduce`: the share of the current line that remains.
    line_fraction: Fraction | None = None

    @model_validator(mode="before")
    @classmethod
    def _severity_by_name(cls, data):
        if isinstance(data, dict) and isinstance(data.get("min_severity"), str):
            name = data["min_severity"]
            if name not in Severity.__members__:
                raise ValueError(f"min_severity must be one of {', '.join(Severity.__members__)}")
            data = {**data, "min_severity": Severity[name]}
        return data

    @model_validator(mode="after")
    def _known_signal(self) -> Self:
        if self.signal not in WARNING_SIGNALS:
            raise ValueError(
                f"signal {self.signal!r} is not a warning signal type; one of "
                + ", ".join(sorted(WARNING_SIGNALS))
            )
        if (self.signal == "days_past_due") != (self.min_days_past_due is not None):
            raise ValueError("min_days_past_due is required for days_past_due, and only there")
        return self

    @model_validator(mode="after")
    def _fraction_only_for_reduce(self) -> Self:
        if (self.action is SignalAction.reduce) != (self.line_fraction is not None):
            raise ValueError("line_fraction is required for reduce, and only for reduce")
        if self.line_fraction == 1:
            raise ValueError("a reduce with line_fraction 1 changes nothing")
        return self


class Draws(StrictModel):
    # No draw from this many days past due (1: while any payment is past due).
    stop_at_days_past_due: int = Field(gt=0)


class RiskState(StrictModel):
    # A behaviour profile describing a time older than this is no fresh score: a review keeps
    # or lowers the line, a requested increase or a reopening is declined.
    max_age_days: int = Field(gt=0)


class Watchlist(StrictModel):
    # The watchlist is left once no payment is past due and no warning signal came for this
    # many days.
    clean_period_days: int = Field(gt=0)


class Application(StrictModel):
    # A declined applicant may apply again after this many days.
    cool_off_days_after_decline: int = Field(ge=0)


class ReopeningEligibility(StrictModel):
    min_days_since_closure: int = Field(ge=0)
    max_days_since_last_on_time_repayment: int = Field(gt=0)
    worst_risk_band: Band


class ReopeningStage(StrictModel):
    stage: int = Field(ge=1)
    # Exactly one of: a fixed line, a share of the line before closure, the tier's line.
    line: PositiveFen | None = None
    former_line_fraction: Fraction | None = None
    tier_line: bool = False
    # On-time repayments at this stage before the next one; none for the last stage.
    advance_after_on_time_repayments: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind_of_line(self) -> Self:
        kinds = [self.line is not None, self.former_line_fraction is not None, self.tier_line]
        if sum(kinds) != 1:
            raise ValueError("set exactly one of line, former_line_fraction, tier_line")
        return self


class Reopening(StrictModel):
    eligibility: ReopeningEligibility
    stages: list[ReopeningStage] = Field(min_length=1)

    @model_validator(mode="after")
    def _stages_in_order(self) -> Self:
        if [s.stage for s in self.stages] != list(range(1, len(self.stages) + 1)):
            raise ValueError("stages must be numbered 1, 2, 3, ... in order")
        *earlier, last = self.stages
        if any(s.advance_after_on_time_repayments is None for s in earlier):
            raise ValueError("every stage but the last needs advance_after_on_time_repayments")
        if last.advance_after_on_time_repayments is not None:
            raise ValueError("the last stage has nowhere to advance to")
        return self


class Hardship(StrictModel):
    min_months_on_book: int = Field(ge=0)
    max_in_12_months: int = Field(ge=0)
    max_in_5_years: int = Field(ge=0)
    max_term_months: int = Field(gt=0)


class Notices(StrictModel):
    """When the customer must have been told of a decision, counted from the decision: each
    notice carries its due time, and the messaging backend delivers before it."""

    # Regulation-style: an adverse decision (a decline, a cut, a freeze, a closure) is told
    # within this many days (ECOA Regulation B gives 30).
    adverse_within_days: int = Field(default=30, ge=0, le=90)
    # Every other notice (an opening, an increase, a reopening stage).
    other_within_days: int = Field(default=30, ge=0, le=90)


class TreatmentAction(StrEnum):
    """What early collections does at a days-past-due bucket."""

    reminder = "reminder"
    call = "call"
    hardship_offer = "hardship_offer"  # an offer of EnrollHardship
    formal_notice = "formal_notice"
    agency_handoff = "agency_handoff"


class ContactChannel(StrEnum):
    push = "push"
    sms = "sms"
    phone = "phone"
    email = "email"
    letter = "letter"
    agency = "agency"


class Treatment(StrictModel):
    """What happens from `from_days` to `to_days` past due (no end: from then on), through
    which channel, at most every `every_days`."""

    from_days: int = Field(ge=1)
    to_days: int | None = Field(default=None, ge=1)
    action: TreatmentAction
    channel: ContactChannel
    every_days: int = Field(ge=1)


def is_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone this machine knows ("Asia/Shanghai"). Looked up
    in the list of zones, not by opening it: ZoneInfo("Asia") fails with an OSError."""
    return name in _time_zones()


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(available_timezones())


class QuietHours(StrictModel):
    """No contact from `start` to `end`, in the customer's local time (may span midnight)."""

    start: time
    end: time


class Collections(StrictModel):
    """Early collections: contact the borrower early, offer flexible repayment, and stop on a
    cure, a running hardship arrangement or an open appeal."""

    # Contacts of any channel in any 7 days, at most.
    contact_cap_per_week: int = Field(ge=1)
    quiet_hours: QuietHours
    # The customer's time zone when none is known for them (IANA name).
    default_time_zone: str
    # By days past due, from 1, contiguous, the last without an end.
    treatments: list[Treatment] = Field(min_length=1)

    @field_validator("default_time_zone")
    @classmethod
    def _known_time_zone(cls, name: str) -> str:
        if not is_time_zone(name):
            raise ValueError(f"{name!r} is no IANA time zone")
        return name

    @model_validator(mode="after")
    def _buckets_cover_every_day(self) -> Self:
        expected = 1
        for i, treatment in enumerate(self.treatments):
            if treatment.from_days != expected:
                raise ValueError(f"treatments.{i}.from_days: expected {expected}")
            last = i == len(self.treatments) - 1
            if treatment.to_days is None:
                if not last:
                    raise ValueError(f"treatments.{i}.to_days: only the last has no end")
                break
            if treatment.to_days < treatment.from_days:
                raise ValueError(f"treatments.{i}.to_days: before from_days")
            if last:
                raise ValueError(f"treatments.{i}.to_days: the last treatment has no end")
            expected = treatment.to_days + 1
        return self

    def treatment_at(self, days_past_due: int) -> Treatment | None:
        """The treatment of this many days past due (None when current)."""
        for treatment in self.treatments:
            if days_past_due >= treatment.from_days and (
                treatment.to_days is None or days_past_due <= treatment.to_days
            ):
                return treatment
        return None


class Policy(StrictModel):
    """One complete, validated version of the credit policy."""

    version: str = Field(min_length=1)
    currency_code: str = Field(pattern=r"^[A-Z]{3}$")
    # Best first: a tier lower in the list is a worse risk.
    tiers: list[Tier] = Field(min_length=1)
    # Each model's risk bands to a tier name or "declined". A band means what its model's
    # holdout says it means, so each model has its own map: `acquisition` for the application
    # model (first lines), `account_management` for the behaviour model (everything after).
    acquisition: dict[Band, str]
    account_management: dict[Band, str]
    application: Application
    draws: Draws
    risk_state: RiskState
    watchlist: Watchlist
    ability_to_pay: AbilityToPay
    review: Review
    reward: Reward
    requested_increase: RequestedIncrease
    prohibited_purposes: list[str] = []
    signal_actions: list[SignalRule] = []
    reopening: Reopening
    hardship: Hardship
    # A policy written before notices were delivered takes the defaults.
    notices: Notices = Field(default_factory=Notices)
    # No early collections where a policy has none.
    collections: Collections | None = None

    @model_validator(mode="after")
    def _every_band_mapped_to_a_tier(self) -> Self:
        names = [tier.name for tier in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError("tier names must be unique")
        for strategy in ("acquisition", "account_management"):
            bands = getattr(self, strategy)
            missing = [band for band in BANDS if band not in bands]
            if missing:
                raise ValueError(f"{strategy}: bands {', '.join(missing)} have no tier")
            for band, tier in bands.items():
                if tier != DECLINED and tier not in names:
                    raise ValueError(
                        f"{strategy}.{band}: {tier!r} is no tier; one of "
                        f"{', '.join(names)} or {DECLINED}"
                    )
        return self

    def tier_named(self, name: str | None) -> Tier | None:
        """The tier of this name, or None (no such tier in this policy)."""
        return next((tier for tier in self.tiers if tier.name == name), None)

    def acquisition_tier(self, band: str) -> Tier | None:
        """The tier of a first line for an application model band (None: declined)."""
        return self.tier_named(self.acquisition.get(band))  # type: ignore[call-overload]

    def managed_tier(self, band: str) -> Tier | None:
        """The tier of a line on book for a behaviour model band (None: no line is raised or
        kept at this risk; a review lowers it)."""
        return self.tier_named(self.account_management.get(band))  # type: ignore[call-overload]

    def tier_rank(self, name: str | None) -> int:
        """A tier's place, best first (an unknown or no tier ranks below every tier)."""
        names = [tier.name for tier in self.tiers]
        return names.index(name) if name in names else len(names)

    def actions_for(
        self, signal: str, severity: Severity, days_past_due: int = 0
    ) -> list[SignalRule]:
        """The rules a signal of this type, severity and days past due triggers, strongest
        action last."""
        order = list(SignalAction)
        matching = [
            rule
            for rule in self.signal_actions
            if rule.signal == signal
            and severity >= rule.min_severity
            and days_past_due >= (rule.min_days_past_due or 0)
        ]
        return sorted(matching, key=lambda rule: order.index(rule.action))


# The policy's own names for the shared document machinery.
PolicyError = DocumentError


def parse_policy(text: str, source: str = "policy") -> Policy:
    return parse_document(text, Policy, source, "policy")


def load_policy(path: Path = DEFAULT_POLICY) -> Policy:
    return parse_policy(read_document(path), str(path))


class PolicyHolder(ReloadingDocument[Policy]):
    """The policy in force, reloaded from its file when the file changes and validates."""

    def __init__(self, path: Path = DEFAULT_POLICY) -> None:
        super().__init__(path, load_policy, "policy")

    @property
    def policy(self) -> Policy:
        return self.current
