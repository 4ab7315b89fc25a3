"""The ScoringService RPCs: thin handlers that validate, delegate to the models, convert."""

from creditline.scoring.v1 import scoring_service_pb2 as pb
from creditline.scoring.v1 import scoring_service_pb2_grpc
from services.common.context import uuid4_hex
from services.common.errors import Unavailable, Violations
from services.scoring import converters
from services.scoring.model import normalise_locale
from services.scoring.registry import ModelPair, ModelRegistry

RESULT_LAYOUTS = frozenset(pb.ResultLayout.values())


class ScoringServicer(scoring_service_pb2_grpc.ScoringServiceServicer):
    def __init__(self, registry: ModelRegistry, *, max_batch_rows: int) -> None:
        self.registry = registry
        self.max_batch_rows = max_batch_rows

    def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        pair, locale = self._resolve(request.model, request.locale, "model")
        model = pair.champion
        rows = model.encode_named(converters.feature_values(request.features))
        scored = model.score(rows)
        evaluation_id = uuid4_hex()
        self.registry.shadow.submit(pair, rows, scored, evaluation_id)
        return converters.score_response(model, scored, locale, evaluation_id)

    def BatchScore(self, request: pb.BatchScoreRequest, context) -> pb.BatchScoreResponse:
        if request.result_layout not in RESULT_LAYOUTS:
            violations = Violations()
            violations.add(
                "result_layout", "unknown; use RESULT_LAYOUT_ROWS or RESULT_LAYOUT_COLUMNS"
            )
            violations.raise_if_any()
        pair, locale = self._resolve(request.model, request.locale, "model")
        model = pair.champion
        batch = model.encode_columns(
            converters.feature_columns(request.columns), self.max_batch_rows
        )
        evaluation_id = uuid4_hex()
        scored = None
        if len(batch.rows):  # none when every row was refused
            scored = model.score(batch.rows)
            self.registry.shadow.submit(pair, batch.rows, scored, evaluation_id)
        return converters.batch_response(
            model, batch, scored, locale, evaluation_id, request.result_layout
        )

    def GetModel(self, request: pb.GetModelRequest, context) -> pb.GetModelResponse:
        pair, _ = self._resolve(request.name, "", "name")
        return pb.GetModelResponse(model=converters.model_message(pair))

    def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        pairs = [self.registry.get(name) for name in self.registry.names()]
        return pb.ListModelsResponse(
            models=[converters.model_message(p) for p in pairs if p is not None]
        )

    def _resolve(self, name: str, locale: str, field: str) -> tuple[ModelPair, str]:
        known = self.registry.names()
        if not known:
            raise Unavailable("no model is loaded yet; retry shortly", reason="MODELS_LOADING")
        violations = Violations()
        pair = self.registry.get(name)
        if not name:
            violations.add(field, f"required: one of {', '.join(known)}")
        elif pair is None:
            violations.add(field, f"unknown model {name!r}; one of {', '.join(known)}")
        resolved_locale = normalise_locale(locale)
        if resolved_locale is None:
            violations.add("locale", "unsupported locale; use en or zh-CN")
        violations.raise_if_any()
        assert pair is not None and resolved_locale is not None  # else a violation was raised
        return pair, resolved_locale
