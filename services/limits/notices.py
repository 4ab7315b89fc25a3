"""Notices: what the customer is told of each decision, in every locale, and when it is due.

Every customer-facing decision (`NOTICE_EVENTS`) and every appeal outcome gets exactly one
notice, written to the outbox in the same transaction as the decision. Its texts come from
templates that ship as data beside the policy (`notice_templates.yaml`), validated at load
(every notice type and no other, both locales, only the placeholders below) and hot reloaded
like the policy. When it is due is the policy's (`notices`). Nothing here stores or sends.
"""

import string
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import ConfigDict, Field, field_validator

from services.common.documents import (
    DocumentError,
    ReloadingDocument,
    StrictModel,
    parse_document,
    read_document,
)
from services.limits.policy import Policy
from services.limits.reasons import customer_improvements
from services.limits.records import (
    Appeal,
    CustomerNotice,
    EventType,
    LimitEvent,
    NoticeType,
    Reason,
)

DEFAULT_TEMPLATES = Path(__file__).with_name("notice_templates.yaml")
LOCALES = ("en", "zh-CN")

# The decisions a customer is told of, by the notice that tells them. Other events (a review
# that kept the line, an exit that time opened, the customer's own preferences) are in the
# history and the customer's view, without a notice of their own.
NOTICE_EVENTS: dict[EventType, NoticeType] = {
    EventType.opened: NoticeType.opened,
    EventType.declined: NoticeType.declined,
    EventType.increased: NoticeType.increased,
    EventType.increase_declined: NoticeType.increase_declined,
    EventType.reduced: NoticeType.reduced,
    EventType.watchlisted: NoticeType.watchlisted,
    EventType.frozen: NoticeType.frozen,
    EventType.unfrozen: NoticeType.unfrozen,
    EventType.closed: NoticeType.closed,
    EventType.reopened: NoticeType.reopened,
    EventType.reopen_declined: NoticeType.reopen_declined,
    EventType.reopening_stage_advanced: NoticeType.reopening_stage_advanced,
    EventType.hardship_enrolled: NoticeType.hardship_enrolled,
    EventType.appeal_reversed: NoticeType.appeal_reversed,
}

# What a notice template may say, filled from the decision.
TEMPLATE_FIELDS = frozenset({"line", "previous_line", "reasons", "stage"})
IMPROVEMENTS_FIELDS = frozenset({"improvements"})


def _placeholders_within(text: str, allowed: frozenset[str]) -> str:
    """`text` if its {placeholders} are all `allowed` and plain (no format spec, no index)."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as error:
        raise ValueError(f"malformed placeholder: {error}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in allowed or spec or conversion:
            known = ", ".join(f"{{{f}}}" for f in sorted(allowed)) or "none"
            raise ValueError(f"unknown placeholder {{{name}}}; known: {known}")
    return text


class LocaleTexts(StrictModel):
    """One text in every locale the product speaks."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    en: str = Field(min_length=1)
    zh_cn: str = Field(alias="zh-CN", min_length=1)

    def of(self, locale: str) -> str:
        return self.en if locale == "en" else self.zh_cn


class NoticeTemplate(LocaleTexts):
    @field_validator("en", "zh_cn")
    @classmethod
    def _known_placeholders(cls, text: str) -> str:
        return _placeholders_within(text, TEMPLATE_FIELDS)


class ImprovementsTemplate(LocaleTexts):
    @field_validator("en", "zh_cn")
    @classmethod
    def _known_placeholders(cls, text: str) -> str:
        return _placeholders_within(text, IMPROVEMENTS_FIELDS)


class PlainText(LocaleTexts):
    @field_validator("en", "zh_cn")
    @classmethod
    def _no_placeholders(cls, text: str) -> str:
        return _placeholders_within(text, frozenset())


class NoticeTemplates(StrictModel):
    """One complete, validated version of the notice texts."""

    version: str = Field(min_length=1)
    # Added to every adverse notice: how the customer appeals.
    how_to_appeal: PlainText
    # Added to a notice whose decision the customer can change: {improvements}.
    improvements: ImprovementsTemplate
    # One template for each notice type, and no other.
    templates: dict[NoticeType, NoticeTemplate]

    @field_validator("templates")
    @classmethod
    def _every_notice_type(
        cls, templates: dict[NoticeType, NoticeTemplate]
    ) -> dict[NoticeType, NoticeTemplate]:
        missing = [kind.value for kind in NoticeType if kind not in templates]
        if missing:
            raise ValueError(f"no template for {', '.join(missing)}")
        return templates


def parse_templates(text: str, source: str = "notice templates") -> NoticeTemplates:
    return parse_document(text, NoticeTemplates, source, "notice templates")


def load_templates(path: Path = DEFAULT_TEMPLATES) -> NoticeTemplates:
    return parse_templates(read_document(path), str(path))


class TemplatesHolder(ReloadingDocument[NoticeTemplates]):
    """The templates in force, reloaded from their file when it changes and validates."""

    def __init__(self, path: Path = DEFAULT_TEMPLATES) -> None:
        super().__init__(path, load_templates, "notice_templates")

    @property
    def templates(self) -> NoticeTemplates:
        return self.current


TemplatesError = DocumentError


# -- composing notices -----------------------------------------------------------------------


def notice_of_event(
    event: LimitEvent, currency_code: str, policy: Policy, templates: NoticeTemplates
) -> CustomerNotice | None:
    """The notice of a decision, or None for an event the customer is not sent a notice of."""
    kind = NOTICE_EVENTS.get(event.type)
    if kind is None:
        return None
    return _compose(
        kind,
        event,
        adverse=event.adverse,
        currency_code=currency_code,
        policy=policy,
        templates=templates,
        at=event.created_at,
        event_id=event.event_id,
        appeal_id=event.details.get("appeal_id") or None,
    )


def notice_of_upheld_appeal(
    appeal: Appeal,
    appealed: LimitEvent,
    currency_code: str,
    policy: Policy,
    templates: NoticeTemplates,
    at: datetime,
) -> CustomerNotice:
    """The notice that an appeal was heard and the decision stands, for its reasons; the
    appeal was the way to contest it, so no second one is offered."""
    return _compose(
        NoticeType.appeal_upheld,
        appealed,
        adverse=False,
        currency_code=currency_code,
        policy=policy,
        templates=templates,
        at=at,
        appeal_id=appeal.appeal_id,
        event_id=None,
    )


def _compose(
    kind: NoticeType,
    event: LimitEvent,
    *,
    adverse: bool,
    currency_code: str,
    policy: Policy,
    templates: NoticeTemplates,
    at: datetime,
    event_id: str | None,
    appeal_id: str | None,
) -> CustomerNotice:
    improvements = customer_improvements(event.reasons) if event.adverse else ()
    days = policy.notices.adverse_within_days if adverse else policy.notices.other_within_days
    texts = {}
    for locale in LOCALES:
        text = (
            templates.templates[kind]
            .of(locale)
            .format(
                line=money_text(event.line_after, currency_code, locale),
                previous_line=money_text(event.line_before, currency_code, locale),
                reasons=_joined(event.reasons, locale),
                stage=event.details.get("reopening_stage", ""),
            )
        )
        if improvements:
            text += " " + templates.improvements.of(locale).format(
                improvements=_joined(improvements, locale)
            )
        if adverse:
            text += " " + templates.how_to_appeal.of(locale)
        texts[locale] = text
    return CustomerNotice(
        notice_id=uuid.uuid4().hex,
        account_id=event.account_id,
        type=kind,
        adverse=adverse,
        reasons=event.reasons,
        improvements=improvements,
        how_to_appeal=(
            {locale: templates.how_to_appeal.of(locale) for locale in LOCALES} if adverse else {}
        ),
        texts=texts,
        created_at=at,
        due_at=at + timedelta(days=days),
        templates_version=templates.version,
        policy_version=policy.version,
        event_id=event_id,
        appeal_id=appeal_id,
    )


def money_text(minor_units: int, currency_code: str, locale: str) -> str:
    """An amount as the customer reads it: "800.00 CNY", "800.00元"."""
    amount = f"{minor_units / 100:,.2f}"
    if locale == "zh-CN" and currency_code == "CNY":
        return f"{amount}元"
    return f"{amount} {currency_code}"


def _joined(reasons: tuple[Reason, ...], locale: str) -> str:
    separator = "；" if locale == "zh-CN" else "; "
    return separator.join(r.texts[locale] for r in reasons)
