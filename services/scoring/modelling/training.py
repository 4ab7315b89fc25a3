"""Training and publishing: data to a validated model directory (ONNX, card, plots).

`train_model` writes `<output_dir>/<name>/<version>/` with model.onnx, card.json, roc.png,
score_distribution.png and calibration.png, and only after the ONNX export has passed the
parity check against sklearn on the holdout and the card the fairness gate (`check_fairness`).
The same seed and created_at give byte-identical files. `train_default_models` trains both
served models (`creditline model train`).

A model with protected attributes to measure is chosen by a search for a less discriminatory
alternative (`SearchGrid`): every scorecard of a small grid of its own knobs is cross-validated,
and among those within FAIRNESS_AUC_TOLERANCE of the best AUC (and FAIRNESS_LOG_LOSS_TOLERANCE of
the best log loss) the one with the highest worst-group adverse impact ratio is fitted. The card
records the grid, every candidate and why the chosen one stands (`fairness.search`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from services.scoring.modelling import evaluation, plots
from services.scoring.modelling.artifact import FOUR_FIFTHS, check_fairness
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
    valued_bin_points,
)
from services.scoring.modelling.simulator import simulated_training_data

ModelName = Literal["application", "behaviour"]
MODEL_NAMES: tuple[ModelName, ...] = ("application", "behaviour")
# The version each model is published as by default: the one committed under models/.
# application 1.1.0 is the first chosen by the fairness search; behaviour 2.0.0 the first trained
# on monitoring's own features of the simulator's events (with missing bins for income).
DEFAULT_VERSIONS: dict[str, str] = {"application": "1.1.0", "behaviour": "2.0.0"}
# Called as progress(description, completed_steps, total_steps).
Progress = Callable[[str, int, int], None]

DEFAULT_CREATED_AT = "2026-11-22T00:00:00Z"
HOLDOUT_SHARE = 0.3
CV_FOLDS = 5
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
# The fairness search's eligibility: as good a ranking (CV AUC) and as good a calibration (CV
# log loss, which AUC cannot see: bands and lines are set on the probability) as the best found.
FAIRNESS_AUC_TOLERANCE = 0.005
FAIRNESS_LOG_LOSS_TOLERANCE = 0.01
# What the search may do with a feature that stands in for a protected attribute: keep it, bin
# it by its coarser groups, or give it no points (one bin; it stays an input of the contract).
PROXY_TREATMENTS = ("as_is", "coarse", "none")
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
SEARCH_METHOD = (
    "Every combination of the grid is a scorecard cross-validated on the training split with the "
    "same stratified 5 folds as the model's metrics; its AIRs are out of fold: each fold's rows "
    "approved at the band C cut-off of the scores of the rows it was fitted on, pooled over the "
    "folds. Monotone risk directions are enforced in every candidate (reason texts rely on them). "
    "Eligible: CV AUC within auc_tolerance of the best and CV log loss within log_loss_tolerance "
    "of the best. Chosen: the eligible candidate with the highest worst-group AIR (ties: higher "
    "CV AUC, then grid order)."
)


@dataclass(frozen=True)
class SearchGrid:
    """The size of the search for a less discriminatory alternative: every combination is tried.

    quantile_bins: the starting granularity of quantile-binned numeric features (each bin at
    least 1/q of the rows before monotone merging); C: the L2 regularisation; treatments: what
    each proxy feature (`TrainingData.proxies`) may be, from PROXY_TREATMENTS.
    """

    quantile_bins: tuple[int, ...] = (3, 4, 5, 6)
    C: tuple[float, ...] = C_GRID
    treatments: tuple[str, ...] = PROXY_TREATMENTS

    def __post_init__(self) -> None:
        if not (self.quantile_bins and self.C and self.treatments):
            raise ValueError("a search grid needs at least one value of each knob")
        unknown = set(self.treatments) - set(PROXY_TREATMENTS)
        if unknown:
            raise ValueError(f"unknown proxy treatments {sorted(unknown)}; {PROXY_TREATMENTS}")


# `creditline model train`: 4 granularities x 5 C x 3 x 3 proxy treatments, 180 scorecards.
FULL_SEARCH = SearchGrid()


@dataclass(frozen=True)
class Candidate:
    """One scorecard of the search: its knobs, and the treatment of each proxy feature."""

    quantile_bins: int
    C: float
    treatments: tuple[tuple[str, str], ...] = ()

    def category_groups(self, data: TrainingData) -> dict[str, tuple[tuple[str, ...], ...]]:
        specs = {spec.name: spec for spec in data.features}
        groups = {}
        for feature, treatment in self.treatments:
            if treatment == "coarse":
                groups[feature] = data.proxies[feature]
            elif treatment == "none":
                groups[feature] = (tuple(specs[feature].categories),)
        return groups

    def describe(self) -> str:
        words = {"as_is": "as is", "coarse": "coarsened", "none": "with no points"}
        proxies = "".join(f", {feature} {words[t]}" for feature, t in self.treatments)
        return f"{self.quantile_bins} quantile bins, C {self.C:g}{proxies}"


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


def _folds(X: np.ndarray, y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed).split(X, y))


def _cross_validate_one(
    features: Sequence[FeatureSpec],
    X: np.ndarray,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    C: float,
    *,
    quantile_bins: int = QUANTILE_BINS,
    category_groups: dict | None = None,
    protected: dict[str, np.ndarray] | None = None,
) -> tuple[dict, dict[str, float]]:
    """One scorecard's mean and std of each metric over the folds, and its out-of-fold AIRs.

    A fold's held-out rows are approved at the band C cut-off of the scores of the rows it was
    fitted on (as the served model's bands come from its training scores).
    """
    per_fold = []
    approved = np.zeros(len(y), dtype=bool)
    for fit_rows, test_rows in folds:
        model = fit_scorecard(
            features,
            X[fit_rows],
            y[fit_rows],
            C,
            quantile_bins=quantile_bins,
            category_groups=category_groups,
        )
        test_pd = model.predict_proba(X[test_rows])[:, 1]
        per_fold.append(evaluation.discrimination(y[test_rows], test_pd))
        if protected:
            fit_scores = score_from_pd(model.predict_proba(X[fit_rows])[:, 1], SCORE_SCALE)
            bands = evaluation.risk_bands(fit_scores, SCORE_SCALE["min_points"])
            approved[test_rows] = evaluation.approvals(score_from_pd(test_pd, SCORE_SCALE), bands)
    summary = {
        f"{metric}_{stat}": float(fn([fold[metric] for fold in per_fold]))
        for metric in per_fold[0]
        for stat, fn in (("mean", np.mean), ("std", np.std))
    }
    airs = {
        attribute: evaluation.impact_ratio(approved, labels)
        for attribute, labels in (protected or {}).items()
    }
    return summary, airs


def cross_validate(
    features: Sequence[FeatureSpec], X: np.ndarray, y: np.ndarray, seed: int
) -> tuple[float, dict]:
    """Stratified 5-fold CV over C_GRID; the C with the best mean log loss and its metrics.

    Log loss rather than AUC: a PD model must be calibrated as well as ranked, and AUC cannot
    see calibration (it picked over-regularised, under-confident models here).
    """
    folds = _folds(X, y, seed)
    results = {C: _cross_validate_one(features, X, y, folds, C)[0] for C in C_GRID}
    best = min(C_GRID, key=lambda C: results[C]["log_loss_mean"])
    return best, {
        "folds": CV_FOLDS,
        **results[best],
        "log_loss_mean_by_c": {str(C): results[C]["log_loss_mean"] for C in C_GRID},
    }


def _candidate_record(candidate: Candidate, summary: dict, airs: dict[str, float]) -> dict:
    worst = min(airs, key=airs.__getitem__)
    return {
        "quantile_bins": candidate.quantile_bins,
        "C": candidate.C,
        "proxies": dict(candidate.treatments),
        "cv_auc": summary["auc_mean"],
        "cv_log_loss": summary["log_loss_mean"],
        "air": airs,
        "worst_air": airs[worst],
        "worst_attribute": worst,
    }


def search_alternatives(
    data: TrainingData,
    train_rows: np.ndarray,
    seed: int,
    grid: SearchGrid,
) -> tuple[Candidate, dict, dict]:
    """Cross-validate every scorecard of `grid`; the chosen one, its CV metrics, the record.

    The record (the card's `fairness.search`, without its rationale) lists every candidate
    with its CV AUC, log loss and out-of-fold AIR per protected attribute.
    """
    X, y = data.X[train_rows], data.y[train_rows]
    protected = {attribute: labels[train_rows] for attribute, labels in data.protected.items()}
    folds = _folds(X, y, seed)
    proxies = list(data.proxies)
    candidates = [
        Candidate(bins, C, tuple(zip(proxies, treatments, strict=True)))
        for bins, C, treatments in itertools.product(
            grid.quantile_bins, grid.C, itertools.product(grid.treatments, repeat=len(proxies))
        )
    ]
    summaries, records = [], []
    for candidate in candidates:
        summary, airs = _cross_validate_one(
            data.features,
            X,
            y,
            folds,
            candidate.C,
            quantile_bins=candidate.quantile_bins,
            category_groups=candidate.category_groups(data),
            protected=protected,
        )
        summaries.append(summary)
        records.append(_candidate_record(candidate, summary, airs))
    best_auc = max(record["cv_auc"] for record in records)
    best_log_loss = min(record["cv_log_loss"] for record in records)
    for record in records:
        record["eligible"] = (
            record["cv_auc"] >= best_auc - FAIRNESS_AUC_TOLERANCE
            and record["cv_log_loss"] <= best_log_loss + FAIRNESS_LOG_LOSS_TOLERANCE
        )
    eligible = [i for i, record in enumerate(records) if record["eligible"]]
    chosen = max(eligible, key=lambda i: (records[i]["worst_air"], records[i]["cv_auc"], -i))
    most_accurate = max(range(len(records)), key=lambda i: (records[i]["cv_auc"], -i))
    same_structure = [
        i
        for i, candidate in enumerate(candidates)
        if (candidate.quantile_bins, candidate.treatments)
        == (candidates[chosen].quantile_bins, candidates[chosen].treatments)
    ]
    cross_validation = {
        "folds": CV_FOLDS,
        **summaries[chosen],
        "log_loss_mean_by_c": {
            str(candidates[i].C): summaries[i]["log_loss_mean"] for i in same_structure
        },
    }
    as_is = tuple((feature, "as_is") for feature in proxies)
    previous = [
        i
        for i, candidate in enumerate(candidates)
        if (candidate.quantile_bins, candidate.treatments) == (QUANTILE_BINS, as_is)
    ]
    record = {
        "method": SEARCH_METHOD,
        "grid": {
            "quantile_bins": list(grid.quantile_bins),
            "C": list(grid.C),
            "proxy_treatments": list(grid.treatments),
            "proxy_features": {
                feature: {"coarse": [list(group) for group in groups]}
                for feature, groups in data.proxies.items()
            },
            "monotone": "enforced in every candidate",
        },
        "auc_tolerance": FAIRNESS_AUC_TOLERANCE,
        "log_loss_tolerance": FAIRNESS_LOG_LOSS_TOLERANCE,
        "best_cv_auc": best_auc,
        "best_cv_log_loss": best_log_loss,
        "candidates": records,
    }

    def summarise(index: int) -> dict:
        return {
            "candidate": index,
            "description": candidates[index].describe(),
            "cv_auc": records[index]["cv_auc"],
            "air": records[index]["air"],
            "worst_air": records[index]["worst_air"],
            "worst_attribute": records[index]["worst_attribute"],
            "passes_four_fifths": records[index]["worst_air"] >= FOUR_FIFTHS,
            "all_rows_air": _all_rows_air(data, train_rows, candidates[index]),
        }

    record["chosen"] = summarise(chosen)
    record["most_accurate"] = summarise(most_accurate)
    if previous:
        # The configuration before the search: default bins, every feature, C by log loss.
        record["previous_configuration"] = summarise(
            min(previous, key=lambda i: records[i]["cv_log_loss"])
        )
    return candidates[chosen], cross_validation, record


def _all_rows_air(data: TrainingData, train_rows: np.ndarray, candidate: Candidate) -> dict:
    """A candidate's AIRs as the card reports them: fitted on the training split, all rows."""
    X, y = data.X[train_rows], data.y[train_rows]
    pipeline = fit_scorecard(
        data.features,
        X,
        y,
        candidate.C,
        quantile_bins=candidate.quantile_bins,
        category_groups=candidate.category_groups(data),
    )
    bands = evaluation.risk_bands(
        score_from_pd(pipeline.predict_proba(X)[:, 1], SCORE_SCALE), SCORE_SCALE["min_points"]
    )
    approved = evaluation.approvals(
        score_from_pd(pipeline.predict_proba(data.X)[:, 1], SCORE_SCALE), bands
    )
    return {
        attribute: evaluation.impact_ratio(approved, labels)
        for attribute, labels in data.protected.items()
    }


def _airs(airs: dict[str, float]) -> str:
    return ", ".join(f"{attribute.replace('_', ' ')} {air:.3f}" for attribute, air in airs.items())


def _rationale(search: dict, groups: dict) -> str:
    """Why the chosen model stands, in plain words, from the search and the card's own AIRs."""
    chosen, accurate = search["chosen"], search["most_accurate"]
    eligible = sum(record["eligible"] for record in search["candidates"])
    features = " and ".join(search["grid"]["proxy_features"])
    text = [
        f"{len(search['candidates'])} scorecards were cross-validated: quantile bins "
        f"{', '.join(map(str, search['grid']['quantile_bins']))}; C "
        f"{', '.join(f'{C:g}' for C in search['grid']['C'])}; and {features}, the inputs that "
        "stand in most for a protected attribute, each kept as is, coarsened or given no points.",
        f"{eligible} are within {search['auc_tolerance']:g} of the best CV AUC "
        f"({search['best_cv_auc']:.4f}) and {search['log_loss_tolerance']:g} of the best log "
        f"loss; of these the chosen one ({chosen['description']}) treats the protected groups "
        f"most alike: CV AUC {chosen['cv_auc']:.4f}, out-of-fold AIR {_airs(chosen['air'])}.",
    ]
    if accurate["candidate"] != chosen["candidate"]:
        record = search["candidates"][accurate["candidate"]]
        calibration = (
            ""
            if record["eligible"]
            else f", but is less well calibrated (CV log loss {record['cv_log_loss']:.4f}, "
            f"{record['cv_log_loss'] - search['best_cv_log_loss']:.4f} above the best)"
        )
        text.append(
            f"The most accurate ({accurate['description']}) ranks "
            f"{accurate['cv_auc'] - chosen['cv_auc']:.4f} better (CV AUC "
            f"{accurate['cv_auc']:.4f}){calibration}; its AIRs are {_airs(accurate['air'])} "
            f"out of fold ({_airs(accurate['all_rows_air'])} on all rows)."
        )
    before = search.get("previous_configuration")
    if before and before["candidate"] != chosen["candidate"]:
        text.append(
            f"The configuration before the search ({before['description']}) had CV AUC "
            f"{before['cv_auc']:.4f} and AIR {_airs(before['all_rows_air'])} on all rows."
        )
    card_airs = {attribute: report["air"] for attribute, report in groups.items()}
    failing = [attribute for attribute, air in card_airs.items() if air < FOUR_FIFTHS]
    if failing:
        text.append(
            f"On all rows the chosen model's AIRs are {_airs(card_airs)}: "
            f"{' and '.join(failing)} still fails the four-fifths screen; no eligible "
            "candidate treats the groups more alike out of fold, and it is published with "
            "this record for review."
        )
    else:
        text.append(
            f"On all rows the chosen model's AIRs are {_airs(card_airs)}: "
            "every group passes the four-fifths screen."
        )
    return " ".join(text)


def _feature_card(
    spec: FeatureSpec, points: np.ndarray, binner, groups: tuple | None = None
) -> dict:
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
                "monotone": monotone_direction(valued_bin_points(spec, points)),
                "cut_points": list(binner.cut_points),
            }
        )
    else:
        card.update({"categories": list(spec.categories), "monotone": "none"})
        if groups is not None:
            # Binned by groups of categories: each category gets its group's points.
            card["category_groups"] = [list(group) for group in groups]
            bins = np.searchsorted(binner.cut_points, np.arange(len(spec.categories)))
            points = points[bins]
    card.update(
        {
            # own_bin: a missing value scores in the first bin, before cut_points[0].
            "missing": "own_bin" if spec.missing_bin else "required",
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
    """Holdout rows rounded to 6 significant digits (exact in JSON; a missing value is null)
    and sklearn's outputs."""
    values = [
        [None if np.isnan(v) else float(f"{v:.6g}") for v in row]
        for row in X_holdout[:PARITY_SAMPLE_ROWS]
    ]
    rows = np.array(values, dtype=np.float32)
    return rows, {
        "features": values,
        "probability_of_default": pipeline.predict_proba(rows)[:, 1].tolist(),
        "reason_points": reason_points(pipeline, rows).tolist(),
    }


def _fairness(
    name: str, data: TrainingData, pipeline: Pipeline, bands: list[dict], search: dict | None
) -> dict:
    if not data.protected:
        return {
            "method": FAIRNESS_METHOD,
            "groups": {},
            "notes": "Not measured: the simulated accounts have no protected attributes. "
            "Measure it on real accounts before relying on this model.",
        }
    scores = score_from_pd(pipeline.predict_proba(data.X)[:, 1], SCORE_SCALE)
    groups = evaluation.adverse_impact(scores, data.y, bands, data.protected)
    fairness = {
        "method": FAIRNESS_METHOD,
        "groups": groups,
        "notes": f"All {len(data.y)} rows of the {name} data scored by this model "
        f"(in-sample for the training rows). Protected attributes are not inputs.",
    }
    if search is not None:
        fairness["search"] = {**search, "rationale": _rationale(search, groups)}
    return fairness


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
    quantile_bins: int = QUANTILE_BINS
    category_groups: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    # The fairness search's record (the card's fairness.search less its rationale), if one ran.
    search: dict | None = None


def fit_model(
    name: ModelName,
    *,
    seed: int = 7,
    simulated_accounts: int = 20000,
    search: SearchGrid | None = FULL_SEARCH,
    report: Callable[[int], None] = lambda step: None,
) -> FittedModel:
    """Load the data, split off a stratified holdout, choose by 5-fold CV and fit.

    With protected attributes to measure and a `search` grid, the scorecard is chosen by the
    fairness search; otherwise (or with search=None) C is chosen by CV log loss.
    """
    # One thread: reproducible floating point, and fast on small shared machines.
    with threadpool_limits(limits=1):
        report(STEPS.index("loading data"))
        data = load_training_data(name, seed, simulated_accounts)
        train_rows, holdout_rows = train_test_split(
            np.arange(len(data.y)), test_size=HOLDOUT_SHARE, stratify=data.y, random_state=seed
        )
        X_train, y_train = data.X[train_rows], data.y[train_rows]
        report(STEPS.index("cross-validating"))
        if search is not None and data.protected:
            candidate, cross_validation, record = search_alternatives(
                data, train_rows, seed, search
            )
        else:
            C, cross_validation = cross_validate(data.features, X_train, y_train, seed)
            candidate, record = Candidate(QUANTILE_BINS, C), None
        groups = candidate.category_groups(data)
        report(STEPS.index("fitting"))
        pipeline = fit_scorecard(
            data.features,
            X_train,
            y_train,
            candidate.C,
            quantile_bins=candidate.quantile_bins,
            category_groups=groups,
        )
    return FittedModel(
        name,
        data,
        train_rows,
        holdout_rows,
        candidate.C,
        cross_validation,
        pipeline,
        candidate.quantile_bins,
        groups,
        record,
    )


def train_model(
    name: ModelName,
    output_dir: Path,
    *,
    seed: int = 7,
    version: str | None = None,
    created_at: str | None = None,
    simulated_accounts: int = 20000,
    search: SearchGrid | None = FULL_SEARCH,
    progress: Progress | None = None,
) -> Path:
    """Train, evaluate, export and publish one model (DEFAULT_VERSIONS unless `version`).

    Raises ParityError (and writes nothing) when the ONNX export does not match sklearn, and
    ArtifactError (and writes nothing) when the card fails the fairness gate.
    """
    created_at = _created_at(created_at)
    version = version or DEFAULT_VERSIONS[name]

    def report(step: int) -> None:
        if progress is not None:
            progress(f"{name}: {STEPS[step]}", step, len(STEPS) - 1)

    fitted = fit_model(
        name, seed=seed, simulated_accounts=simulated_accounts, search=search, report=report
    )
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
        fairness = _fairness(name, data, pipeline, bands, fitted.search)

    report(STEPS.index("writing card and plots"))
    binners = pipeline.named_steps["bins"].named_transformers_
    hyperparameters: dict[str, Any] = {
        "C": fitted.C,
        "penalty": "l2",
        "solver": "lbfgs",
        "quantile_bins": fitted.quantile_bins,
        "holdout_share": HOLDOUT_SHARE,
        "seed": seed,
    }
    if fitted.category_groups:
        hyperparameters["category_groups"] = {
            feature: [list(group) for group in groups]
            for feature, groups in fitted.category_groups.items()
        }
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
            _feature_card(spec, points, binners[spec.name], fitted.category_groups.get(spec.name))
            for spec, points in zip(data.features, bin_points(pipeline), strict=True)
        ],
        "hyperparameters": hyperparameters,
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
    card = _rounded(card)
    check_fairness(card)  # the gate: a failing card without its search is not published
    title = f"{name} {version}"
    directory = output_dir / name / version
    _write(
        directory,
        {
            "model.onnx": model_bytes,
            "card.json": (
                json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
                + "\n"
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
    version: str | None = None,
) -> list[Path]:
    """Train and publish the application and behaviour models with the default settings.

    created_at is pinned by default so that `make models` reproduces the committed bytes;
    each model is published as its DEFAULT_VERSIONS entry unless `version` is given.
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
