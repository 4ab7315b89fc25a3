"""The model: a binned logistic scorecard, its reason points and its ONNX export.

Every feature is binned on its own and a logistic regression (L2) weighs the bins. A numeric
feature starts from quantile bins (5, edges at training values) or from fixed cut points (counts
and days past due, mostly 0, on which quantile bins collapse); where a feature has an expected
risk direction, adjacent bins that go against it are merged and the model refit until none do.
A feature that can be unknown has a first bin for NaN alone, outside that order.
A categorical feature is one-hot over its categories' indices, unless its categories are
grouped (`category_groups`): then a bin starts at each group's first category, which must follow
the previous group's last, and one group of all its categories gives the feature no points.

A bin's coefficient is its contribution to the logit of default, so a feature's reason points
are its bin's coefficient minus the feature's smallest coefficient: 0 at its best value. The
export follows `contract.py`: skl2onnx converts the fitted scorecard with the converter
registered below (`ScorecardGraph`), which computes the probability and the reason points in
ten nodes; the parity check holds it to scikit-learn's own predictions row by row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn, update_registered_converter
from skl2onnx.common.data_types import FloatTensorType
from skl2onnx.operator_converters.k_bins_discretiser import convert_sklearn_k_bins_discretiser
from skl2onnx.shape_calculators.k_bins_discretiser import calculate_sklearn_k_bins_discretiser
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from sklearn.utils.validation import check_is_fitted, validate_data

from services.scoring.modelling.contract import (
    INPUT_NAME,
    PROBABILITY_OUTPUT,
    REASON_POINTS_OUTPUT,
)
from services.scoring.modelling.features import FeatureSpec

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
QUANTILE_BINS = 5


class CutPointBinner(TransformerMixin, BaseEstimator):
    """One-hot bins of one column at given cut points; a bin starts at each cut point.

    A KBinsDiscretizer cannot drop a single edge, which merging bins needs. This one keeps
    KBinsDiscretizer's fitted attributes (`bin_edges_`, `n_bins_`, `encode`) and binning rule,
    so skl2onnx exports it with its own KBinsDiscretizer converter.
    """

    encode = "onehot-dense"

    def __init__(self, cut_points: Sequence[float] = ()):
        self.cut_points = cut_points

    def fit(self, X, y=None):
        validate_data(self, X, dtype=np.float32, ensure_all_finite="allow-nan")
        if self.n_features_in_ != 1:
            raise ValueError("CutPointBinner bins exactly one column")
        edges = np.empty(1, dtype=object)
        edges[0] = np.array([-np.inf, *self.cut_points, np.inf])
        self.bin_edges_ = edges
        self.n_bins_ = np.array([len(self.cut_points) + 1])
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False, ensure_all_finite="allow-nan")
        bins = np.searchsorted(self.bin_edges_[0][1:-1], X[:, 0], side="right")
        # NaN is at or above no edge: the first bin, as in the ONNX graph (a missing bin).
        bins[np.isnan(X[:, 0])] = 0
        return np.eye(self.n_bins_[0], dtype=np.float32)[bins]


update_registered_converter(
    CutPointBinner,
    "CreditlineCutPointBinner",
    calculate_sklearn_k_bins_discretiser,
    convert_sklearn_k_bins_discretiser,
)


def quantile_cut_points(values: np.ndarray, bins: int = QUANTILE_BINS) -> tuple[float, ...]:
    """Inner edges of up to `bins` equal-count bins; tied quantiles merge.

    Inverted-CDF quantiles are training values, which float32 represents exactly, so sklearn
    and ONNX (float32 edges) cut at the same place.
    """
    values = values[~np.isnan(values)]  # missing values have a bin of their own
    levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    edges = np.unique(np.quantile(values, levels, method="inverted_cdf"))
    return tuple(float(edge) for edge in edges if edge > values.min())


def category_cut_points(spec: FeatureSpec, groups: Sequence[Sequence[str]]) -> tuple[float, ...]:
    """Cut points over a categorical feature's indices that bin its categories in `groups`.

    The groups must cover the categories in their order, so each is a run of adjacent indices
    and a bin starts half-way before its group's first index (the ONNX graph's category rule).
    """
    if [c for group in groups for c in group] != list(spec.categories) or not all(groups):
        raise ValueError(
            f"groups of {spec.name} must cover its categories in order: {list(spec.categories)}"
        )
    starts = np.cumsum([len(group) for group in groups])[:-1]
    return tuple(float(start) - 0.5 for start in starts)


def _binner(spec: FeatureSpec, cut_points: Mapping[str, tuple[float, ...]]):
    if spec.kind == "categorical" and spec.name not in cut_points:
        return OneHotEncoder(
            categories=[[float(i) for i in range(len(spec.categories))]],
            handle_unknown="error",
            sparse_output=False,
            dtype=np.float32,
        )
    return CutPointBinner(cut_points[spec.name])


def build_pipeline(
    features: Sequence[FeatureSpec], cut_points: Mapping[str, tuple[float, ...]], C: float
) -> Pipeline:
    """An unfitted scorecard: one binner per feature, in feature order, then L2 logistic.

    `cut_points` holds every numeric feature's and each grouped categorical feature's cuts.
    """
    bins = ColumnTransformer(
        [(spec.name, _binner(spec, cut_points), [j]) for j, spec in enumerate(features)],
        sparse_threshold=0.0,
    )
    # L2 is LogisticRegression's default penalty; lbfgs is deterministic.
    return Pipeline(
        [("bins", bins), ("logistic", LogisticRegression(C=C, solver="lbfgs", max_iter=5000))]
    )


def numeric_cut_points(
    spec: FeatureSpec, values: np.ndarray, quantile_bins: int = QUANTILE_BINS
) -> tuple[float, ...]:
    """A numeric feature's starting cut points. With a missing bin, the first cut is the
    feature's minimum: every value is at or above it, so only NaN scores in the bin before."""
    cuts = (
        tuple(spec.cut_points)
        if spec.cut_points is not None
        else quantile_cut_points(values, quantile_bins)
    )
    if spec.missing_bin:
        assert spec.minimum is not None  # numeric
        return (spec.minimum, *(cut for cut in cuts if cut > spec.minimum))
    return cuts


def valued_bin_points(spec: FeatureSpec, points: np.ndarray) -> np.ndarray:
    """The points of the bins that hold values: all but a missing bin."""
    return points[1:] if spec.missing_bin else points


def _first_violation(spec: FeatureSpec, points: np.ndarray) -> int | None:
    """Index of the first cut point whose two bins go against the feature's risk direction,
    if any. A missing bin has no place in the order, so it is never merged."""
    direction = spec.risk_direction
    if direction is None:
        return None
    offset = 1 if spec.missing_bin else 0
    steps = np.diff(points[offset:])
    wrong = steps < 0 if direction == "increasing_risk" else steps > 0
    return int(np.argmax(wrong)) + offset if wrong.any() else None


def fit_scorecard(
    features: Sequence[FeatureSpec],
    X: np.ndarray,
    y: np.ndarray,
    C: float,
    *,
    quantile_bins: int = QUANTILE_BINS,
    category_groups: Mapping[str, Sequence[Sequence[str]]] | None = None,
) -> Pipeline:
    """Fit; while a feature's bin points go against its risk direction, merge and refit.

    `quantile_bins` is the starting granularity of numeric features without fixed cut points;
    `category_groups` bins the named categorical features by groups of their categories.
    """
    category_groups = category_groups or {}
    cut_points = {
        spec.name: numeric_cut_points(spec, X[:, j], quantile_bins)
        for j, spec in enumerate(features)
        if spec.kind == "numeric"
    }
    specs = {spec.name: spec for spec in features}
    for name, groups in category_groups.items():
        if specs[name].kind != "categorical":
            raise ValueError(f"{name} is not categorical: its categories cannot be grouped")
        cut_points[name] = category_cut_points(specs[name], groups)
    while True:
        pipeline = build_pipeline(features, cut_points, C).fit(X, y)
        merged = False
        for spec, points in zip(features, bin_points(pipeline), strict=True):
            violation = _first_violation(spec, points)
            if violation is not None:
                cuts = cut_points[spec.name]
                cut_points[spec.name] = cuts[:violation] + cuts[violation + 1 :]
                merged = True
        if not merged:
            return pipeline


def _feature_columns(pipeline: Pipeline) -> list[slice]:
    """Per feature, in feature order: its columns in the one-hot vector fed to the logistic."""
    bins: ColumnTransformer = pipeline.named_steps["bins"]
    return [bins.output_indices_[name] for name, _, _ in bins.transformers]


def bin_points(pipeline: Pipeline) -> list[np.ndarray]:
    """Per feature, in feature order: each bin's contribution to the logit of default."""
    coefficients = pipeline.named_steps["logistic"].coef_[0]
    return [coefficients[columns] for columns in _feature_columns(pipeline)]


def reason_weights(pipeline: Pipeline) -> tuple[np.ndarray, np.ndarray]:
    """W [n_bins, F] mapping one-hot bins to their feature's points, and each feature's best."""
    coefficients = pipeline.named_steps["logistic"].coef_[0]
    feature_columns = _feature_columns(pipeline)
    weights = np.zeros((len(coefficients), len(feature_columns)))
    for f, columns in enumerate(feature_columns):
        weights[columns, f] = coefficients[columns]
    return weights, np.array([coefficients[columns].min() for columns in feature_columns])


def reason_points(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:
    """sklearn's reason points (float64): what the ONNX graph computes in float32."""
    weights, best = reason_weights(pipeline)
    return pipeline.named_steps["bins"].transform(X) @ weights - best


def monotone_direction(points: np.ndarray) -> str:
    """How a numeric feature's risk moves with its value, as fitted ("none" if flat)."""
    steps = np.diff(points)
    if not steps.any():
        return "none"
    if (steps >= 0).all():
        return "increasing_risk"
    if (steps <= 0).all():
        return "decreasing_risk"
    return "none"


class ScorecardGraph:
    """A fitted scorecard in the form skl2onnx exports: bins, then points, then their sum.

    skl2onnx's own conversion of the pipeline makes one branch per feature (132 nodes for the
    application model) and costs about 80 µs a row in onnxruntime, most of it per-node
    overhead. A scorecard needs ten: a value's bin is the number of inner edges at or below
    it (KBinsDiscretizer's rule; a category's index falls between edges at i - 0.5), its
    points are a lookup, and the logit is their sum plus the intercept.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        bins: ColumnTransformer = pipeline.named_steps["bins"]
        logistic: LogisticRegression = pipeline.named_steps["logistic"]
        inner_edges = []
        for _, binner, _ in bins.transformers_:
            if isinstance(binner, OneHotEncoder):
                inner_edges.append(np.arange(len(binner.categories_[0]) - 1) + 0.5)
            else:
                inner_edges.append(binner.bin_edges_[0][1:-1])
        width = max(1, *(len(edges) for edges in inner_edges))
        # Padding with +inf: no value is at or above it, so it never counts as a bin edge.
        self.edges = np.full((len(inner_edges), width), np.inf, dtype=np.float32)
        for f, edges in enumerate(inner_edges):
            self.edges[f, : len(edges)] = edges
        columns = _feature_columns(pipeline)
        self.offsets = np.array([c.start for c in columns], dtype=np.int64)
        coefficients = logistic.coef_[0]
        self.points = coefficients.astype(np.float32)
        self.best = np.array([coefficients[c].min() for c in columns], dtype=np.float32)
        self.intercept = np.array(logistic.intercept_[0], dtype=np.float32)

    @property
    def n_features(self) -> int:
        return len(self.offsets)


def _parse_scorecard(scope, model, inputs, custom_parsers=None):
    operator = scope.declare_local_operator("CreditlineScorecard", model)
    operator.inputs = inputs
    for output in (PROBABILITY_OUTPUT, REASON_POINTS_OUTPUT):
        operator.outputs.append(scope.declare_local_variable(output, FloatTensorType()))
    return operator.outputs


def _scorecard_shapes(operator) -> None:
    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([rows])
    operator.outputs[1].type = FloatTensorType([rows, operator.raw_operator.n_features])


def _convert_scorecard(scope, operator, container) -> None:
    graph: ScorecardGraph = operator.raw_operator
    probability, reason = (output.full_name for output in operator.outputs)

    def constant(name: str, value: np.ndarray) -> str:
        unique = scope.get_unique_variable_name(name)
        container.add_initializer(
            unique,
            helper.np_dtype_to_tensor_dtype(value.dtype),
            value.shape,
            value.ravel().tolist(),
        )
        return unique

    def node(op: str, inputs: list[str], output: str | None = None, **attributes) -> str:
        output = output or scope.get_unique_variable_name(op.lower())
        container.add_node(
            op,
            inputs,
            [output],
            name=scope.get_unique_operator_name(op),
            op_version=17,
            **attributes,
        )
        return output

    values = node("Unsqueeze", [operator.inputs[0].full_name, constant("axis_2", np.array([2]))])
    at_or_above = node("GreaterOrEqual", [values, constant("bin_edges", graph.edges)])
    counts = node("Cast", [at_or_above], to=TensorProto.INT64)
    bins = node("ReduceSum", [counts, constant("axis_2b", np.array([2]))], keepdims=0)
    bin_index = node("Add", [bins, constant("bin_offsets", graph.offsets)])
    feature_points = node("Gather", [constant("bin_points", graph.points), bin_index], axis=0)
    total = node("ReduceSum", [feature_points, constant("axis_1", np.array([1]))], keepdims=0)
    logit = node("Add", [total, constant("intercept", graph.intercept)])
    node("Sigmoid", [logit], probability)
    node("Sub", [feature_points, constant("best_points", graph.best)], reason)


update_registered_converter(
    ScorecardGraph,
    "CreditlineScorecard",
    _scorecard_shapes,
    _convert_scorecard,
    parser=_parse_scorecard,
)


def export_onnx(pipeline: Pipeline, name: str, version: str) -> bytes:
    """The scorecard as ONNX bytes with exactly the contract's input and two outputs."""
    graph = ScorecardGraph(pipeline)
    model = convert_sklearn(
        graph,
        name=name,
        target_opset=TARGET_OPSET,
        initial_types=[(INPUT_NAME, FloatTensorType([None, graph.n_features]))],
    )
    model.producer_name, model.producer_version = "creditline", version
    model.doc_string = f"creditline {name} scorecard {version}"
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
