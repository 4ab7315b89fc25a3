"""One row is scored in plain Python floats, a batch with numpy: both must agree exactly."""

import json
import math

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.scoring.model import MAX_REASONS, ServedModel
from services.scoring.modelling.artifact import load_artifact
from services.scoring.modelling.contract import INPUT_NAME, OUTPUT_NAMES
from services.scoring.modelling.scale import (
    RiskBands,
    ScoreScale,
    top_reasons,
    top_reasons_by_row,
)
from services.scoring.settings import BUNDLED_MODELS

MODELS = ("application", "behaviour")


def card(name: str) -> dict:
    (version_dir,) = sorted((BUNDLED_MODELS / name).iterdir())[-1:]
    return json.loads((version_dir / "card.json").read_text())


@pytest.mark.parametrize("model", MODELS)
def test_one_probability_scores_as_in_a_batch(model):
    scale = ScoreScale(card(model)["score_scale"])
    rng = np.random.default_rng(5)
    # Probabilities as the model gives them (float32), over the whole range and its ends.
    probabilities = np.concatenate(
        [
            rng.random(50_000, dtype=np.float32),
            np.float32(10.0) ** rng.uniform(-12, 0, 50_000).astype(np.float32),
            np.array([0.0, 1e-45, 1e-12, 0.5, 1 - 1e-7, 1.0], dtype=np.float32),
        ]
    ).astype(np.float64)
    one_at_a_time = [scale.point(pd) for pd in probabilities.tolist()]
    assert one_at_a_time == scale.points(probabilities).tolist()


@pytest.mark.parametrize("model", MODELS)
def test_one_score_gets_the_band_of_a_batch(model):
    model_card = card(model)
    bands = RiskBands(model_card["risk_bands"])
    scale = model_card["score_scale"]
    scores = np.arange(scale["min_points"] - 5, scale["max_points"] + 6)
    assert [bands.of_one(s) for s in scores.tolist()] == bands.of(scores).tolist()


def test_one_row_gets_the_reasons_of_a_batch_ties_included():
    rng = np.random.default_rng(11)
    # Few distinct values, many zeros: ties and rows with fewer than four reasons are common.
    points = rng.integers(0, 4, (20_000, 17)) * rng.choice([0.0, 0.5, 1.0], (20_000, 17))
    assert [top_reasons(row, 4) for row in points.tolist()] == top_reasons_by_row(points, 4)


@pytest.mark.parametrize("model", MODELS)
def test_a_single_row_gets_the_batch_arithmetic_on_its_model_outputs(model):
    """onnxruntime itself may differ in the last bit between a row alone and in a batch, so
    the batch arithmetic is applied here to the single row's own outputs."""
    (version_dir,) = sorted((BUNDLED_MODELS / model).iterdir())[-1:]
    served = ServedModel(load_artifact(version_dir))
    rows = np.asarray(card(model)["parity_sample"]["features"], dtype=np.float32)
    for row in rows:
        probability, logits = served.session.run(OUTPUT_NAMES, {INPUT_NAME: row[None, :]})
        probability = probability.astype(np.float64).reshape(-1)
        points = logits.astype(np.float64) * served.scale.factor
        scores = served.scale.points(probability)
        one = served.score(row[None, :])
        assert one.probability_of_default == probability.tolist()
        assert one.score == scores.tolist()
        assert one.band == served.risk_bands.of(scores).tolist()
        assert one.reason_features == top_reasons_by_row(points, MAX_REASONS)
        assert one.reason_points == points.tolist()
    assert served.distribution.live_count == len(rows)


@pytest.mark.parametrize("model", MODELS)
def test_a_row_encodes_the_same_on_the_one_pass_path_and_the_checked_one(model):
    """encode_named takes a usual row in one pass; the checks that name problems must give
    the same row, and every odd value must leave the one pass for them."""
    (version_dir,) = sorted((BUNDLED_MODELS / model).iterdir())[-1:]
    served = ServedModel(load_artifact(version_dir))
    model_card = card(model)
    for stored in model_card["parity_sample"]["features"]:
        encoded = [math.nan if value is None else value for value in stored]  # null: missing
        values = {
            spec["name"]: spec["categories"][int(value)]
            if spec["type"] == "categorical"
            else float(value)
            for spec, value in zip(model_card["features"], encoded, strict=True)
        }
        one_pass = served.encode_named(values)
        assert one_pass.dtype == np.float32
        np.testing.assert_array_equal(one_pass, served._encode_named_checked(values, "features"))
        np.testing.assert_array_equal(one_pass, np.asarray([encoded], dtype=np.float32))
    numeric = next(f for f in served.features if not f.categorical)
    odd_values = [True, 3, math.inf, -math.inf, numeric.maximum + 1, numeric.minimum - 1, "x"]
    if numeric.missing_bin:
        odd_values.append(math.nan)
    for odd in odd_values:
        changed = {**values, numeric.name: odd}
        try:
            expected = served._encode_named_checked(changed, "features")
        except InvalidArgument as error:
            with pytest.raises(InvalidArgument) as raised:
                served.encode_named(changed)
            assert raised.value.violations == error.violations
        else:
            np.testing.assert_array_equal(served.encode_named(changed), expected)
    with pytest.raises(InvalidArgument):
        served.encode_named({**values, "unknown": 1.0})
