"""`make bench`: every performance target, as ratios against floors measured in the same run.

Nothing here is asserted: these machines are shared and noisy. Read the ratios.
"""

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import harness, limits, monitoring, scoring, soak  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each rate run")
    parser.add_argument("--calls", type=int, default=3000, help="sequential calls per latency run")
    parser.add_argument(
        "--review-accounts", type=int, default=100_000, help="book size of the RunReview run"
    )
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=0,
        help="instead of the targets: the suite under mixed traffic this long, and its memory",
    )
    parser.add_argument(
        "--soak-postgres", action="store_true", help="soak limits and monitoring on PostgreSQL"
    )
    options = parser.parse_args()
    console = Console(width=120)
    if options.soak_minutes:
        run_soak(console, options.soak_minutes, options.soak_postgres)
        return
    table = Table(title="creditline bench (OMP_NUM_THREADS=1)")
    for column in ("measure", "value", "against", "ratio", "target"):
        table.add_column(column)
    sections = []
    with console.status("scoring: echo floor, raw onnxruntime, Score, BatchScore"):
        rows = scoring.run(options.seconds, options.calls)
    sections.append(("scoring", len(harness.FOOTPRINTS)))
    with console.status("limits: raw commits, Draw on SQLite and PostgreSQL, RunReview"):
        rows += limits.run(options.seconds, options.review_accounts)
    sections.append(("limits", len(harness.FOOTPRINTS)))
    with console.status("monitoring: raw commits, Ingest in batches, event-to-alert latency"):
        rows += monitoring.run(options.seconds)
    sections.append(("monitoring", len(harness.FOOTPRINTS)))
    for measure, value, against, ratio, target in rows:
        table.add_row(measure, value, against, f"{ratio:.2f}x" if ratio != "" else "", target)
    console.print(table)
    console.print(memory_table(sections))


def memory_table(sections: list[tuple[str, int]]) -> Table:
    """Each server process of the run: resident memory once serving, after its load, at most."""
    table = Table(title="resident memory of each server process (MiB)")
    for column in ("section", "process", "idle", "after its load", "peak"):
        table.add_column(column)
    first = 0
    for section, end in sections:
        for footprint in harness.FOOTPRINTS[first:end]:
            table.add_row(
                section,
                footprint.server,
                f"{footprint.idle_mib:.0f}",
                f"{footprint.loaded_mib:.0f}",
                f"{footprint.peak_mib:.0f}",
            )
        first = end
    return table


def run_soak(console: Console, minutes: float, postgres: bool) -> None:
    with console.status(f"soak: the suite under mixed traffic for {minutes:g} minutes"):
        rows, traffic, trace = soak.soak(minutes, postgres)
    table = Table(title=f"resident memory over a {minutes:g}-minute soak (MiB)")
    for column in ("service", "idle", "half-way", "end", "second half", "verdict"):
        table.add_column(column)
    for name, idle, middle, end, growth, verdict in rows:
        table.add_row(name, f"{idle:.0f}", f"{middle:.0f}", f"{end:.0f}", f"{growth:+.1f}", verdict)
    console.print(table)
    by_minute = Table(title="resident memory minute by minute (MiB)")
    for column in ("minute", *soak.SERVICES):
        by_minute.add_column(column)
    for minute, resident in trace:
        by_minute.add_row(str(minute), *(f"{resident[name]:.1f}" for name in soak.SERVICES))
    console.print(by_minute)
    calls = ", ".join(f"{kind} {count:,}" for kind, count in sorted(traffic.calls.items()))
    console.print(f"calls: {calls}")
    refused = ", ".join(f"{code} {count:,}" for code, count in sorted(traffic.refused.items()))
    console.print(f"refused: {refused or 'none'}")


if __name__ == "__main__":
    main()
