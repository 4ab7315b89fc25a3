"""`make bench`: every performance target, as ratios against floors measured in the same run.

Nothing here is asserted: these machines are shared and noisy. Read the ratios.
"""

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import limits, monitoring, scoring  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each rate run")
    parser.add_argument("--calls", type=int, default=3000, help="sequential calls per latency run")
    parser.add_argument(
        "--review-accounts", type=int, default=100_000, help="book size of the RunReview run"
    )
    options = parser.parse_args()
    console = Console(width=120)
    table = Table(title="creditline bench (OMP_NUM_THREADS=1)")
    for column in ("measure", "value", "against", "ratio", "target"):
        table.add_column(column)
    with console.status("scoring: echo floor, raw onnxruntime, Score, BatchScore"):
        rows = scoring.run(options.seconds, options.calls)
    with console.status("limits: raw commits, Draw on SQLite and PostgreSQL, RunReview"):
        rows += limits.run(options.seconds, options.review_accounts)
    with console.status("monitoring: raw commits, Ingest in batches, event-to-alert latency"):
        rows += monitoring.run(options.seconds)
    for measure, value, against, ratio, target in rows:
        table.add_row(measure, value, against, f"{ratio:.2f}x" if ratio != "" else "", target)
    console.print(table)


if __name__ == "__main__":
    main()
