"""A served model: validates and encodes features, runs onnxruntime, and turns its outputs
into probabilities of default, scores, risk bands and principal reasons.

Transport-free: the servicer converts protobuf to plain Python and back; everything here
can be used and tested without a server.
"""

import bisect
import math
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import onnxruntime as ort

from services.common.errors import Violations
from services.scoring.modelling.artifact import ModelArtifact
from services.scoring.modelling.contract import INPUT_NAME, OUTPUT_NAMES
from services.scoring.modelling.scale import (
    RiskBands,
    ScoreScale,
    top_reasons,
    top_reasons_by_row,
)

MAX_REASONS = 4
LOCALES = ("en", "zh-CN")


@dataclass(frozen=True)
class Feature:
    """One model input as the model card defines it."""

    name: str
    categorical: bool
    minimum: float
    maximum: float
    categories: tuple[str, ...]
    category_index: Mapping[str, int]
    description: str
    reason_code: str
    reason_texts: Mapping[str, str]
    # What a batch does with a number outside [minimum, maximum] (the card's `out_of_range`):
    # "clamp" it to the range and flag it, or "refuse_row". Clamping is the default where the
    # card names no rule: the outer bins are open, so a clamped value scores as the range's end.
    clamps: bool = True
    # The card's `missing: own_bin`: an unknown value (NaN) is scored, in the feature's missing
    # bin; otherwise every row needs a value.
    missing_bin: bool = False

    @classmethod
    def from_card(cls, spec: Mapping) -> "Feature":
        categorical = spec["type"] == "categorical"
        categories = tuple(spec.get("categories", ()))
        out_of_range = spec.get("out_of_range", "clamp")
        if out_of_range not in ("clamp", "refuse_row"):
            raise ValueError(f"feature {spec['name']}: out_of_range must be clamp or refuse_row")
        return cls(
            name=spec["name"],
            categorical=categorical,
            minimum=-math.inf if categorical else float(spec["min"]),
            maximum=math.inf if categorical else float(spec["max"]),
            categories=categories,
            category_index={c: i for i, c in enumerate(categories)},
            description=spec.get("description", ""),
            reason_code=spec["reason_code"],
            reason_texts=dict(spec["reason_text"]),
            clamps=out_of_range == "clamp",
            missing_bin=spec.get("missing") == "own_bin",
        )

    def problem_with(self, value: object) -> str | None:
        """Why `value` is not a valid input for this feature, or None when it is."""
        if self.categorical:
            if not isinstance(value, str):
                return f"must be one of the categories {', '.join(self.categories)}"
            if value not in self.category_index:
                return f"unknown category {value!r}; one of {', '.join(self.categories)}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if math.isnan(value):
            return None if self.missing_bin else "has no value, and the model needs one"
        if not math.isfinite(value):
            return "must be a finite number"
        if not self.minimum <= value <= self.maximum:
            return f"must be between {self.minimum:g} and {self.maximum:g}"
        return None

    def encode(self, value: object) -> float:
        """The model input of a value that passed problem_with: a category's index, or the
        number."""
        if isinstance(value, str):
            return float(self.category_index[value])
        if isinstance(value, int | float):
            return float(value)
        raise TypeError(f"not a feature value: {value!r}")


@dataclass
class EncodedBatch:
    """A batch's rows as the model takes them, and what became of its odd values: each refused
    row's problems as (field, description), each clamped row's clamped feature names."""

    rows: np.ndarray  # the rows that can be scored, in batch order
    size: int  # rows in the batch, refused ones included
    refused: dict[int, list[tuple[str, str]]]
    clamped: dict[int, list[str]]


@dataclass(frozen=True)
class ScoredRows:
    """The results for a batch of rows, in row order, as plain Python values."""

    probability_of_default: list[float]
    score: list[int]
    band: list[str]  # band letters, "A" best
    reason_features: list[list[int]]  # per row, feature indices, largest cost first
    # [n][F], the score points each feature cost: an array for a batch, a list for one row.
    reason_points: Sequence[Sequence[float]]


class ScoreDistribution:
    """Live scores against the training distribution: the population stability index."""

    def __init__(self, bin_edges: Sequence[float], expected: Sequence[float], min_count: int):
        # Open the outer bins, so scores beyond the training range are still counted.
        self.inner_edges = np.asarray(bin_edges[1:-1], dtype=np.float64)
        self.expected = np.asarray(expected, dtype=np.float64)
        self._inner_edge_list = self.inner_edges.tolist()
        # Live scores per bin: a list, because most calls count a single score.
        self.counts = [0] * len(self.expected)
        self.min_count = min_count
        self._lock = threading.Lock()

    def record(self, scores: np.ndarray) -> None:
        bins = np.searchsorted(self.inner_edges, scores, side="right")
        counted = np.bincount(bins, minlength=len(self.counts)).tolist()
        with self._lock:
            for bin_index, count in enumerate(counted):
                self.counts[bin_index] += count

    def record_one(self, score: int) -> None:
        """`record` for one score, without arrays."""
        bin_index = bisect.bisect_right(self._inner_edge_list, score)
        with self._lock:
            self.counts[bin_index] += 1

    @property
    def live_count(self) -> int:
        return sum(self.counts)

    def index(self) -> float:
        """PSI = sum((actual - expected) * ln(actual / expected)); 0.0 with no live scores."""
        counts = np.array(self.counts, dtype=np.int64)
        total = counts.sum()
        if total == 0:
            return 0.0
        # A small floor keeps empty bins from making the index infinite.
        actual = np.maximum(counts / total, 1e-4)
        expected = np.maximum(self.expected, 1e-4)
        return float(np.sum((actual - expected) * np.log(actual / expected)))

    def status(self) -> str:
        """ "insufficient_data", "stable" (< 0.10), "watch" (0.10-0.25) or "act" (> 0.25)."""
        if self.live_count < self.min_count:
            return "insufficient_data"
        psi = self.index()
        return "stable" if psi < 0.10 else "watch" if psi <= 0.25 else "act"


class ServedModel:
    """One validated model version, ready to score from any thread."""

    def __init__(self, artifact: ModelArtifact, *, psi_min_count: int = 100) -> None:
        card = artifact.card
        self.artifact = artifact
        self.name: str = card["name"]
        self.version: str = card["version"]
        self.created_at = datetime.fromisoformat(card["created_at"].replace("Z", "+00:00"))
        self.features = [Feature.from_card(spec) for spec in card["features"]]
        self.feature_index = {f.name: i for i, f in enumerate(self.features)}
        self.scale = ScoreScale(card["score_scale"])
        self.risk_bands = RiskBands(card["risk_bands"])
        distribution = card["training_score_distribution"]
        self.distribution = ScoreDistribution(
            distribution["bin_edges"], distribution["proportions"], psi_min_count
        )
        # Per feature: name, category codes (None for a number), and the finite range of a
        # number; for encode_named's one-pass path.
        self._row_encoders = [
            (
                f.name,
                {c: float(i) for c, i in f.category_index.items()} if f.categorical else None,
                max(f.minimum, -sys.float_info.max),
                min(f.maximum, sys.float_info.max),
            )
            for f in self.features
        ]
        self._reasons = {
            locale: [(f.reason_code, f.name, f.reason_texts[locale]) for f in self.features]
            for locale in LOCALES
        }
        options = ort.SessionOptions()
        # One thread a call: the server's thread pool provides the parallelism, and
        # onnxruntime's spinning pool would starve the gRPC threads on a small machine.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            artifact.onnx, options, providers=["CPUExecutionProvider"]
        )

    # -- encoding -----------------------------------------------------------------------

    def encode_named(self, values: Mapping[str, object], field: str = "features") -> np.ndarray:
        """One row from feature values by name; every problem becomes a field violation."""
        # The usual row, every feature given and in range, in one pass; any other row takes
        # the checks below, which name each problem.
        row: list[float] = []
        for name, category_codes, low, high in self._row_encoders:
            value = values.get(name)
            if category_codes is not None:
                code = category_codes.get(value) if type(value) is str else None
                if code is None:
                    break
                row.append(code)
            elif type(value) is float and low <= value <= high:  # NaN, inf and bool fail it
                row.append(value)
            else:
                break
        else:
            if len(values) == len(row):
                return np.array([row], dtype=np.float32)
        return self._encode_named_checked(values, field)

    def _encode_named_checked(self, values: Mapping[str, object], field: str) -> np.ndarray:
        violations = Violations()
        for name in values:
            if name not in self.feature_index:
                violations.add(f"{field}[{name}]", f"unknown feature for model {self.name}")
        row = []
        for feature in self.features:
            if feature.name not in values:
                violations.add(f"{field}[{feature.name}]", "required feature is missing")
                continue
            value = values[feature.name]
            problem = feature.problem_with(value)
            if problem:
                violations.add(f"{field}[{feature.name}]", problem)
            else:
                row.append(feature.encode(value))
        violations.raise_if_any()
        return np.array([row], dtype=np.float32)

    def encode_columns(
        self, columns: Sequence[tuple[str, Sequence[float], Sequence[str]]], max_rows: int
    ) -> EncodedBatch:
        """Rows from columns of (name, numbers, categories). A malformed batch (a column
        unknown, missing or of the wrong length or kind) is refused whole; an odd value only
        touches its row: clamped to the feature's range, or the row refused alone."""
        violations = Violations()
        if not columns:
            violations.add("columns", "the batch is empty: send one column per feature")
            violations.raise_if_any()
        positions: dict[str, int] = {}
        for position, (name, _, _) in enumerate(columns):
            if name not in self.feature_index:
                violations.add(f"columns[{position}].name", f"unknown feature {name!r}")
            elif name in positions:
                violations.add(f"columns[{position}].name", f"feature {name!r} given twice")
            else:
                positions[name] = position
        for feature in self.features:
            if feature.name not in positions:
                violations.add("columns", f"required feature {feature.name!r} is missing")
        # Each column holds numbers or categories; a column of the wrong length is named below.
        n_rows = max(len(numbers) + len(categories) for _, numbers, categories in columns)
        if n_rows == 0 or n_rows > max_rows:
            problem = "has no rows" if n_rows == 0 else f"has {n_rows} rows, over the limit"
            violations.add("columns", f"the batch {problem} (at most {max_rows})")
            violations.raise_if_any()

        batch = EncodedBatch(
            np.empty((n_rows, len(self.features)), dtype=np.float32), n_rows, {}, {}
        )
        for i, feature in enumerate(self.features):
            if feature.name not in positions:
                continue  # already reported missing
            position = positions[feature.name]
            _, numbers, categories = columns[position]
            field = f"columns[{position}]"
            if feature.categorical:
                self._encode_categories(
                    feature, categories, numbers, field, n_rows, batch, i, violations
                )
            else:
                self._encode_numbers(
                    feature, numbers, categories, field, n_rows, batch, i, violations
                )
        violations.raise_if_any()
        if batch.refused:
            batch.rows = np.delete(batch.rows, sorted(batch.refused), axis=0)
        return batch

    @staticmethod
    def _encode_numbers(feature, numbers, categories, field, n_rows, batch, i, violations) -> None:
        if len(categories):
            violations.add(f"{field}.categories", f"{feature.name} is numeric: use numbers")
        if len(numbers) != n_rows:
            violations.add(f"{field}.numbers", f"has {len(numbers)} values, expected {n_rows}")
            return
        values = np.array(numbers, dtype=np.float64)  # protobuf's __array__: one copy, no floats
        finite = np.isfinite(values)
        outside = finite & ((values < feature.minimum) | (values > feature.maximum))
        # NaN marks a missing value: scored in the missing bin where the feature has one.
        unusable = ~finite & ~np.isnan(values) if feature.missing_bin else ~finite
        if not feature.clamps:
            unusable |= outside
        for row in np.flatnonzero(unusable).tolist():
            problem = feature.problem_with(float(values[row]))
            batch.refused.setdefault(row, []).append((f"{field}.numbers[{row}]", problem))
        if feature.clamps and outside.any():
            for row in np.flatnonzero(outside).tolist():
                batch.clamped.setdefault(row, []).append(feature.name)
            values = np.clip(values, feature.minimum, feature.maximum)
        batch.rows[:, i] = values

    @staticmethod
    def _encode_categories(feature, categories, numbers, field, n_rows, batch, i, violations):
        if len(numbers):
            violations.add(f"{field}.numbers", f"{feature.name} is categorical: use categories")
        if len(categories) != n_rows:
            violations.add(
                f"{field}.categories", f"has {len(categories)} values, expected {n_rows}"
            )
            return
        index = feature.category_index
        try:
            batch.rows[:, i] = np.fromiter(
                map(index.__getitem__, categories[:]), np.float32, n_rows
            )
            return
        except KeyError:
            pass  # an unknown category: its row is refused, the others encoded
        for row, category in enumerate(categories):
            if category in index:
                batch.rows[row, i] = index[category]
            else:
                problem = feature.problem_with(category)
                batch.refused.setdefault(row, []).append((f"{field}.categories[{row}]", problem))
                batch.rows[row, i] = 0.0

    # -- scoring ------------------------------------------------------------------------

    def score(self, rows: np.ndarray) -> ScoredRows:
        """Scores encoded rows in one onnxruntime run."""
        probability, reason_logits = self.session.run(OUTPUT_NAMES, {INPUT_NAME: rows})
        if len(rows) == 1:
            return self._score_one(probability.item(), reason_logits[0].tolist())
        probability = probability.astype(np.float64).reshape(-1)
        scores = self.scale.points(probability)
        reason_points = reason_logits.astype(np.float64) * self.scale.factor
        self.distribution.record(scores)
        return ScoredRows(
            probability_of_default=probability.tolist(),
            score=scores.tolist(),
            band=self.risk_bands.of(scores).tolist(),
            reason_features=top_reasons_by_row(reason_points, MAX_REASONS),
            reason_points=reason_points,
        )

    def _score_one(self, probability: float, reason_logits: list[float]) -> ScoredRows:
        """The same results for one row in plain floats: a dozen numpy calls on one-element
        arrays cost more than the model itself, and more still on a busy server."""
        score = self.scale.point(probability)
        reason_points = [logit * self.scale.factor for logit in reason_logits]
        self.distribution.record_one(score)
        return ScoredRows(
            probability_of_default=[probability],
            score=[score],
            band=[self.risk_bands.of_one(score)],
            reason_features=[top_reasons(reason_points, MAX_REASONS)],
            reason_points=[reason_points],
        )

    def reasons_in(self, locale: str) -> list[tuple[str, str, str]]:
        """Per feature, its reason code, name and reason text in `locale`."""
        return self._reasons[locale]


def normalise_locale(locale: str) -> str | None:
    """ "en" for an empty or English locale, "zh-CN" for Chinese, None when unsupported."""
    lowered = locale.strip().lower().replace("_", "-")
    if lowered in ("", "en") or lowered.startswith("en-"):
        return "en"
    if lowered in ("zh", "zh-cn", "zh-hans", "zh-hans-cn"):
        return "zh-CN"
    return None
