"""How good and how fair a model is: discrimination, calibration, bands and adverse impact."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score, roc_curve

from services.scoring.modelling.artifact import FOUR_FIFTHS
from services.scoring.modelling.scale import band_from_score, score_bin_proportions

# Bands by share of the training population, best first: A is the best 20%, E the worst 15%.
BAND_SHARES = {"A": 0.20, "B": 0.25, "C": 0.25, "D": 0.15, "E": 0.15}
APPROVAL_BAND = "C"


def discrimination(y: np.ndarray, pd: np.ndarray) -> dict[str, float]:
    """AUC, KS (largest gap between the cumulative bad and good rates), Gini, Brier, log loss."""
    auc = roc_auc_score(y, pd)
    false_positive, true_positive, _ = roc_curve(y, pd)
    return {
        "auc": float(auc),
        "ks": float(np.max(true_positive - false_positive)),
        "gini": float(2.0 * auc - 1.0),
        "brier": float(brier_score_loss(y, pd)),
        "log_loss": float(log_loss(y, pd)),
    }


def calibration_table(y: np.ndarray, pd: np.ndarray, bins: int = 10) -> list[dict]:
    """Predicted against observed default rate in equal-count bins of predicted PD."""
    order = np.argsort(pd, kind="stable")
    return [
        {
            "bin": i,
            "mean_predicted": float(pd[rows].mean()),
            "observed_default_rate": float(y[rows].mean()),
            "rows": int(len(rows)),
        }
        for i, rows in enumerate(np.array_split(order, bins))
    ]


def risk_bands(training_scores: np.ndarray, min_points: int) -> list[dict]:
    """Band cut-offs at shares of the training score distribution, best first."""
    cumulative = np.cumsum(list(BAND_SHARES.values()))[:-1]
    cut_offs = [int(np.ceil(np.quantile(training_scores, 1.0 - share))) for share in cumulative]
    # Ties in integer scores can merge cut-offs; keep every band at least one point wide.
    for i in range(1, len(cut_offs)):
        cut_offs[i] = min(cut_offs[i], cut_offs[i - 1] - 1)
    if cut_offs[-1] <= min_points:
        raise ValueError("training scores are too concentrated for five risk bands")
    return [
        {"band": band, "min_score": minimum}
        for band, minimum in zip(BAND_SHARES, [*cut_offs, min_points], strict=True)
    ]


def with_outcomes(bands: list[dict], scores: np.ndarray, y: np.ndarray) -> list[dict]:
    """Each band with its share of rows and observed default rate (on the holdout)."""
    labels = band_from_score(scores, bands)
    return [
        {
            **band,
            "holdout_share": float(np.mean(labels == band["band"])),
            "holdout_default_rate": float(y[labels == band["band"]].mean())
            if (labels == band["band"]).any()
            else None,
        }
        for band in bands
    ]


def score_distribution(training_scores: np.ndarray, scale: Mapping) -> dict:
    """Decile bins of the training scores (11 strictly increasing edges) and their shares."""
    inner = np.rint(np.quantile(training_scores, np.linspace(0.1, 0.9, 9))).astype(int)
    edges = [int(scale["min_points"]), *inner, int(scale["max_points"])]
    for i in range(1, len(edges) - 1):  # ties in integer scores can merge deciles
        edges[i] = max(edges[i], edges[i - 1] + 1)
    if edges[-2] >= edges[-1]:
        raise ValueError("training scores are too concentrated for ten score bins")
    proportions = score_bin_proportions(training_scores, edges)
    return {"bin_edges": edges, "proportions": [float(p) for p in proportions]}


def approvals(scores: np.ndarray, bands: list[dict]) -> np.ndarray:
    """Whether each score is approved: in band C or better."""
    return np.isin(
        band_from_score(scores, bands),
        list(BAND_SHARES)[: list(BAND_SHARES).index(APPROVAL_BAND) + 1],
    )


def _approval(approved: np.ndarray, y: np.ndarray, mask: np.ndarray) -> dict:
    return {
        "rows": int(mask.sum()),
        "approval_rate": float(approved[mask].mean()),
        "default_rate": float(y[mask].mean()),
    }


def impact_ratio(approved: np.ndarray, labels: np.ndarray) -> float:
    """The lowest group's approval rate over the highest's (1.0 when none is approved)."""
    rates = [approved[labels == group].mean() for group in sorted(set(labels.tolist()))]
    return float(min(rates) / max(rates)) if max(rates) > 0 else 1.0


def adverse_impact(
    scores: np.ndarray, y: np.ndarray, bands: list[dict], protected: Mapping[str, np.ndarray]
) -> dict:
    """Approval rates (band C or better) per group and the adverse impact ratio per attribute.

    air = lowest group approval rate / highest; below 0.8 fails the four-fifths screen.
    """
    approved = approvals(scores, bands)
    groups = {}
    for attribute, labels in protected.items():
        report = {
            group: _approval(approved, y, labels == group) for group in sorted(set(labels.tolist()))
        }
        air = impact_ratio(approved, labels)
        groups[attribute] = {**report, "air": air, "passes_four_fifths": air >= FOUR_FIFTHS}
    return groups
