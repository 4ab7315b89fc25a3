"""Model inputs: the specification of one feature and the encoded data set a model learns from.

Both models take a float32 matrix whose columns are their features in order. A numeric feature
is its value (NaN where it is unknown and the feature has a missing bin); a categorical feature
is the index of its category in `FeatureSpec.categories`, as a float. This module is light
(numpy only) so the simulator can be reused without sklearn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

FeatureKind = Literal["numeric", "categorical"]
RiskDirection = Literal["increasing_risk", "decreasing_risk"]


@dataclass(frozen=True)
class FeatureSpec:
    """One model input as the model card describes it."""

    name: str
    kind: FeatureKind
    description: str
    reason_code: str
    reason_text_en: str
    reason_text_zh: str
    # Numeric features: the valid input range, inclusive.
    minimum: float | None = None
    maximum: float | None = None
    # Numeric features: fixed inner bin edges (a bin starts at each edge) for counts and
    # days past due, whose mass at zero makes quantile bins collapse; None means quantile bins.
    cut_points: tuple[float, ...] | None = None
    # Numeric features: how risk must move as the value grows. Fitting merges adjacent bins
    # until it does, so a directional reason text ("Long loan duration") is always true.
    risk_direction: RiskDirection | None = None
    # Categorical features: the allowed codes; the model sees a code's index here.
    categories: tuple[str, ...] = ()
    # Numeric features that can be unknown (no income declared): a missing value (NaN) falls
    # in a bin of its own, below `minimum`, whose points the data decide.
    missing_bin: bool = False

    def __post_init__(self) -> None:
        if self.kind == "categorical" and not self.categories:
            raise ValueError(f"categorical feature {self.name} needs categories")
        if self.kind == "numeric" and (self.minimum is None or self.maximum is None):
            raise ValueError(f"numeric feature {self.name} needs a valid range")
        if self.kind == "categorical" and self.risk_direction is not None:
            raise ValueError(f"categorical feature {self.name} has no order, so no direction")
        if self.kind == "categorical" and self.missing_bin:
            raise ValueError(f"categorical feature {self.name}: only numbers have a missing bin")


def numeric_feature(
    name: str,
    description: str,
    code: str,
    en: str,
    zh: str,
    minimum: float,
    maximum: float,
    risk_direction: RiskDirection | None = None,
    cut_points: tuple[float, ...] | None = None,
    *,
    missing_bin: bool = False,
) -> FeatureSpec:
    return FeatureSpec(
        name,
        "numeric",
        description,
        code,
        en,
        zh,
        minimum=minimum,
        maximum=maximum,
        cut_points=cut_points,
        risk_direction=risk_direction,
        missing_bin=missing_bin,
    )


@dataclass(frozen=True)
class TrainingData:
    """An encoded data set: X (float32, one column per feature) and y (1 = default)."""

    features: tuple[FeatureSpec, ...]
    X: np.ndarray
    y: np.ndarray
    source: str
    sha256: str
    simulated: bool
    notes: str
    # Protected attributes by name, one label per row; never model inputs, only for fairness.
    protected: dict[str, np.ndarray] = field(default_factory=dict)
    # Categorical inputs that stand in for a protected attribute, each with a coarser grouping
    # of its categories (runs of adjacent categories): the fairness search tries each feature
    # as it is, coarsened to these groups and with no points at all.
    proxies: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.X.dtype != np.float32 or self.X.shape != (len(self.y), len(self.features)):
            raise ValueError("X must be float32 with one row per label and one column per feature")

    @property
    def feature_names(self) -> list[str]:
        return [spec.name for spec in self.features]
