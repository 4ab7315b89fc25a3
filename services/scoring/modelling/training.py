"""Training and publishing: data to a validated model directory (ONNX, card, plots).

`train_model` writes `<output_dir>/<name>/<version>/` with model.onnx, card.json, roc.png,
score_distribution.png and calibration.png, and only after the ONNX export has passed the
parity check against sklearn on the holdout. The same seed and created_at give byte-identical
files. `train_default_models` trains both served models (`creditline model train`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from services.scoring.modelling import evaluation, plots
from services.scoring.modelling.features import FeatureSpec, TrainingData
from services.scoring.modelling.german_credit import load_german_credit
from services.scoring.modelling.parity import check_scorecard
from services.scoring.modelling.scale import score_from_pd
from services.scoring.modelling.scorecard import (
    QUANTILE_BINS,
    bin_points,
    export_onnx,
    fit_scorecard,
    monotone_direction,
    reason_points,
)
from services.scoring.modelling.simulator import simulated_training_data

ModelName = Literal["application", "behaviour"]
MODEL_NAMES: tuple[ModelName, ...] = ("application", "behaviour")
# Called as progress(description, completed_steps, total_steps).
Progress = Callable[[str, int, int], None]

DEFAULT_CREATED_AT = "2026-11-22T00:00:00Z"
HOLDOUT_SHARE = 0.3
CV_FOLDS = 5
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
PARITY_SAMPLE_ROWS = 50
MAX_REASONS = 4
SIGNIFICANT_DIGITS = 10
SCORE_SCALE = {"base_points": 600, "base_odds": 50, "pdo": 20, "min_points": 300, "max_points": 900}
LIBRARIES = ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy")
STEPS = (
    "loading data",
    "cross-validating",
    "fitting",
    "exporting ONNX",
    "checking parity",
    "evaluating",
    "writing card and plots",
    "published",
)

DESCRIPTIONS = {
    "application": "Probability that an applicant for a first credit line defaults, from the "
    "application form. Used for initial grants.",
    "behaviour": "Probability that a credit line on book goes 90+ days past due within 12 "
    "months, from its repayment and credit-seeking behaviour. Used for reviews, "
    "increases, reductions and reopening.",
}
OUTCOMES = {
    "application": "Default = the applicant was labelled a bad credit risk (German Credit "
    "'creditability' = bad); the data set does not state the outcome window.",
    "behaviour": "Default = 90 or more days past due at any month end within the 12 months "
    "after the observation point; accounts already 90+ days past due are excluded.",
}
EXPLANATION_METHOD = (
    "reason_points are computed inside the ONNX graph: for each feature, the logit-of-default "
    "contribution of the bin the value falls in minus the smallest contribution that feature "
    "can take (0 = the feature is at its best value). The reasons are the features with the "
    "most points above 0, largest first, at most max_reasons; ties keep feature order."
)
FAIRNESS_METHOD = "adverse impact ratio of approval rates at the band C cut-off; four-fifths screen"


def _created_at(created_at: str | None) -> str:
    if created_at is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        moment = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    datetime.strptime(created_at, "%Y-%m-%dT%H:%M:%SZ")  # raises ValueError when malformed
    return created_at


def load_training_data(name: ModelName, seed: int, simulated_accounts: int) -> TrainingData:
    if name == "application":
        return load_german_credit()
    if name == "behaviour":
        return simulated_training_data(simulated_accounts, seed)
    raise ValueError(f"unknown model {name!r}")


def cross_validate(
    features: Sequence[FeatureSpec], X: np.ndarray, y: np.ndarray, seed: int
) -> tuple[float, dict]:
    """Stratified 5-fold CV over C_GRID; the C with the best mean log loss and its metrics.

    Log loss rather than AUC: a PD model must be calibrated as well as ranked, and AUC cannot
    see calibration (it picked over-regularised, under-confident models here).
    """
    folds = list(StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed).split(X, y))
    results = {}
    for C in C_GRID:
        per_fold = []
        for fit_rows, test_rows in folds:
            model = fit_scorecard(features, X[fit_rows], y[fit_rows], C)
            per_fold.append(
                evaluation.discrimination(y[test_rows], model.predict_proba(X[test_rows])[:, 1])
            )
        results[C] = {
            f"{metric}_{stat}": float(fn([fold[metric] for fold in per_fold]))
            for metric in per_fold[0]
            for stat, fn in (("mean", np.mean), ("std", np.std))
        }
    best = min(C_GRID, key=lambda C: results[C]["log_loss_mean"])
    return best, {
        "folds": CV_FOLDS,
        **results[best],
        "log_loss_mean_by_c": {str(C): results[C]["log_loss_mean"] for C in C_GRID},
    }


def _feature_card(spec: FeatureSpec, points: np.ndarray, binner) -> dict:
    """The card's entry for one feature, with its fitted bins and their reason points.

    `bin_points` are the reason points of each bin (numeric: bins in order, a bin starting at
    each of `cut_points`) or category, so a reader can see what would change a score.
    """
    card: dict[str, Any] = {"name": spec.name, "type": spec.kind, "description": spec.description}
    if spec.kind == "numeric":
        card.update(
            {
                "min": spec.minimum,
                "max": spec.maximum,
                "monotone": monotone_direction(points),
                "cut_points": list(binner.cut_points),
            }
        )
    else:
        card.update({"categories": list(spec.categories), "monotone": "none"})
    card.update(
        {
            "missing": "required",
            "reason_code": spec.reason_code,
            "reason_text": {"en": spec.reason_text_en, "zh-CN": spec.reason_text_zh},
            "bin_points": (points - points.min()).tolist(),
        }
    )
    return card


def _rounded(value):
    """Floats to SIGNIFICANT_DIGITS, recursively: stable, readable JSON."""
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    if isinstance(value, np.generic):
        return _rounded(value.item())
    return value


def _parity_sample(pipeline: Pipeline, X_holdout: np.ndarray) -> tuple[np.ndarray, dict]:
    """Holdout rows rounded to 6 significant digits (exact in JSON) and sklearn's outputs."""
    values = [[float(f"{v:.6g}") for v in row] for row in X_holdout[:PARITY_SAMPLE_ROWS]]
    rows = np.array(values, dtype=np.float32)
    return rows, {
        "features": values,
        "probability_of_default": pipeline.predict_proba(rows)[:, 1].tolist(),
        "reason_points": reason_points(pipeline, rows).tolist(),
    }


def _fairness(name: str, data: TrainingData, pipeline: Pipeline, bands: list[dict]) -> dict:
    if not data.protected:
        return {
            "method": FAIRNESS_METHOD,
            "groups": {},
            "notes": "Not measured: the simulated accounts have no protected attributes. "
            "Measure it on real accounts before relying on this model.",
        }
    scores = score_from_pd(pipeline.predict_proba(data.X)[:, 1], SCORE_SCALE)
    return {
        "method": FAIRNESS_METHOD,
        "groups": evaluation.adverse_impact(scores, data.y, bands, data.protected),
        "notes": f"All {len(data.y)} rows of the {name} data scored by this model "
        f"(in-sample for the training rows). Protected attributes are not inputs.",
    }


def _write(directory: Path, files: dict[str, bytes]) -> None:
    """Write into a temporary sibling and swap it in, so no reader sees half a model."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private
    try:
        for filename, content in files.items():
            (staging / filename).write_bytes(content)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class FittedModel:
    """A scorecard fitted on the training split, with its data, split and CV results."""

    name: str
    data: TrainingData
    train_rows: np.ndarray
    holdout_rows: np.ndarray
    C: float
    cross_validation: dict
    pipeline: Pipeline


def fit_model(
    name: ModelName,
    *,
    seed: int = 7,
    simulated_accounts: int = 20000,
    report: Callable[[int], None] = lambda step: None,
) -> FittedModel:
    """Load the data, split off a stratified holdout, pick C by 5-fold CV and fit."""
    # One thread: reproducible floating point, and fast on small shared machines.
    with threadpool_limits(limits=1):
        report(STEPS.index("loading data"))
        data = load_training_data(name, seed, simulated_accounts)
        train_rows, holdout_rows = train_test_split(
            np.arange(len(data.y)), test_size=HOLDOUT_SHARE, stratify=data.y, random_state=seed
        )
        X_train, y_train = data.X[train_rows], data.y[train_rows]
        report(STEPS.index("cross-validating"))
        C, cross_validation = cross_validate(data.features, X_train, y_train, seed)
        report(STEPS.index("fitting"))
        pipeline = fit_scorecard(data.features, X_train, y_train, C)
    return FittedModel(name, data, train_rows, holdout_rows, C, cross_validation, pipeline)


def train_model(
    name: ModelName,
    output_dir: Path,
    *,
    seed: int = 7,
    version: str = "1.0.0",
    created_at: str | None = None,
    simulated_accounts: int = 20000,
    progress: Progress | None = None,
) -> Path:
    """Train, evaluate, export and publish one model; returns its directory.

    Raises ParityError (and writes nothing) when the ONNX export does not match sklearn.
    """
    created_at = _created_at(created_at)

    def report(step: int) -> None:
        if progress is not None:
            progress(f"{name}: {STEPS[step]}", step, len(STEPS) - 1)

    fitted = fit_model(name, seed=seed, simulated_accounts=simulated_accounts, report=report)
    data, pipeline = fitted.data, fitted.pipeline
    X_train, y_train = data.X[fitted.train_rows], data.y[fitted.train_rows]
    X_holdout, y_holdout = data.X[fitted.holdout_rows], data.y[fitted.holdout_rows]
    with threadpool_limits(limits=1):
        report(STEPS.index("exporting ONNX"))
        model_bytes = export_onnx(pipeline, name, version)
        report(STEPS.index("checking parity"))
        holdout_pd = pipeline.predict_proba(X_holdout)[:, 1]
        parity = check_scorecard(
            model_bytes, X_holdout, holdout_pd, reason_points(pipeline, X_holdout)
        )
        sample_rows, parity_sample = _parity_sample(pipeline, X_holdout)
        # The sample's rows are rounded; check the export on exactly what the card stores.
        check_scorecard(
            model_bytes,
            sample_rows,
            parity_sample["probability_of_default"],
            parity_sample["reason_points"],
        )

        report(STEPS.index("evaluating"))
        train_scores = score_from_pd(pipeline.predict_proba(X_train)[:, 1], SCORE_SCALE)
        holdout_scores = score_from_pd(holdout_pd, SCORE_SCALE)
        bands = evaluation.risk_bands(train_scores, SCORE_SCALE["min_points"])
        calibration = evaluation.calibration_table(y_holdout, holdout_pd)
        holdout_metrics = {
            **evaluation.discrimination(y_holdout, holdout_pd),
            "rows": len(y_holdout),
            "default_rate": float(y_holdout.mean()),
        }
        fairness = _fairness(name, data, pipeline, bands)

    report(STEPS.index("writing card and plots"))
    binners = pipeline.named_steps["bins"].named_transformers_
    card = {
        "name": name,
        "version": version,
        "created_at": created_at,
        "description": DESCRIPTIONS[name],
        "model_type": "binned_logistic_scorecard",
        "outcome": OUTCOMES[name],
        "training_data": {
            "source": data.source,
            "sha256": data.sha256,
            "rows": len(data.y),
            "simulated": data.simulated,
            "default_rate": float(data.y.mean()),
            "notes": data.notes,
        },
        "features": [
            _feature_card(spec, points, binners[spec.name])
            for spec, points in zip(data.features, bin_points(pipeline), strict=True)
        ],
        "hyperparameters": {
            "C": fitted.C,
            "penalty": "l2",
            "solver": "lbfgs",
            "quantile_bins": QUANTILE_BINS,
            "holdout_share": HOLDOUT_SHARE,
            "seed": seed,
        },
        "score_scale": SCORE_SCALE,
        "risk_bands": evaluation.with_outcomes(bands, holdout_scores, y_holdout),
        "metrics": {"holdout": holdout_metrics, "cross_validation": fitted.cross_validation},
        "calibration": calibration,
        "fairness": fairness,
        "explanations": {"method": EXPLANATION_METHOD, "max_reasons": MAX_REASONS},
        "training_score_distribution": evaluation.score_distribution(train_scores, SCORE_SCALE),
        "parity": {
            "rows": parity.rows,
            "max_abs_diff_probability": parity.max_abs_diff_probability,
            "max_abs_diff_reason_points": parity.max_abs_diff_reason_points,
            "tolerance": parity.tolerance,
        },
        "parity_sample": parity_sample,
        "libraries": {library: installed_version(library) for library in LIBRARIES},
        "onnx_sha256": hashlib.sha256(model_bytes).hexdigest(),
    }
    title = f"{name} {version}"
    directory = output_dir / name / version
    _write(
        directory,
        {
            "model.onnx": model_bytes,
            "card.json": (
                json.dumps(_rounded(card), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            ).encode("utf-8"),
            "roc.png": plots.roc_png(title, y_holdout, holdout_pd, holdout_metrics["auc"]),
            "score_distribution.png": plots.score_distribution_png(
                title, train_scores, y_train, bands
            ),
            "calibration.png": plots.calibration_png(title, calibration),
        },
    )
    report(STEPS.index("published"))
    return directory


def train_default_models(
    output_dir: Path,
    seed: int = 7,
    created_at: str = DEFAULT_CREATED_AT,
    progress: Progress | None = None,
    *,
    version: str = "1.0.0",
) -> list[Path]:
    """Train and publish the application and behaviour models with the default settings.

    created_at is pinned by default so that `make models` reproduces the committed bytes.
    """
    return [
        train_model(
            name,
            Path(output_dir),
            seed=seed,
            version=version,
            created_at=created_at,
            progress=progress,
        )
        for name in MODEL_NAMES
    ]
