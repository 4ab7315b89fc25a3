"""`creditline demo` against three real servers: the scripted customer's story, as printed."""

from datetime import UTC, datetime

import pytest
from rich.console import Console

from services.demo import run_demo


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the story, not storage
def test_the_demo_tells_the_customers_story(start_limits, scoring, start_monitoring, clock):
    # The wall clock, as under `creditline run`: the story's last chapter is today's, and the
    # customer lives where it is daytime now.
    clock.now = datetime.now(UTC)
    limits = start_limits(scoring.port)
    monitoring = start_monitoring(limits_target=limits.address)
    console = Console(record=True, width=200)
    run_demo(limits.address, monitoring.address, console=console)
    story = console.export_text()
    steps = [
        "limits: opened",
        "notice to the customer: opened",
        "monitoring: on_time_repayment",
        "monitoring: days_past_due_1",
        "limits: watchlisted",
        "notice to the customer: watchlisted",
        "monitoring: days_past_due_30",
        "POLICY_DAYS_PAST_DUE",
        "notice to the customer: reduced",
        "monitoring: delinquency_cured",
        # The watchlist's exit: cured, then clean for the policy's 90 days.
        "day 190",
        "limits: watchlist_lifted",
        "POLICY_CLEAN_PERIOD",
        "monitoring: days_past_due_60",
        "limits: frozen",
        "notice to the customer: frozen",
        "monitoring: delinquency_cured",
        # Reopened at stage 1 with the stage's own line, scored on what monitoring reported.
        "limits: reopened",
        "notice to the customer: reopened",
        "stage 1 with the stage's own line of 200.00 yuan",
        "condition reopening_stage",
        "GetAccountRisk",
        # Today: a missed instalment, a reminder outside the customer's quiet hours, a cure.
        "monitoring: days_past_due_1",
        "collections: reminder by push: A payment is 1 day overdue",
        "monitoring: delinquency_cured",
        "collections: stopped (cured): The overdue payments were made",
    ]
    position = 0
    for step in steps:
        found = story.find(step, position)
        assert found >= 0, f"{step!r} missing after position {position}:\n{story}"
        position = found
