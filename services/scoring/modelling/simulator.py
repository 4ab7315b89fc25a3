"""Simulated consumer credit-line accounts: the behaviour model's data and event histories.

No public behavioural (repayment-history) data set ships offline, so the behaviour model learns
from this seeded simulator, and its model card says so. The simulation runs month by month;
`account_events` then renders each account as the `RepaymentEvent`s a servicing system sends
monitoring, and the training features are what monitoring's own profile code
(`services/monitoring/profile.py`) computes from those events. Training and serving share one
definition of every feature, on event time, with unknown values left missing.

How an account behaves (time runs in 30-day months; day d of month m is simulation day 30m+d):

- Each account opens at its own month (early enough to have 3+ months on book at the training
  observation point) with a line sized from its income and a latent risk z ~ N(0, 1) (higher
  is riskier; riskier customers also earn a little less and get smaller lines).
- Income: a monthly income with small noise; income shocks (job loss, illness) arrive at a rate
  that grows with z, cut income to 30-80% and recover by 5% of the gap a month. About one
  customer in six never declares an income: the lender does not know it (riskier ones a little
  more often), and their income features are missing.
- Stress = z + 3 x the income shortfall + a persistent AR(1) noise. Stress drives the rest.
- Each month a statement asks for the arrears plus a minimum instalment (10% of the balance,
  at least 100 yuan), due on the account's due day. The customer pays on time (some pay the
  whole balance), late but in full within 1-29 days, partially (20-80%), or not at all. The
  chance of not paying on time grows with stress, with the instalment's share of income and
  when the account is already in arrears (roll rates).
- Days past due: an unpaid instalment starts counting at its due date and keeps counting,
  month after month, until everything owed is paid; a late payment that cures within the month
  leaves its days late as the month's worst days past due.
- Draws: a line that is not past due may be drawn on; stressed customers draw more. The
  carried balance accrues 1.5% interest a month, so utilisation can exceed 100%. A clean year
  with high utilisation earns a 25% line increase at each anniversary.
- Credit inquiries at other lenders (多头借贷) arrive as a Poisson process whose rate grows
  steeply with stress, each on a day of its month.
- Outcome: default = 90 or more days past due at any month end within the 12 months after the
  observation point (training uses the end of month `months - 13`). Accounts already 90+ days
  past due at the observation point are in default already and are left out of the training
  population.

Money is recorded in integer fen. 20,000 accounts over 48 months take about a second to
simulate and give a default rate of about 8%; rendering them as events and folding those into
profiles takes about ten more (about 1.2 million events up to the observation point).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from operator import itemgetter

import numpy as np

from services.monitoring import profile
from services.monitoring.profile import Event, EventKind, Timing
from services.scoring.modelling.features import (
    FeatureSpec,
    RiskDirection,
    TrainingData,
    numeric_feature,
)

DAYS_PER_MONTH = 30
OUTCOME_MONTHS = 12
DEFAULT_DAYS_PAST_DUE = 90
MIN_MONTHS_ON_BOOK = 3

# Payment status of a month, as stored in AccountHistory.payment_status.
NOT_OPEN, NO_DUE, ON_TIME, LATE, PARTIAL, MISSED = range(6)

MONTHLY_INTEREST = 0.015
MIN_INSTALMENT_YUAN = 100.0
INSTALMENT_SHARE = 0.10

# Day 0 of the simulation, for the events' times.
SIMULATION_EPOCH = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
# The account's statement is one loan as monitoring sees it.
_LOAN_ID = "statement"
_LOAN_EVENTS = frozenset({EventKind.repayment, EventKind.payment_missed, EventKind.line_drawn})


def _time(day: int, hour: int) -> float:
    return SIMULATION_EPOCH + day * profile.DAY + hour * 3600


@dataclass(frozen=True)
class AccountHistory:
    """One account, month by month over the simulation's calendar (index = month).

    Months before `opened_month` are NOT_OPEN with zero amounts. Amounts are integer fen:
    `limit`, `balance` (month end), `drawn`, `due` (owed by this month's due day: arrears plus
    the instalment), `paid`, `income` (monthly). `days_late` is how late a full payment came.
    `days_past_due` is at month end; `worst_days_past_due` is the most reached in the month.
    `inquiry_days` holds the simulation day of each credit inquiry at another lender.
    `income_known` is whether the lender knows the income (the customer declared it and it is
    read every month); the rest never declared one.
    """

    account_id: int
    opened_month: int
    due_day: int
    latent_risk: float
    income_known: bool
    limit: np.ndarray
    balance: np.ndarray
    drawn: np.ndarray
    due: np.ndarray
    paid: np.ndarray
    payment_status: np.ndarray
    days_late: np.ndarray
    days_past_due: np.ndarray
    worst_days_past_due: np.ndarray
    income: np.ndarray
    inquiry_days: np.ndarray

    @property
    def months(self) -> int:
        return len(self.limit)


def _fen(yuan: np.ndarray) -> np.ndarray:
    return np.rint(yuan * 100).astype(np.int64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_accounts(n: int, seed: int, months: int = 48) -> list[AccountHistory]:
    """Simulate `n` accounts for `months` months; the same seed gives the same histories."""
    if months < MIN_MONTHS_ON_BOOK + OUTCOME_MONTHS + 1:
        raise ValueError(f"months must be at least {MIN_MONTHS_ON_BOOK + OUTCOME_MONTHS + 1}")
    rng = np.random.default_rng(seed)
    shape = (n, months)
    risk = rng.standard_normal(n)
    opened = rng.integers(0, months - OUTCOME_MONTHS - MIN_MONTHS_ON_BOOK + 1, n)
    due_day = rng.integers(1, 29, n)
    base_income = np.exp(rng.normal(np.log(8000.0), 0.5, n) - 0.15 * risk)
    shock_rate = 0.01 * np.exp(0.6 * risk)
    transactor = rng.random(n) < _sigmoid(-0.5 - risk)  # pays the whole balance when on time

    records = {
        name: np.zeros(shape) for name in ("limit", "balance", "drawn", "due", "paid", "income")
    }
    status = np.full(shape, NOT_OPEN, dtype=np.int8)
    days_late = np.zeros(shape, dtype=np.int16)
    dpd = np.zeros(shape, dtype=np.int16)
    worst_dpd = np.zeros(shape, dtype=np.int16)
    inquiry_accounts, inquiry_days = [], []

    limit = np.round(base_income * rng.uniform(0.5, 2.0, n) * np.exp(-0.3 * risk), -2)
    limit = np.maximum(limit, 500.0)
    balance = np.zeros(n)
    arrears = np.zeros(n)
    income_factor = np.ones(n)
    noise = np.zeros(n)
    previous_dpd = np.zeros(n, dtype=np.int64)
    clean_months = np.zeros(n, dtype=np.int64)

    for m in range(months):
        open_ = opened <= m
        mob = m - opened  # months on book before this month

        # Income shocks and recovery.
        shocked = open_ & (rng.random(n) < shock_rate)
        income_factor = np.where(shocked, rng.uniform(0.3, 0.8, n), income_factor)
        income_factor += (1.0 - income_factor) * 0.05
        income = base_income * income_factor * rng.lognormal(0.0, 0.03, n)
        noise = 0.7 * noise + 0.5 * rng.standard_normal(n)
        stress = risk + 3.0 * (1.0 - income_factor) + noise

        # Statement: arrears plus the instalment on last month's balance.
        instalment = np.minimum(
            np.maximum(balance - arrears, 0.0),
            np.maximum(MIN_INSTALMENT_YUAN, INSTALMENT_SHARE * balance),
        )
        owed = arrears + instalment
        in_arrears = previous_dpd > 0
        affordability = np.minimum(owed / income, 1.0)
        p_miss = _sigmoid(-3.6 + 1.1 * stress + 2.5 * affordability + 2.0 * in_arrears)
        miss = rng.random(n) < p_miss
        # Who does not pay on time pays late but in full (only without arrears), partially, or
        # not at all.
        kind = rng.random(n)
        late = miss & ~in_arrears & (kind < 0.55)
        partial = miss & (kind >= 0.55) & (kind < 0.80)
        month_status = np.select(
            [owed <= 0, late, partial, miss], [NO_DUE, LATE, PARTIAL, MISSED], ON_TIME
        )
        payment = np.select(
            [month_status == ON_TIME, month_status == LATE, month_status == PARTIAL],
            [np.where(transactor, balance, owed), owed, owed * rng.uniform(0.2, 0.8, n)],
            0.0,
        )
        month_days_late = np.where(month_status == LATE, rng.integers(1, 30, n), 0)

        cured = np.isin(month_status, (NO_DUE, ON_TIME, LATE))
        month_dpd = np.where(
            cured, 0, np.where(in_arrears, previous_dpd + DAYS_PER_MONTH, DAYS_PER_MONTH - due_day)
        )
        cure_day = due_day + month_days_late
        month_worst = np.where(
            cured, np.where(in_arrears, previous_dpd + cure_day, month_days_late), month_dpd
        )
        arrears = np.where(cured, 0.0, owed - payment)

        # Draws on a line that is not past due; stressed customers draw more.
        balance = (balance - payment) * (1.0 + MONTHLY_INTEREST)
        can_draw = open_ & (month_dpd == 0)
        wants = rng.random(n) < np.where(mob == 0, 1.0, _sigmoid(-0.3 + 0.6 * stress))
        share = rng.beta(2.0, 2.0, n) * _sigmoid(-0.5 + 0.8 * stress) * 1.6
        drawn = np.where(
            can_draw & wants, np.maximum(limit - balance, 0.0) * np.minimum(share, 1), 0.0
        )
        balance = np.where(open_, balance + drawn, 0.0)

        # Anniversary review: a clean year with high utilisation earns a line increase.
        clean_months = np.where(month_worst == 0, clean_months + 1, 0)
        increase = (
            open_ & (mob > 0) & (mob % 12 == 0) & (clean_months >= 12) & (balance > 0.5 * limit)
        )
        limit = np.where(increase, np.round(limit * 1.25, -2), limit)

        # Inquiries at other lenders.
        counts = np.where(open_, rng.poisson(0.15 * np.exp(0.8 * stress)), 0)
        inquiry_accounts.append(np.repeat(np.arange(n), counts))
        inquiry_days.append(m * DAYS_PER_MONTH + rng.integers(0, DAYS_PER_MONTH, counts.sum()))

        for name, value in (
            ("limit", limit),
            ("balance", balance),
            ("drawn", drawn),
            ("due", owed),
            ("paid", payment),
            ("income", income),
        ):
            records[name][:, m] = np.where(open_, value, 0.0)
        status[:, m] = np.where(open_, month_status, NOT_OPEN)
        days_late[:, m] = np.where(open_, month_days_late, 0)
        dpd[:, m] = np.where(open_, month_dpd, 0)
        worst_dpd[:, m] = np.where(open_, month_worst, 0)
        previous_dpd = np.where(open_, month_dpd, 0)

    # Riskier customers declare an income a little less often (about 1 in 6 do not).
    income_known = rng.random(n) >= _sigmoid(-1.7 + 0.4 * risk)
    fen = {name: _fen(value) for name, value in records.items()}
    accounts = np.concatenate(inquiry_accounts)
    days = np.concatenate(inquiry_days)
    order = np.lexsort((days, accounts))
    per_account_days = np.split(days[order], np.cumsum(np.bincount(accounts, minlength=n))[:-1])
    return [
        AccountHistory(
            account_id=i,
            opened_month=int(opened[i]),
            due_day=int(due_day[i]),
            latent_risk=float(risk[i]),
            income_known=bool(income_known[i]),
            limit=fen["limit"][i],
            balance=fen["balance"][i],
            drawn=fen["drawn"][i],
            due=fen["due"][i],
            paid=fen["paid"][i],
            payment_status=status[i],
            days_late=days_late[i],
            days_past_due=dpd[i],
            worst_days_past_due=worst_dpd[i],
            income=fen["income"][i],
            inquiry_days=per_account_days[i].astype(np.int32),
        )
        for i in range(n)
    ]


UP: RiskDirection = "increasing_risk"
DOWN: RiskDirection = "decreasing_risk"
DPD_BUCKETS = (1, 30, 60)  # 0, 1-29, 30-59, 60+ days past due
BEHAVIOUR_FEATURES: tuple[FeatureSpec, ...] = (
    numeric_feature(
        "utilisation",
        "What is owed (drawn, with interest, less repayments) as a share of the credit line.",
        "BEH_UTILISATION",
        "High utilisation of the credit line",
        "额度使用率较高",
        0.0,
        5.0,
        UP,
    ),
    numeric_feature(
        "days_past_due",
        "Days past due now.",
        "BEH_DAYS_PAST_DUE",
        "Days past due on the credit line",
        "当前逾期天数",
        0,
        3650,
        UP,
        DPD_BUCKETS,
    ),
    numeric_feature(
        "max_dpd_3m",
        "Most days past due in the last 3 months.",
        "BEH_MAX_DPD_3M",
        "Late repayment in the last 3 months",
        "近3个月有逾期",
        0,
        3650,
        UP,
        DPD_BUCKETS,
    ),
    numeric_feature(
        "max_dpd_6m",
        "Most days past due in the last 6 months.",
        "BEH_MAX_DPD_6M",
        "Late repayment in the last 6 months",
        "近6个月有逾期",
        0,
        3650,
        UP,
        DPD_BUCKETS,
    ),
    numeric_feature(
        "max_dpd_12m",
        "Most days past due in the last 12 months.",
        "BEH_MAX_DPD_12M",
        "Late repayment in the last 12 months",
        "近12个月有逾期",
        0,
        3650,
        UP,
        DPD_BUCKETS,
    ),
    numeric_feature(
        "dpd30_episodes_12m",
        "Times the account reached 30+ days past due in the last 12 months.",
        "BEH_DPD30_EPISODES",
        "30 or more days past due in the last 12 months",
        "近12个月有逾期30天以上",
        0,
        12,
        UP,
        (1, 2),
    ),
    numeric_feature(
        "dpd60_episodes_12m",
        "Times the account reached 60+ days past due in the last 12 months.",
        "BEH_DPD60_EPISODES",
        "60 or more days past due in the last 12 months",
        "近12个月有逾期60天以上",
        0,
        12,
        UP,
        (1, 2),
    ),
    numeric_feature(
        "dpd90_episodes_12m",
        "Times the account reached 90+ days past due in the last 12 months.",
        "BEH_DPD90_EPISODES",
        "90 or more days past due in the last 12 months",
        "近12个月有逾期90天以上",
        0,
        12,
        UP,
        (1,),
    ),
    numeric_feature(
        "on_time_streak",
        "Instalments repaid on time since the last late, partial or missed one (or since "
        "opening); one a month on a single statement.",
        "BEH_ON_TIME_STREAK",
        "Short record of consecutive on-time repayments",
        "连续按时还款的记录较短",
        0,
        600,
        DOWN,
    ),
    numeric_feature(
        "partial_payments_6m",
        "Partial repayments (less than was due) in the last 180 days.",
        "BEH_PARTIAL_PAYMENTS",
        "Partial repayments in the last 6 months",
        "近6个月有部分还款",
        0,
        1000,
        UP,
        (1, 2),
    ),
    numeric_feature(
        "inquiries_7d",
        "Credit applications at other lenders in the last 7 days.",
        "BEH_INQUIRIES_7D",
        "Credit applications at other lenders in the last 7 days",
        "近7天在其他机构有借贷申请",
        0,
        1000,
        UP,
        (1, 2),
    ),
    numeric_feature(
        "inquiries_30d",
        "Credit applications at other lenders in the last 30 days.",
        "BEH_INQUIRIES_30D",
        "Many recent credit applications at other lenders",
        "近期在其他机构的借贷申请较多",
        0,
        1000,
        UP,
        (1, 2, 4),
    ),
    numeric_feature(
        "months_on_book",
        "30-day months from the opening event to the latest event, counting the first as 1.",
        "BEH_MONTHS_ON_BOOK",
        "Short time since the credit line was opened",
        "开户时间较短",
        1,
        600,
        DOWN,
    ),
    numeric_feature(
        "income_change",
        "Fractional change of monthly income against 180 days earlier (or the first reading; "
        "-0.3 = down 30%); missing when no income is known.",
        "BEH_INCOME_CHANGE",
        "Income has fallen over the last 6 months",
        "近6个月收入下降",
        -1.0,
        10.0,
        DOWN,
        missing_bin=True,
    ),
    numeric_feature(
        "debt_to_income",
        "What is owed on the line divided by annual income; missing when no income is known.",
        "BEH_DEBT_TO_INCOME",
        "High debt relative to income",
        "负债收入比较高",
        0.0,
        100.0,
        UP,
        missing_bin=True,
    ),
)


def _stack(histories: Sequence[AccountHistory], field: str) -> np.ndarray:
    return np.stack([getattr(history, field) for history in histories])


def account_id_of(history: AccountHistory) -> str:
    return f"sim-{history.account_id:06d}"


def account_events(history: AccountHistory, until_month: int | None = None) -> list[Event]:
    """The account's months as the repayment events a servicing system would send monitoring,
    in sequence order, up to the end of `until_month` (the last month by default).

    Each month: the income reading (where income is known), the statement's outcome at its due
    day (an on-time or late repayment, a partial one, or a missed payment, with the days past
    due they leave), interest at month end, then a draw, a line change and the days past due
    at month end. Inquiries come on their own days. Times are event times: day d is
    `SIMULATION_EPOCH` + d days.
    """
    last = history.months - 1 if until_month is None else until_month
    end = _time(DAYS_PER_MONTH * (last + 1), 0)
    account = account_id_of(history)
    opened, due_day = history.opened_month, history.due_day
    # (time, kind, amount, days past due, timing, income); the stable sort keeps a day's order.
    raw: list[tuple[float, EventKind, int, int | None, Timing | None, int]] = []

    def add(day, hour, kind, amount=0, days=None, timing=None, income=0) -> None:
        raw.append((_time(day, hour), kind, amount, days, timing, income))

    incomes = history.income.tolist() if history.income_known else [0] * history.months
    add(
        DAYS_PER_MONTH * opened,
        0,
        EventKind.account_opened,
        int(history.limit[opened]),
        income=incomes[opened],
    )
    for m in range(opened, last + 1):
        first = DAYS_PER_MONTH * m
        due = first + due_day
        month_end = first + DAYS_PER_MONTH - 1
        if incomes[m] and m > opened:
            add(first, 1, EventKind.income_updated, income=incomes[m])
        previous_dpd = int(history.days_past_due[m - 1]) if m > opened else 0
        status = history.payment_status[m]
        owed, paid = max(int(history.due[m]), 1), int(history.paid[m])
        if status == ON_TIME:
            if previous_dpd:  # the arrears paid in full by the due day: how late they got
                add(due, 8, EventKind.days_past_due_updated, days=previous_dpd + due_day)
            add(due, 9, EventKind.repayment, paid, 0, Timing.on_time)
        elif status == LATE:  # in full within the month (never with arrears)
            days_late = int(history.days_late[m])
            add(due + 1, 9, EventKind.payment_missed, owed, 1)
            if days_late > 1:
                add(due + days_late, 8, EventKind.days_past_due_updated, days=days_late)
            add(due + days_late, 9, EventKind.repayment, paid, 0, Timing.late)
        elif status == PARTIAL:
            dpd = previous_dpd + due_day if previous_dpd else 0
            add(due, 9, EventKind.repayment, paid, dpd, Timing.partial)
            add(due + 1, 9, EventKind.payment_missed, max(owed - paid, 1), dpd + 1)
        elif status == MISSED:
            add(
                due + 1,
                9,
                EventKind.payment_missed,
                owed,
                previous_dpd + due_day + 1 if previous_dpd else 1,
            )
        balance_before = int(history.balance[m - 1]) if m > opened else 0
        interest = int(history.balance[m]) - int(history.drawn[m]) - (balance_before - paid)
        if interest > 0:
            add(month_end, 1, EventKind.interest_charged, interest)
        if history.drawn[m] > 0:
            add(month_end, 12, EventKind.line_drawn, int(history.drawn[m]))
        if m > opened and history.limit[m] != history.limit[m - 1]:
            add(month_end, 18, EventKind.credit_line_changed, int(history.limit[m]))
        if history.days_past_due[m] > 0:
            add(month_end, 23, EventKind.days_past_due_updated, days=int(history.days_past_due[m]))
    for day in history.inquiry_days.tolist():
        if day >= DAYS_PER_MONTH * opened:
            add(day, 10, EventKind.credit_inquiry)
    raw.sort(key=itemgetter(0))
    return [
        Event(
            event_id=f"{account}-{sequence}",
            account_id=account,
            sequence=sequence,
            at=at,
            kind=kind,
            amount=amount,
            days_past_due=days,
            timing=timing,
            income=income,
            loan_id=_LOAN_ID if kind in _LOAN_EVENTS else "",
        )
        for sequence, (at, kind, amount, days, timing, income) in enumerate(
            (r for r in raw if r[0] < end), start=1
        )
    ]


def profile_at(history: AccountHistory, month: int) -> dict[str, float]:
    """The behaviour features monitoring computes from the account's events up to the end of
    `month`: `profile.features` after `profile.record` of each (an unknown value is absent)."""
    events = account_events(history, month)
    state = profile.AccountState(account_id=events[0].account_id, opened_at=events[0].at)
    keep = profile.Keep()
    for event in events:
        profile.record(state, event, keep)
    return profile.features(state)


def feature_matrix(histories: Sequence[AccountHistory], month: int) -> np.ndarray:
    """Behaviour features (columns in BEHAVIOUR_FEATURES order) at the end of `month`, each
    account's computed by monitoring's own code from its events; NaN where a value is unknown."""
    if any(history.opened_month > month for history in histories):
        raise ValueError(f"an account is not open yet at month {month}")
    names = [spec.name for spec in BEHAVIOUR_FEATURES]
    return np.array(
        [
            [values.get(name, np.nan) for name in names]
            for values in map(profile_at, histories, repeat(month))
        ],
        dtype=np.float32,
    ).reshape(len(histories), len(names))


def defaults_within(
    histories: Sequence[AccountHistory], month: int, horizon: int = OUTCOME_MONTHS
) -> np.ndarray:
    """1 where an account is 90+ days past due at a month end in (month, month + horizon]."""
    dpd = _stack(histories, "days_past_due")[:, month + 1 : month + 1 + horizon]
    return np.asarray((dpd >= DEFAULT_DAYS_PAST_DUE).any(axis=1), dtype=np.int8)


def simulated_training_data(n_accounts: int, seed: int, months: int = 48) -> TrainingData:
    """(X, y) for the behaviour model: features at the observation point, then the outcome.

    The observation point is the end of month `months - 13`, leaving 12 months of outcome.
    """
    histories = simulate_accounts(n_accounts, seed, months)
    observation = months - OUTCOME_MONTHS - 1
    current_dpd = _stack(histories, "days_past_due")[:, observation]
    population = [
        h for h, d in zip(histories, current_dpd, strict=True) if d < DEFAULT_DAYS_PAST_DUE
    ]
    X = feature_matrix(population, observation)
    y = defaults_within(population, observation)
    digest = hashlib.sha256(X.tobytes() + y.tobytes()).hexdigest()
    return TrainingData(
        features=BEHAVIOUR_FEATURES,
        X=X,
        y=y,
        source=(
            f"creditline account simulator (services/scoring/modelling/simulator.py), "
            f"{n_accounts} accounts over {months} months, seed {seed}"
        ),
        sha256=digest,
        simulated=True,
        notes=(
            "Simulated data: no public behavioural data set ships offline. Each account's "
            "months are rendered as repayment events, and the features are monitoring's own "
            "profile (services/monitoring/profile.py) after the events up to the end of month "
            f"{observation}, at the latest event's time; income features are missing (NaN) "
            "where no income is known. Accounts already 90+ days past due then are excluded "
            f"({n_accounts - len(population)} of {n_accounts}). The sha256 is of the float32 "
            "feature matrix followed by the int8 labels. The simulated accounts carry no "
            "protected attributes."
        ),
    )
