"""Limits' view of the scoring service: a score with its reasons in every locale.

Scoring answers in one locale; the reason texts in both come from the model's card (GetModel),
fetched once per model version. Scoring down or too slow is UNAVAILABLE to our caller, so no
decision that needs a score is ever taken without one.
"""

import math
import threading
from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import json_format, struct_pb2

from creditline.scoring.v1 import scoring_service_pb2 as pb
from creditline.scoring.v1 import scoring_service_pb2_grpc
from creditline.type.v1 import risk_pb2
from services.common.channels import ChannelOptions, ClientSecurity, create_channel
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    Unavailable,
    violations_of,
)
from services.limits.decisions import Score, Unscored
from services.limits.records import Reason, ReasonSource

SERVICE = pb.DESCRIPTOR.services_by_name["ScoringService"].full_name
# Every scoring RPC is a read: safe to retry on UNAVAILABLE.
RETRYABLE = ("Score", "BatchScore", "GetModel", "ListModels")


class ScoringClient:
    def __init__(
        self, target: str, timeout_seconds: float, security: ClientSecurity | None = None
    ) -> None:
        self.channel = create_channel(
            target,
            service=SERVICE,
            retryable_methods=RETRYABLE,
            options=ChannelOptions(default_timeout_seconds=timeout_seconds),
            security=security,
        )
        self.stub = scoring_service_pb2_grpc.ScoringServiceStub(self.channel)
        # (model, version) -> {reason code: {locale: text}}
        self._reason_texts: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.channel.close()

    def score(self, model: str, features: Mapping[str, struct_pb2.Value]) -> Score:
        request = pb.ScoreRequest(model=model, features=features, locale="en")
        try:
            response = self.stub.Score(request)
        except grpc.RpcError as error:
            raise _translated(error) from None
        texts = self._texts(model, response.model_version)
        return Score(
            risk_band=risk_pb2.RiskBand.Name(response.risk_band).removeprefix("RISK_BAND_"),
            probability_of_default=response.probability_of_default,
            points=response.score,
            reasons=tuple(
                Reason(
                    r.code, texts.get(r.code, {"en": r.text, "zh-CN": r.text}), ReasonSource.model
                )
                for r in response.reasons
            ),
            model_name=response.model,
            model_version=response.model_version,
        )

    def batch_score(
        self, model: str, rows: Sequence[Mapping[str, float]]
    ) -> list[Score | Unscored]:
        """Scores the risk states of many accounts in one call. A feature a row has no value
        for is sent as NaN: the model scores it in its missing bin where it has one, and
        otherwise refuses the row. A row the model refuses is Unscored with the reason;
        values outside the model's ranges are scored at their end and named in `clamped`."""
        names = self._feature_names(model)
        if not rows:
            return []
        request = pb.BatchScoreRequest(
            model=model,
            columns=[
                pb.FeatureColumn(name=name, numbers=[row.get(name, math.nan) for row in rows])
                for name in names
            ],
        )
        try:
            response = self.stub.BatchScore(request)
        except grpc.RpcError as error:
            raise _translated(error, callers_input=False) from None
        texts = self._texts(model, response.model_version)
        results: list[Score | Unscored] = []
        for result in response.results:
            if result.problems:  # the columns are in `names` order: name the feature
                described = (f"{names[_column(p.field)]}: {p.description}" for p in result.problems)
                results.append(Unscored("; ".join(described)))
                continue
            results.append(
                Score(
                    risk_band=risk_pb2.RiskBand.Name(result.risk_band).removeprefix("RISK_BAND_"),
                    probability_of_default=result.probability_of_default,
                    points=result.score,
                    reasons=tuple(
                        Reason(code, texts[code], ReasonSource.model)
                        for code in result.reason_codes
                    ),
                    model_name=response.model,
                    model_version=response.model_version,
                    clamped=tuple(result.clamped_features),
                )
            )
        return results

    def _feature_names(self, model: str) -> list[str]:
        try:
            card = self.stub.GetModel(pb.GetModelRequest(name=model)).model
        except grpc.RpcError as error:
            raise _translated(error) from None
        return [feature.name for feature in card.features]

    def _texts(self, model: str, version: str) -> dict[str, dict[str, str]]:
        key = (model, version)
        if key not in self._reason_texts:
            try:
                card = self.stub.GetModel(pb.GetModelRequest(name=model)).model.card
            except grpc.RpcError as error:
                raise _translated(error) from None
            features = json_format.MessageToDict(card)["features"]
            with self._lock:
                self._reason_texts[key] = {
                    feature["reason_code"]: dict(feature["reason_text"]) for feature in features
                }
        return self._reason_texts[key]


def _column(field: str) -> int:
    """The column index of a field path such as "columns[3].numbers[17]"."""
    return int(field.split("]", 1)[0].removeprefix("columns["))


def _translated(error: grpc.RpcError, callers_input: bool = True) -> Exception:
    """Scoring's refusal of features the caller gave is the caller's bad input; its refusal of
    what limits built itself (the accounts' risk states) is not, and never reaches the caller
    as INVALID_ARGUMENT; anything else means scoring cannot answer now."""
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT and not callers_input:
        return FailedPrecondition(
            "the scoring service refused the accounts' risk states: the model and the "
            "reported profiles disagree; operators are to look into it",
            reason="SCORING_REFUSED_RISK_STATE",
        )
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        details = error.details() or "refused by the scoring service"
        violations = violations_of(error) or [FieldViolation("features", details)]
        return InvalidArgument(violations)
    return Unavailable(
        "the scoring service is unavailable; retry later", reason="SCORING_UNAVAILABLE"
    )
