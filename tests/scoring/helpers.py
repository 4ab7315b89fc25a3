"""Valid inputs built from a model card, and readers of rich gRPC errors."""

import json
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from creditline.scoring.v1 import scoring_service_pb2 as pb
from services.common.errors import violations_of
from services.scoring.settings import BUNDLED_MODELS


def card(name: str, models: Path = BUNDLED_MODELS) -> dict:
    (version_dir,) = sorted((models / name).iterdir())[-1:]
    return json.loads((version_dir / "card.json").read_text())


def valid_features(model_card: dict, pick: int = 0) -> dict[str, float | str]:
    """A valid applicant or account: category number `pick`, or a number inside each range."""
    values: dict[str, float | str] = {}
    for spec in model_card["features"]:
        if spec["type"] == "categorical":
            values[spec["name"]] = spec["categories"][pick % len(spec["categories"])]
        else:
            low, high = spec["min"], spec["max"]
            values[spec["name"]] = round(low + (high - low) * ((pick * 0.37) % 1.0), 2)
    return values


def score_request(model: str, features: dict, locale: str = "") -> pb.ScoreRequest:
    request = pb.ScoreRequest(model=model, locale=locale)
    for name, value in features.items():
        request.features[name].CopyFrom(to_value(value))
    return request


def to_value(value) -> struct_pb2.Value:
    proto = struct_pb2.Value()
    if isinstance(value, str):
        proto.string_value = value
    elif isinstance(value, bool):
        proto.bool_value = value
    elif value is None:
        proto.null_value = struct_pb2.NULL_VALUE
    else:
        proto.number_value = value
    return proto


def batch_request(model: str, rows: list[dict], locale: str = "") -> pb.BatchScoreRequest:
    request = pb.BatchScoreRequest(model=model, locale=locale)
    for name in rows[0]:
        column = request.columns.add(name=name)
        if isinstance(rows[0][name], str):
            column.categories.extend(row[name] for row in rows)
        else:
            column.numbers.extend(row[name] for row in rows)
    return request


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """The BadRequest field violations of a failed call, by field."""
    return {v.field: v.description for v in violations_of(error)}
