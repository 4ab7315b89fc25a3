"""Score scale, risk bands, score-distribution bins and reason ranking from a model card.

Shared by training (which writes the card) and the scoring server (which reads it), so both
turn a probability of default into points, a band and reasons the same way. numpy only.

score = clip(round(offset + factor * ln((1 - pd) / pd)), min_points, max_points), with
factor = pdo / ln 2 and offset = base_points - factor * ln(base_odds): base_points at odds of
base_odds good to one bad, and every pdo points doubling the odds.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

import numpy as np

# Keeps ln((1 - pd) / pd) finite; the clip to min/max points applies long before.
_PD_FLOOR = 1e-12


class ScoreScale:
    """The card's `score_scale`, with its constants worked out once for fast scoring."""

    def __init__(self, scale: Mapping[str, float]) -> None:
        self.factor = float(scale["pdo"] / np.log(2.0))
        self.offset = float(scale["base_points"] - self.factor * np.log(scale["base_odds"]))
        self.min_points = scale["min_points"]
        self.max_points = scale["max_points"]

    def points(self, pd: np.ndarray) -> np.ndarray:
        """Points (int64) for probabilities of default."""
        pd = np.minimum(np.maximum(np.asarray(pd, dtype=np.float64), _PD_FLOOR), 1.0 - _PD_FLOOR)
        points = np.rint(self.offset + self.factor * np.log((1.0 - pd) / pd))
        return np.minimum(np.maximum(points, self.min_points), self.max_points).astype(np.int64)

    def point(self, pd: float) -> int:
        """`points` for one probability, in plain floats: the single-row path of every call.

        The same operations in the same order (round() also rounds half to even), and the
        logarithm is still numpy's, so one row scores exactly as it would in a batch.
        """
        pd = min(max(pd, _PD_FLOOR), 1.0 - _PD_FLOOR)
        points = round(self.offset + self.factor * float(np.log((1.0 - pd) / pd)))
        return int(min(max(points, self.min_points), self.max_points))


def score_from_pd(pd: np.ndarray, scale: Mapping[str, float]) -> np.ndarray:
    """Points (int64) for probabilities of default, by the card's `score_scale`."""
    return ScoreScale(scale).points(pd)


class RiskBands:
    """The card's band cut-offs, ready to grade many scores at once."""

    def __init__(self, bands: Sequence[Mapping]) -> None:
        minimums = np.array([band["min_score"] for band in bands])
        if (np.diff(minimums) >= 0).any():
            raise ValueError("risk bands must be ordered best first with decreasing min_score")
        self.names = np.array([band["band"] for band in bands])
        self._ascending_minimums = minimums[::-1]
        self._ascending_list = self._ascending_minimums.tolist()
        self._name_list = self.names.tolist()

    def of(self, scores: np.ndarray) -> np.ndarray:
        """The band of each score: the first band, best first, whose `min_score` it reaches.

        Scores below every band's minimum get the last (worst) band.
        """
        reached = np.searchsorted(self._ascending_minimums, scores, side="right")
        worst = len(self.names) - 1
        return self.names[np.minimum(worst + 1 - reached, worst)]

    def of_one(self, score: float) -> str:
        """`of` for one score, without arrays."""
        reached = bisect.bisect_right(self._ascending_list, score)
        worst = len(self._name_list) - 1
        return self._name_list[min(worst + 1 - reached, worst)]


def band_from_score(scores: np.ndarray, bands: Sequence[Mapping]) -> np.ndarray:
    return RiskBands(bands).of(scores)


def score_bin_proportions(scores: np.ndarray, bin_edges: Sequence[float]) -> np.ndarray:
    """Share of scores in each bin: bin i holds edges[i] <= score < edges[i + 1].

    The first and last bins are open-ended, so every score lands somewhere. This is how the
    card's `training_score_distribution` was counted; count live scores the same way for PSI.
    """
    bins = np.searchsorted(np.asarray(bin_edges, dtype=np.float64)[1:-1], scores, side="right")
    counts = np.bincount(bins, minlength=len(bin_edges) - 1)
    return counts / max(len(scores), 1)


def top_reasons(reason_points: Sequence[float], max_reasons: int) -> list[int]:
    """Indices of the features that cost the most points (> 0), largest first.

    Ties keep feature order, so the same row always gets the same reasons: a stable sort,
    like `top_reasons_by_row`, in plain Python because one row is too small for numpy.
    """
    ranked = sorted(range(len(reason_points)), key=reason_points.__getitem__, reverse=True)
    return [f for f in ranked[:max_reasons] if reason_points[f] > 0]


def top_reasons_by_row(reason_points: np.ndarray, max_reasons: int) -> list[list[int]]:
    """`top_reasons` for every row of a [rows, features] matrix, ranked in one sort."""
    ranked = np.argsort(-reason_points, axis=1, kind="stable")[:, :max_reasons]
    # Ranked largest first, so the features that cost points are a prefix of each row. (A sum
    # of booleans by row is several times faster than count_nonzero along an axis.)
    costly = (np.take_along_axis(reason_points, ranked, axis=1) > 0).sum(axis=1)
    return [
        row if count == max_reasons else row[:count]
        for row, count in zip(ranked.tolist(), costly.tolist(), strict=True)
    ]
