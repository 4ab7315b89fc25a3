"""The batch response built from wire pieces is the message built field by field."""

import numpy as np
import pytest

from creditline.scoring.v1 import scoring_service_pb2 as pb
from services.scoring import converters
from services.scoring.model import EncodedBatch, ScoredRows, ServedModel
from services.scoring.modelling.artifact import load_artifact
from services.scoring.modelling.scale import top_reasons_by_row
from services.scoring.settings import BUNDLED_MODELS


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel(load_artifact(sorted((BUNDLED_MODELS / "application").iterdir())[-1]))


def field_by_field(model: ServedModel, scored: ScoredRows, locale: str) -> pb.BatchScoreResponse:
    response = pb.BatchScoreResponse(model=model.name, model_version=model.version)
    response.evaluation_id = "e1"
    for pd, score, band, reasons in zip(
        scored.probability_of_default,
        scored.score,
        scored.band,
        scored.reason_features,
        strict=True,
    ):
        response.results.add(
            probability_of_default=pd,
            score=score,
            risk_band=converters.RISK_BANDS[band],
            reason_codes=[model.features[f].reason_code for f in reasons],
        )
        for f in reasons:
            response.reason_texts[model.features[f].reason_code] = model.reason_text(f, locale)
    return response


def test_a_scored_batch_answers_as_built_field_by_field(model):
    rng = np.random.default_rng(3)
    rows = np.asarray(model.artifact.card["parity_sample"]["features"], dtype=np.float32)
    rows = rows[rng.integers(0, len(rows), 300)]
    scored = model.score(rows)
    batch = EncodedBatch(rows, len(rows), {}, {})
    for locale in ("en", "zh-CN"):
        built = converters.batch_response(model, batch, scored, locale, "e1")
        expected = field_by_field(model, scored, locale)
        assert built == expected
        assert built.SerializeToString(deterministic=True) == expected.SerializeToString(
            deterministic=True
        )


def test_odd_values_encode_as_protobuf_encodes_them(model):
    """Scores and probabilities a card could give: negative, zero, large; no reasons, four."""
    n_features = len(model.features)
    points = np.zeros((6, n_features))
    points[1, :4] = [4.0, 3.0, 2.0, 1.0]
    points[2, -1] = 0.5
    scored = ScoredRows(
        probability_of_default=[0.0, 1.0, 1e-300, 0.5, 0.25, 0.999],
        score=[-5, 0, 127, 128, 16_384, -2_147_483_648],
        band=["A", "B", "C", "D", "E", "E"],
        reason_features=top_reasons_by_row(points, 4),
        reason_points=points,
    )
    batch = EncodedBatch(np.zeros((6, n_features), dtype=np.float32), 6, {}, {})
    built = converters.batch_response(model, batch, scored, "en", "e1")
    assert built == field_by_field(model, scored, "en")
