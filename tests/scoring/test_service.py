"""ScoringService over a real server and channel: results, reasons, batches, models, errors."""

import math

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from creditline.scoring.v1 import scoring_service_pb2 as pb
from creditline.type.v1 import risk_pb2
from services.scoring.settings import BUNDLED_MODELS
from tests.scoring.helpers import (
    batch_request,
    card,
    field_violations,
    score_request,
    to_value,
    valid_features,
)

MODELS = ("application", "behaviour")


@pytest.mark.parametrize("model", MODELS)
def test_score_returns_a_complete_result(scoring_stub, model):
    model_card = card(model)
    response = scoring_stub.Score(score_request(model, valid_features(model_card)), timeout=5)
    scale = model_card["score_scale"]
    assert 0 < response.probability_of_default < 1
    assert scale["min_points"] <= response.score <= scale["max_points"]
    assert response.risk_band != risk_pb2.RISK_BAND_UNSPECIFIED
    assert len(response.reasons) <= 4
    assert (response.model, response.model_version) == (model, model_card["version"])
    assert len(response.evaluation_id) == 32


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("pick", range(6))
def test_reasons_are_the_largest_scored_contributions(scoring_stub, model, pick):
    """Independently of the server: run the ONNX file and rank its per-feature points."""
    model_card = card(model)
    features = valid_features(model_card, pick)
    response = scoring_stub.Score(score_request(model, features), timeout=5)

    specs = model_card["features"]
    row = np.array(
        [
            [
                spec["categories"].index(features[spec["name"]])
                if spec["type"] == "categorical"
                else features[spec["name"]]
                for spec in specs
            ]
        ],
        dtype=np.float32,
    )
    version_dir = BUNDLED_MODELS / model / model_card["version"]
    session = ort.InferenceSession(str(version_dir / "model.onnx"))
    probability, reason_logits = session.run(None, {"features": row})
    points = reason_logits[0] * model_card["score_scale"]["pdo"] / math.log(2)
    largest = [i for i in np.argsort(-points, kind="stable")[:4] if points[i] > 0.005]

    assert [r.code for r in response.reasons] == [specs[i]["reason_code"] for i in largest]
    assert [r.feature for r in response.reasons] == [specs[i]["name"] for i in largest]
    assert [r.points for r in response.reasons] == pytest.approx(points[largest], abs=0.01)
    assert response.probability_of_default == pytest.approx(float(probability[0]), abs=1e-6)
    points_list = [r.points for r in response.reasons]
    assert points_list == sorted(points_list, reverse=True)


def test_score_is_the_scaled_log_odds_and_band_follows_the_cutoffs(scoring_stub):
    model_card = card("application")
    response = scoring_stub.Score(
        score_request("application", valid_features(model_card, 3)), timeout=5
    )
    scale = model_card["score_scale"]
    factor = scale["pdo"] / math.log(2)
    offset = scale["base_points"] - factor * math.log(scale["base_odds"])
    pd = response.probability_of_default
    expected = min(
        max(round(offset + factor * math.log((1 - pd) / pd)), scale["min_points"]),
        scale["max_points"],
    )
    assert abs(response.score - expected) <= 1
    band = next(b["band"] for b in model_card["risk_bands"] if response.score >= b["min_score"])
    assert response.risk_band == risk_pb2.RiskBand.Value(f"RISK_BAND_{band}")


def test_reason_texts_follow_the_locale(scoring_stub):
    model_card = card("application")
    features = valid_features(model_card, 1)
    english = scoring_stub.Score(score_request("application", features, "en"), timeout=5)
    chinese = scoring_stub.Score(score_request("application", features, "zh-CN"), timeout=5)
    assert english.reasons, "this applicant should have reasons"
    assert [r.code for r in english.reasons] == [r.code for r in chinese.reasons]
    for en, zh in zip(english.reasons, chinese.reasons, strict=True):
        assert en.text and en.text.isascii()
        assert any("\u4e00" <= ch <= "\u9fff" for ch in zh.text)


@pytest.mark.parametrize("model", MODELS)
def test_batch_score_matches_single_scores(scoring_stub, model):
    model_card = card(model)
    rows = [valid_features(model_card, pick) for pick in range(25)]
    batch = scoring_stub.BatchScore(batch_request(model, rows, "zh-CN"), timeout=10)
    assert len(batch.results) == len(rows)
    for row, result in zip(rows, batch.results, strict=True):
        single = scoring_stub.Score(score_request(model, row), timeout=5)
        assert result.probability_of_default == pytest.approx(single.probability_of_default)
        assert (result.score, result.risk_band) == (single.score, single.risk_band)
        assert list(result.reason_codes) == [r.code for r in single.reasons]
    used = {code for result in batch.results for code in result.reason_codes}
    assert set(batch.reason_texts) == used


def test_get_and_list_models_show_the_cards(scoring_stub):
    listed = scoring_stub.ListModels(pb.ListModelsRequest(), timeout=5)
    assert sorted(m.name for m in listed.models) == sorted(MODELS)
    model = scoring_stub.GetModel(pb.GetModelRequest(name="application"), timeout=5).model
    model_card = card("application")
    assert model.version == model_card["version"]
    assert [f.name for f in model.features] == [f["name"] for f in model_card["features"]]
    assert model.card["metrics"]["cross_validation"]["auc_mean"] >= 0.76
    assert "parity_sample" not in model.card
    assert model.create_time.seconds > 0


def test_population_stability_counts_live_scores(scoring_stub):
    before = scoring_stub.GetModel(pb.GetModelRequest(name="behaviour"), timeout=5).model
    rows = [valid_features(card("behaviour"), pick) for pick in range(200)]
    scoring_stub.BatchScore(batch_request("behaviour", rows), timeout=10)
    after = scoring_stub.GetModel(pb.GetModelRequest(name="behaviour"), timeout=5).model
    stability = after.population_stability
    assert stability.live_count == before.population_stability.live_count + 200
    # Synthetic rows spread evenly over every range look nothing like real accounts.
    assert stability.index > 0.25
    assert stability.status == pb.STABILITY_STATUS_ACT


# -- bad input: INVALID_ARGUMENT with one field violation per problem, never UNKNOWN/INTERNAL


def invalid(call, request) -> dict[str, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    violations = field_violations(raised.value)
    assert violations, "an INVALID_ARGUMENT must name the fields"
    return violations


def test_unknown_or_missing_model(scoring_stub):
    features = valid_features(card("application"))
    assert "model" in invalid(scoring_stub.Score, score_request("fraud", features))
    assert "model" in invalid(scoring_stub.Score, score_request("", features))
    assert "name" in invalid(scoring_stub.GetModel, pb.GetModelRequest(name="fraud"))


def test_missing_and_unknown_features_are_each_named(scoring_stub):
    features = valid_features(card("application"))
    first, second = list(features)[:2]
    del features[first], features[second]
    features["shoe_size"] = 42
    violations = invalid(scoring_stub.Score, score_request("application", features))
    assert set(violations) == {
        f"features[{first}]",
        f"features[{second}]",
        "features[shoe_size]",
    }
    assert "missing" in violations[f"features[{first}]"]


@pytest.mark.parametrize(
    "bad_value", [math.nan, math.inf, -math.inf, -1e9, 1e12, "seven", True, None]
)
def test_bad_numeric_values(scoring_stub, bad_value):
    model_card = card("behaviour")
    features = valid_features(model_card)
    numeric = next(f["name"] for f in model_card["features"] if f["type"] == "numeric")
    request = score_request("behaviour", features)
    request.features[numeric].CopyFrom(to_value(bad_value))
    assert list(invalid(scoring_stub.Score, request)) == [f"features[{numeric}]"]


@pytest.mark.parametrize("bad_value", ["no_such_category", 3, ""])
def test_bad_categorical_values(scoring_stub, bad_value):
    model_card = card("application")
    features = valid_features(model_card)
    categorical = next(f["name"] for f in model_card["features"] if f["type"] == "categorical")
    features[categorical] = bad_value
    violations = invalid(scoring_stub.Score, score_request("application", features))
    assert list(violations) == [f"features[{categorical}]"]


def test_unsupported_locale(scoring_stub):
    request = score_request("application", valid_features(card("application")), "fr")
    assert list(invalid(scoring_stub.Score, request)) == ["locale"]


def test_empty_batch(scoring_stub):
    assert "columns" in invalid(scoring_stub.BatchScore, pb.BatchScoreRequest(model="behaviour"))


def test_batch_with_no_rows(scoring_stub):
    request = batch_request("behaviour", [valid_features(card("behaviour"))])
    for column in request.columns:
        del column.numbers[:]
        del column.categories[:]
    assert "columns" in invalid(scoring_stub.BatchScore, request)


def test_batch_over_the_limit(scoring_stub):
    rows = [valid_features(card("behaviour"))] * 10_001
    violations = invalid(scoring_stub.BatchScore, batch_request("behaviour", rows))
    assert "limit" in violations["columns"]


def test_a_malformed_batch_is_refused_whole(scoring_stub):
    model_card = card("application")
    request = batch_request("application", [valid_features(model_card, p) for p in range(5)])
    names = [c.name for c in request.columns]
    request.columns.add(name="shoe_size").numbers.extend([1] * 5)
    assert set(invalid(scoring_stub.BatchScore, request)) == {f"columns[{len(names)}].name"}


def test_one_odd_row_never_fails_the_batch(scoring_stub):
    """A value out of range is clamped to it and flagged; a value that cannot be scored refuses
    its row alone; every other row scores as it would on its own."""
    model_card = card("application")
    rows = [valid_features(model_card, pick) for pick in range(6)]
    request = batch_request("application", rows)
    names = [c.name for c in request.columns]
    numeric = next(f for f in model_card["features"] if f["type"] == "numeric")
    categorical = next(f["name"] for f in model_card["features"] if f["type"] == "categorical")
    request.columns[names.index(numeric["name"])].numbers[3] = math.nan
    request.columns[names.index(categorical)].categories[1] = "nope"
    request.columns[names.index(numeric["name"])].numbers[4] = numeric["max"] * 10
    results = scoring_stub.BatchScore(request, timeout=10).results
    assert len(results) == 6
    assert [p.field for p in results[3].problems] == [
        f"columns[{names.index(numeric['name'])}].numbers[3]"
    ]
    assert [p.field for p in results[1].problems] == [
        f"columns[{names.index(categorical)}].categories[1]"
    ]
    for refused in (results[1], results[3]):
        assert (
            refused.risk_band == risk_pb2.RISK_BAND_UNSPECIFIED and refused.problems[0].description
        )
    assert list(results[4].clamped_features) == [numeric["name"]] and not results[4].problems
    at_maximum = dict(rows[4], **{numeric["name"]: numeric["max"]})
    (clamped_alone,) = scoring_stub.BatchScore(
        batch_request("application", [at_maximum, rows[0]]), timeout=10
    ).results[:1]
    assert results[4].score == clamped_alone.score
    alone = scoring_stub.BatchScore(
        batch_request("application", [rows[0], rows[2], rows[5]]), timeout=10
    ).results
    assert [r.score for r in (results[0], results[2], results[5])] == [r.score for r in alone]
    assert not any(r.clamped_features or r.problems for r in alone)


def rows_of(columns: pb.ScoreColumns) -> list[tuple]:
    """A columnar response read back row by row, as the ScoreResult fields it stands for."""
    flagged = {f.row: f for f in columns.flagged_rows}
    codes = (columns.reason_codes[i] for i in columns.reason_indices)
    return [
        (
            pd,
            score,
            band,
            [next(codes) for _ in range(count)],
            list(flagged[row].clamped_features) if row in flagged else [],
            [(p.field, p.description) for p in flagged[row].problems] if row in flagged else [],
        )
        for row, (pd, score, band, count) in enumerate(
            zip(
                columns.probabilities_of_default,
                columns.scores,
                columns.risk_bands,
                columns.reason_counts,
                strict=True,
            )
        )
    ]


def as_row(result: pb.ScoreResult) -> tuple:
    """A ScoreResult's fields in the order of `rows_of`; a refused row's probability is NaN."""
    return (
        math.nan if result.problems else result.probability_of_default,
        result.score,
        result.risk_band,
        list(result.reason_codes),
        list(result.clamped_features),
        [(p.field, p.description) for p in result.problems],
    )


@pytest.mark.parametrize("model", MODELS)
def test_columns_carry_what_rows_carry(scoring_stub, model):
    """The same batch, odd rows included, gives the same results in either layout."""
    model_card = card(model)
    rows = [valid_features(model_card, pick) for pick in range(40)]
    request = batch_request(model, rows, "zh-CN")
    names = [c.name for c in request.columns]
    numeric = [f for f in model_card["features"] if f["type"] == "numeric"]
    request.columns[names.index(numeric[0]["name"])].numbers[3] = math.inf  # refused
    request.columns[names.index(numeric[0]["name"])].numbers[7] = numeric[0]["max"] * 10
    request.columns[names.index(numeric[1]["name"])].numbers[7] = numeric[1]["min"] - 10
    request.columns[names.index(numeric[1]["name"])].numbers[9] = math.inf  # refused
    request.columns[names.index(numeric[2]["name"])].numbers[9] = math.inf  # and again
    by_rows = scoring_stub.BatchScore(request, timeout=10)
    request.result_layout = pb.RESULT_LAYOUT_COLUMNS
    by_columns = scoring_stub.BatchScore(request, timeout=10)

    assert not by_rows.HasField("columns") and not by_columns.results
    assert [f.row for f in by_columns.columns.flagged_rows] == [3, 7, 9]
    by_column_rows = rows_of(by_columns.columns)
    for row, (result, from_columns) in enumerate(zip(by_rows.results, by_column_rows, strict=True)):
        expected = as_row(result)
        assert from_columns[1:] == expected[1:], row
        if result.problems:
            assert math.isnan(from_columns[0]), row
        else:
            assert from_columns[0] == expected[0], row
    assert len(by_column_rows[9][5]) == 2 and by_column_rows[9][3] == []
    assert by_column_rows[7][4] == [numeric[0]["name"], numeric[1]["name"]]
    assert dict(by_columns.reason_texts) == dict(by_rows.reason_texts)
    assert (by_columns.model, by_columns.model_version) == (by_rows.model, by_rows.model_version)


def test_columns_of_a_batch_with_every_row_refused(scoring_stub):
    model_card = card("behaviour")
    request = batch_request("behaviour", [valid_features(model_card, pick) for pick in range(2)])
    request.result_layout = pb.RESULT_LAYOUT_COLUMNS
    for row in range(2):
        request.columns[0].numbers[row] = math.inf
    columns = scoring_stub.BatchScore(request, timeout=10).columns
    assert all(math.isnan(pd) for pd in columns.probabilities_of_default)
    assert list(columns.scores) == [0, 0] and list(columns.reason_counts) == [0, 0]
    assert list(columns.risk_bands) == [risk_pb2.RISK_BAND_UNSPECIFIED] * 2
    assert [(f.row, len(f.problems)) for f in columns.flagged_rows] == [(0, 1), (1, 1)]


def test_a_large_batch_in_columns_is_a_fraction_of_its_rows(scoring_stub):
    model_card = card("application")
    request = batch_request("application", [valid_features(model_card, p) for p in range(1000)])
    by_rows = scoring_stub.BatchScore(request, timeout=10)
    request.result_layout = pb.RESULT_LAYOUT_COLUMNS
    by_columns = scoring_stub.BatchScore(request, timeout=10)
    assert by_columns.ByteSize() < by_rows.ByteSize() / 2


def test_an_unknown_result_layout_is_refused(scoring_stub):
    request = batch_request("behaviour", [valid_features(card("behaviour"))])
    request.result_layout = 7  # type: ignore[assignment] - a value from a newer client
    assert set(invalid(scoring_stub.BatchScore, request)) == {"result_layout"}


def test_batch_columns_of_different_lengths(scoring_stub):
    rows = [valid_features(card("behaviour"), pick) for pick in range(4)]
    request = batch_request("behaviour", rows)
    del request.columns[2].numbers[-1]
    assert set(invalid(scoring_stub.BatchScore, request)) == {"columns[2].numbers"}


def test_batch_missing_feature(scoring_stub):
    rows = [valid_features(card("behaviour"), pick) for pick in range(4)]
    request = batch_request("behaviour", rows)
    missing = request.columns[0].name
    del request.columns[0]
    violations = invalid(scoring_stub.BatchScore, request)
    assert missing in violations["columns"]


def test_an_unknown_income_scores_in_its_missing_bin(scoring_stub):
    """A feature whose card says `missing: own_bin` may be null (Score) or NaN (BatchScore):
    it costs its missing bin's points from the card, never silently the best bin's."""
    model_card = card("behaviour")
    specs = {f["name"]: f for f in model_card["features"]}
    own_bin = [name for name, spec in specs.items() if spec["missing"] == "own_bin"]
    assert own_bin == ["income_change", "debt_to_income"]
    served = scoring_stub.GetModel(pb.GetModelRequest(name="behaviour")).model.features
    assert [f.name for f in served if f.missing_value == pb.MISSING_VALUE_OWN_BIN] == own_bin

    known = dict(valid_features(model_card), income_change=0.5, debt_to_income=0.01)
    unknown = dict(known, income_change=None, debt_to_income=None)
    scored = scoring_stub.Score(score_request("behaviour", unknown))
    batch = dict(known, income_change=math.nan, debt_to_income=math.nan)
    in_batch, known_result = scoring_stub.BatchScore(
        batch_request("behaviour", [batch, known])
    ).results
    assert not in_batch.problems and in_batch.score == scored.score

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    # Both known values are in their best bins; unknown costs each missing bin's points.
    cost = sum(specs[name]["bin_points"][0] for name in own_bin)
    assert cost > 0
    moved = logit(in_batch.probability_of_default) - logit(known_result.probability_of_default)
    assert moved == pytest.approx(cost, abs=1e-4)
