"""Model training from the command line (`creditline model train`), with rich progress bars."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from services.scoring.modelling.training import (
    DEFAULT_CREATED_AT,
    MODEL_NAMES,
    train_model,
)


def train_with_progress(
    output: Path,
    *,
    name: str | None = None,
    seed: int = 7,
    version: str | None = None,
    created_at: str | None = DEFAULT_CREATED_AT,
) -> list[Path]:
    """Train one model (`name`) or both, showing a progress bar per model.

    Each model is published as its committed version (DEFAULT_VERSIONS) unless `version` is
    given, with the full fairness search. created_at is pinned by default so retraining
    reproduces the committed bytes; pass None for SOURCE_DATE_EPOCH or the current time.
    """
    names = tuple(n for n in MODEL_NAMES if name is None or n == name)
    if not names:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(MODEL_NAMES)}")
    console = Console()
    published = []
    columns = (TextColumn("{task.description:<42}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for model in names:
            task = progress.add_task(model, total=None)

            def update(description: str, completed: int, total: int, task=task) -> None:
                progress.update(task, description=description, completed=completed, total=total)

            published.append(
                train_model(
                    model,
                    output,
                    seed=seed,
                    version=version,
                    created_at=created_at,
                    progress=update,
                )
            )
    for path in published:
        console.print(f"published {path}")
    return published
