"""A published model directory (model.onnx, card.json): loading it and deciding to trust it.

The scoring server calls `load_artifact` then `validate_artifact` at start and before hot-swapping
a model in; a model that fails any check raises ArtifactError with a message that says why.
Validation takes milliseconds: it re-runs only the card's small parity sample.

The fairness gate (`check_fairness`, also run by training before it writes a model): a card whose
adverse impact ratio fails the four-fifths screen for any protected attribute is refused unless
it records the search for a less discriminatory alternative, `fairness.search`, with its
candidates and a `rationale` saying why the chosen model stands.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.scoring.modelling.contract import (
    INPUT_NAME,
    OUTPUT_NAMES,
    PROBABILITY_OUTPUT,
    REASON_POINTS_OUTPUT,
)
from services.scoring.modelling.parity import ParityError, compare, inference_session, run_scorecard

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
REQUIRED_CARD_KEYS = (
    "name",
    "version",
    "created_at",
    "description",
    "model_type",
    "outcome",
    "training_data",
    "features",
    "score_scale",
    "risk_bands",
    "metrics",
    "calibration",
    "fairness",
    "explanations",
    "training_score_distribution",
    "parity",
    "parity_sample",
    "libraries",
    "onnx_sha256",
)
REQUIRED_FEATURE_KEYS = ("name", "type", "description", "missing", "reason_code", "reason_text")
# "required": every row has a value; "own_bin": an unknown value (NaN) scores in the first bin.
MISSING_RULES = ("required", "own_bin")
REQUIRED_SCALE_KEYS = ("base_points", "base_odds", "pdo", "min_points", "max_points")
LOCALES = ("en", "zh-CN")
# The four-fifths screen: a group approved at under 80% of the best-approved group's rate.
FOUR_FIFTHS = 0.8


class ArtifactError(Exception):
    """A model directory that must not be served."""


@dataclass(frozen=True)
class ModelArtifact:
    """A model directory as read: its card and its ONNX bytes (`onnx`), not yet validated."""

    name: str
    version: str
    card: dict
    onnx: bytes
    path: Path

    @property
    def feature_names(self) -> list[str]:
        return [feature["name"] for feature in self.card["features"]]


def load_artifact(directory: Path) -> ModelArtifact:
    """Read a model directory; ArtifactError when a file is missing or the card is not JSON."""
    directory = Path(directory)
    try:
        model_bytes = (directory / MODEL_FILE).read_bytes()
        card_text = (directory / CARD_FILE).read_text(encoding="utf-8")
    except OSError as error:
        raise ArtifactError(f"{directory}: cannot read the model files: {error}") from error
    try:
        card = json.loads(card_text)
    except ValueError as error:
        raise ArtifactError(f"{directory / CARD_FILE}: malformed JSON: {error}") from error
    if not isinstance(card, dict) or not all(
        isinstance(card.get(key), str) for key in ("name", "version")
    ):
        raise ArtifactError(f"{directory / CARD_FILE}: needs string 'name' and 'version'")
    return ModelArtifact(card["name"], card["version"], card, model_bytes, directory)


def _require(mapping: Mapping, keys, where: str) -> None:
    if not isinstance(mapping, Mapping):
        raise ArtifactError(f"card {where} must be an object")
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise ArtifactError(f"card {where} is missing {', '.join(missing)}")


def _check_card(card: dict) -> None:
    _require(card, REQUIRED_CARD_KEYS, "")
    features = card["features"]
    if not isinstance(features, list) or not features:
        raise ArtifactError("card features must be a non-empty list")
    for i, feature in enumerate(features):
        _require(feature, REQUIRED_FEATURE_KEYS, f"features[{i}]")
        _require(feature["reason_text"], LOCALES, f"features[{i}].reason_text")
        if feature["type"] == "numeric":
            _require(feature, ("min", "max"), f"features[{i}] (numeric)")
        elif feature["type"] == "categorical":
            _require(feature, ("categories",), f"features[{i}] (categorical)")
        else:
            raise ArtifactError(f"card features[{i}] has unknown type {feature['type']!r}")
        if feature["missing"] not in MISSING_RULES:
            raise ArtifactError(
                f"card features[{i}].missing must be one of {', '.join(MISSING_RULES)}"
            )
        if feature["missing"] == "own_bin" and feature["type"] != "numeric":
            raise ArtifactError(f"card features[{i}]: only a numeric feature has a missing bin")
    _require(card["score_scale"], REQUIRED_SCALE_KEYS, "score_scale")
    bands = card["risk_bands"]
    if not isinstance(bands, list) or not bands:
        raise ArtifactError("card risk_bands must be a non-empty list")
    for i, band in enumerate(bands):
        _require(band, ("band", "min_score"), f"risk_bands[{i}]")
    if any(a["min_score"] <= b["min_score"] for a, b in zip(bands, bands[1:], strict=False)):
        raise ArtifactError("card risk_bands must be ordered best first (decreasing min_score)")
    _require(card["explanations"], ("max_reasons",), "explanations")
    distribution = card["training_score_distribution"]
    _require(distribution, ("bin_edges", "proportions"), "training_score_distribution")
    if len(distribution["bin_edges"]) != len(distribution["proportions"]) + 1:
        raise ArtifactError("card training_score_distribution needs one more edge than bins")
    _require(
        card["parity_sample"],
        ("features", "probability_of_default", "reason_points"),
        "parity_sample",
    )


def _failing_groups(groups: Mapping) -> list[str]:
    """Each attribute failing the four-fifths screen, with its least-approved group and AIR."""
    failing = []
    for attribute, report in sorted(groups.items()):
        _require(report, ("air",), f"fairness.groups.{attribute}")
        air = float(report["air"])
        if air >= FOUR_FIFTHS and report.get("passes_four_fifths", True) is not False:
            continue
        rates = {
            group: entry["approval_rate"]
            for group, entry in report.items()
            if isinstance(entry, Mapping) and "approval_rate" in entry
        }
        lowest = f" {min(rates, key=rates.__getitem__)}" if rates else ""
        failing.append(f"{attribute}{lowest} AIR {air:.4f}")
    return failing


def check_fairness(card: Mapping) -> None:
    """The gate: refuse a card failing the four-fifths screen with no search recorded.

    A failing card is accepted only with `fairness.search` holding the `candidates` searched and
    a non-empty `rationale`: the less discriminatory alternatives were looked for, and why the
    chosen model stands is written down.
    """
    fairness = card["fairness"]
    _require(fairness, ("groups",), "fairness")
    failing = _failing_groups(fairness["groups"])
    if not failing:
        return
    search = fairness.get("search")
    recorded = (
        isinstance(search, Mapping)
        and isinstance(search.get("candidates"), list)
        and bool(search["candidates"])
        and isinstance(search.get("rationale"), str)
        and bool(search["rationale"].strip())
    )
    if not recorded:
        raise ArtifactError(
            f"fairness: {'; '.join(failing)} fails the four-fifths screen (AIR below "
            f"{FOUR_FIFTHS}) and the card records no search for a less discriminatory "
            "alternative (fairness.search with its candidates and a rationale)"
        )


def _check_onnx_contract(session, n_features: int) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ArtifactError(
            f"ONNX inputs are {[i.name for i in inputs]}, expected [{INPUT_NAME!r}]"
        )
    features = inputs[0]
    if (
        features.type != "tensor(float)"
        or len(features.shape) != 2
        or features.shape[1] != n_features
    ):
        raise ArtifactError(
            f"ONNX input {INPUT_NAME} is {features.type} {features.shape}, "
            f"expected tensor(float) [N, {n_features}] (the card's features)"
        )
    if sorted(o.name for o in outputs) != sorted(OUTPUT_NAMES):
        raise ArtifactError(
            f"ONNX outputs are {[o.name for o in outputs]}, expected {list(OUTPUT_NAMES)}"
        )
    expected_ranks = {PROBABILITY_OUTPUT: 1, REASON_POINTS_OUTPUT: 2}
    for output in outputs:
        if output.type != "tensor(float)" or len(output.shape) != expected_ranks[output.name]:
            raise ArtifactError(f"ONNX output {output.name} is {output.type} {output.shape}")
        if output.name == REASON_POINTS_OUTPUT and output.shape[1] != n_features:
            raise ArtifactError(
                f"ONNX output {output.name} has {output.shape[1]} columns, "
                f"the card has {n_features} features"
            )


def validate_artifact(artifact: ModelArtifact) -> None:
    """Raise ArtifactError unless the card, the ONNX bytes and the contract all agree."""
    try:
        _validate(artifact)
    except ArtifactError as error:
        raise ArtifactError(
            f"{artifact.name} {artifact.version} ({artifact.path}): {error}"
        ) from error
    except (KeyError, TypeError, ValueError) as error:  # a card value of the wrong shape
        raise ArtifactError(
            f"{artifact.name} {artifact.version} ({artifact.path}): malformed card: {error!r}"
        ) from error


def _validate(artifact: ModelArtifact) -> None:
    card = artifact.card
    _check_card(card)
    check_fairness(card)
    digest = hashlib.sha256(artifact.onnx).hexdigest()
    if digest != card["onnx_sha256"]:
        raise ArtifactError(
            f"model.onnx sha256 {digest} does not match the card's "
            f"onnx_sha256 {card['onnx_sha256']}"
        )
    try:
        session = inference_session(artifact.onnx)
    except Exception as error:  # onnxruntime raises its own exception types
        raise ArtifactError(f"onnxruntime cannot load model.onnx: {error}") from error
    _check_onnx_contract(session, len(card["features"]))

    sample = card["parity_sample"]
    features = np.asarray(sample["features"], dtype=np.float32)
    try:
        probability, points = run_scorecard(session, features)
    except Exception as error:  # onnxruntime raises its own exception types
        raise ArtifactError(f"the parity sample cannot run: {error}") from error
    try:
        compare(sample["probability_of_default"], probability, sample["reason_points"], points)
    except ParityError as error:
        raise ArtifactError(f"the parity sample fails: {error}") from error
