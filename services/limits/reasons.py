"""The reasons the policy gives, in every locale, and what would change each outcome.

Model reasons come from the scoring model's card (its reason codes and texts); these are the
policy's own. Every adverse decision carries at most four principal reasons.
"""

from services.limits.records import Reason, ReasonSource

MAX_REASONS = 4

# code -> (English, Chinese, what would change it in English, in Chinese)
POLICY_REASONS: dict[str, tuple[str, str, str, str]] = {
    "POLICY_DECLINED_RISK_BAND": (
        "The assessed credit risk is outside what the product can serve",
        "综合信用风险评估未达到产品准入要求",
        "Build a longer record of on-time repayments elsewhere and apply again later",
        "在其他机构保持更长时间的按时还款记录后再申请",
    ),
    "POLICY_ABILITY_TO_PAY": (
        "Repayments on the line would take too large a share of income",
        "额度用满后的月还款占收入比例过高",
        "Lower existing monthly debt payments or show a higher income",
        "降低现有月供或提供更高的收入证明",
    ),
    "POLICY_MONTHS_ON_BOOK": (
        "The account is too new for an increase",
        "账户开立时间不足，暂不能提额",
        "Keep using and repaying the line; increases open after the waiting period",
        "继续正常使用并按时还款，达到期限后可申请提额",
    ),
    "POLICY_TIER_MAXIMUM": (
        "The line is at the maximum for its tier",
        "额度已达到当前等级的上限",
        "A better risk assessment would move the account to a higher tier",
        "信用评估改善后可进入更高等级",
    ),
    "POLICY_RISK_NOT_IMPROVED": (
        "The latest assessment does not support a higher line",
        "最新的信用评估不支持更高的额度",
        "Repay on time and keep utilisation moderate",
        "按时还款并保持适度的额度使用率",
    ),
    "POLICY_WATCHLIST": (
        "The account is under review after recent warning signs",
        "账户近期出现风险信号，正在观察中",
        "Keep repayments on time until the review ends",
        "在观察期内保持按时还款",
    ),
    "POLICY_DAYS_PAST_DUE": (
        "Repayments are overdue",
        "存在逾期未还款项",
        "Repay the overdue amount",
        "尽快还清逾期款项",
    ),
    "POLICY_PARTIAL_PAYMENTS": (
        "Recent repayments were only partly made",
        "近期多次只偿还部分款项",
        "Repay instalments in full",
        "足额偿还每期款项",
    ),
    "POLICY_MULTIPLE_LENDING": (
        "Many recent credit applications at other lenders",
        "近期在多家机构频繁申请借贷",
        "Avoid applying for credit at several lenders in a short time",
        "避免短期内在多家机构申请借贷",
    ),
    "POLICY_UTILISATION": (
        "The line is almost fully used, or its use rose sharply",
        "额度使用率过高或短期内大幅上升",
        "Keep utilisation moderate",
        "保持适度的额度使用率",
    ),
    "POLICY_INCOME_DECLINE": (
        "Income has fallen markedly",
        "收入明显下降",
        "Show restored income",
        "提供收入恢复的证明",
    ),
    "POLICY_ABNORMAL_TRANSACTION": (
        "Transactions far outside the account's usual pattern",
        "交易行为与账户的历史模式明显不符",
        "Contact us to confirm the transactions",
        "联系我们核实相关交易",
    ),
    "POLICY_RISK_BAND_WORSENED": (
        "The latest assessment shows higher credit risk",
        "最新的信用评估显示风险上升",
        "Repay on time and reduce outstanding debt",
        "按时还款并降低负债",
    ),
    "POLICY_REOPEN_TOO_SOON": (
        "Too little time has passed since the line was suspended",
        "额度暂停后的时间尚短",
        "Apply again after the waiting period",
        "等待期满后再申请",
    ),
    "POLICY_NO_RECENT_ON_TIME_REPAYMENT": (
        "No recent on-time repayment",
        "近期没有按时还款记录",
        "Make your next repayments on time",
        "按时完成接下来的还款",
    ),
    "POLICY_OPEN_ANOMALY": (
        "An unresolved anomaly on the account",
        "账户存在尚未解决的异常",
        "Contact us to resolve it",
        "联系我们解决异常",
    ),
    "POLICY_OPERATOR": (
        "Decision by our credit operations team",
        "由信贷运营团队作出的决定",
        "Contact us for details or file an appeal",
        "联系我们了解详情或提出申诉",
    ),
    "POLICY_APPEAL_REVERSED": (
        "An appeal reversed an earlier decision",
        "申诉撤销了之前的决定",
        "",
        "",
    ),
    "POLICY_CUSTOMER_REQUEST": (
        "At the customer's request",
        "应客户要求",
        "",
        "",
    ),
    "POLICY_GOOD_REPAYMENT": (
        "A record of on-time repayments",
        "良好的按时还款记录",
        "",
        "",
    ),
    "POLICY_SCHEDULED_REVIEW": ("Scheduled review", "定期额度评估", "", ""),
    "POLICY_NO_RECENT_HISTORY": (
        "Not enough recent repayment history",
        "近期还款记录不足",
        "Keep using and repaying the line; a decision needs recent repayment history",
        "继续正常使用并按时还款，积累近期还款记录",
    ),
    "POLICY_REOPENING_STAGE": (
        "The line is being reopened in stages",
        "额度正在分阶段恢复中",
        "Repay on time: each stage's repayments open the next",
        "按时还款，完成每个阶段后额度将逐步恢复",
    ),
    "POLICY_CLEAN_PERIOD": (
        "Repayments are current and no warning sign for the policy's period",
        "还款正常且在规定期限内未出现风险信号",
        "",
        "",
    ),
    "POLICY_HARDSHIP_ENDED": ("The hardship arrangement ended", "困难还款安排已结束", "", ""),
    "POLICY_REPAID_UNDER_LINE": (
        "Repayments brought the balance under the line",
        "还款后欠款已低于信用额度",
        "",
        "",
    ),
}

# Warning signal types (the policy's names of creditline.type.v1.SignalType) to the policy
# reason a decision on them gives; a test checks every warning type has one.
SIGNAL_REASONS = {
    "days_past_due": "POLICY_DAYS_PAST_DUE",
    "partial_payments": "POLICY_PARTIAL_PAYMENTS",
    "multiple_lending": "POLICY_MULTIPLE_LENDING",
    "utilisation_spike": "POLICY_UTILISATION",
    "income_decline": "POLICY_INCOME_DECLINE",
    "abnormal_transaction": "POLICY_ABNORMAL_TRANSACTION",
    "risk_band_worsened": "POLICY_RISK_BAND_WORSENED",
}


def policy_reason(code: str) -> Reason:
    en, zh, _, _ = POLICY_REASONS[code]
    return Reason(code, {"en": en, "zh-CN": zh}, ReasonSource.policy)


def improvement(reason: Reason) -> Reason:
    """What would change the outcome a reason stands for."""
    if reason.code in POLICY_REASONS:
        _, _, en, zh = POLICY_REASONS[reason.code]
    else:  # a model factor: improve that factor
        en = f"Improve this factor: {reason.texts['en']}"
        zh = f"改善此项因素：{reason.texts['zh-CN']}"
    return Reason(reason.code, {"en": en, "zh-CN": zh}, reason.source)


def customer_improvements(reasons: tuple[Reason, ...]) -> tuple[Reason, ...]:
    """What would change an adverse outcome, for the reasons the policy knows a way out of
    (a model factor always has one: improve it)."""
    found = (improvement(r) for r in reasons)
    return tuple(r for r in found if r.texts["en"])


def principal(reasons: list[Reason]) -> tuple[Reason, ...]:
    """At most four reasons, the first of each code kept, in the order given."""
    seen: dict[str, Reason] = {}
    for reason in reasons:
        seen.setdefault(reason.code, reason)
    return tuple(seen.values())[:MAX_REASONS]
