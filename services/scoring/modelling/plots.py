"""The model card's plots (ROC, score distribution, calibration) as reproducible PNG bytes.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot state, no backend switch) at
a fixed size and dpi, and saved without the Software tag, so the same data gives the same bytes.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

DPI = 100
SIZE = (6.4, 4.8)


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def roc_png(title: str, y: np.ndarray, pd: np.ndarray, auc: float) -> bytes:
    figure = Figure(figsize=SIZE, layout="constrained")
    axes = figure.add_subplot()
    false_positive, true_positive, _ = roc_curve(y, pd)
    axes.plot(false_positive, true_positive, label=f"holdout (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set(
        xlabel="False positive rate (goods declined)",
        ylabel="True positive rate (defaults caught)",
        title=f"{title}: ROC",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    axes.legend(loc="lower right")
    return _png(figure)


def score_distribution_png(
    title: str, scores: np.ndarray, y: np.ndarray, bands: list[dict]
) -> bytes:
    figure = Figure(figsize=SIZE, layout="constrained")
    axes = figure.add_subplot()
    edges = np.linspace(scores.min() - 0.5, scores.max() + 0.5, 31)
    for label, mask, colour in (
        ("non-default", y == 0, "tab:blue"),
        ("default", y == 1, "tab:red"),
    ):
        axes.hist(
            scores[mask],
            bins=edges.tolist(),
            alpha=0.6,
            density=True,
            color=colour,
            label=f"{label} ({mask.sum()})",
        )
    # Band letters on a top axis, centred over each band's score range.
    low, high = axes.get_xlim()
    starts = [band["min_score"] for band in bands[:-1]]
    ends = [high, *starts]
    starts.append(low)
    for start in starts[:-1]:
        axes.axvline(start, color="black", linewidth=0.8, linestyle=":")
    top = axes.secondary_xaxis("top")
    top.set_xticks(
        [(start + end) / 2 for start, end in zip(starts, ends, strict=True)],
        labels=[band["band"] for band in bands],
    )
    top.tick_params(length=0)
    axes.set_xlim(low, high)
    axes.set(
        xlabel="Score (higher is safer); dotted lines: band cut-offs",
        ylabel="Density",
        title=f"{title}: training scores and risk bands",
    )
    axes.legend(loc="upper left")
    return _png(figure)


def calibration_png(title: str, table: list[dict]) -> bytes:
    figure = Figure(figsize=SIZE, layout="constrained")
    axes = figure.add_subplot()
    predicted = [row["mean_predicted"] for row in table]
    observed = [row["observed_default_rate"] for row in table]
    top = max(max(predicted), max(observed)) * 1.05
    axes.plot([0, top], [0, top], linestyle="--", color="grey", label="perfect calibration")
    axes.plot(predicted, observed, marker="o", label="holdout, deciles of predicted PD")
    axes.set(
        xlabel="Mean predicted probability of default",
        ylabel="Observed default rate",
        title=f"{title}: calibration",
        xlim=(0, top),
        ylim=(0, top),
    )
    axes.legend(loc="upper left")
    return _png(figure)
