"""Conversions between the scoring protos and the transport-free model results."""

import itertools
import math

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from creditline.scoring.v1 import scoring_service_pb2 as pb
from creditline.type.v1 import risk_pb2
from services.scoring.model import EncodedBatch, ScoreDistribution, ScoredRows, ServedModel
from services.scoring.registry import ModelPair

RISK_BANDS = {letter: risk_pb2.RiskBand.Value(f"RISK_BAND_{letter}") for letter in "ABCDE"}
STABILITY = {
    "insufficient_data": pb.STABILITY_STATUS_INSUFFICIENT_DATA,
    "stable": pb.STABILITY_STATUS_STABLE,
    "watch": pb.STABILITY_STATUS_WATCH,
    "act": pb.STABILITY_STATUS_ACT,
}
# Left out of the card a client sees: rows for the server's own parity re-check.
INTERNAL_CARD_KEYS = frozenset({"parity_sample"})


def feature_values(features) -> dict[str, object]:
    """A ScoreRequest's feature map as plain Python: numbers, strings; anything else as is."""
    values: dict[str, object] = {}
    for name, value in features.items():
        kind = value.WhichOneof("kind")  # inline: this runs for every feature of every Score
        if kind == "number_value":
            values[name] = value.number_value
        elif kind == "string_value":
            values[name] = value.string_value
        else:
            values[name] = _plain(value)
    return values


def _plain(value: struct_pb2.Value) -> object:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind in ("null_value", None):  # grpcurl sends a JSON null in a map as an empty Value
        return math.nan  # a missing value: scored where the feature has a missing bin
    return None  # a list or a struct: never a valid feature value


def feature_columns(columns) -> list[tuple[str, list[float], list[str]]]:
    return [(c.name, c.numbers, c.categories) for c in columns]


def score_response(
    model: ServedModel, scored: ScoredRows, locale: str, evaluation_id: str
) -> pb.ScoreResponse:
    points = scored.reason_points[0]
    response = pb.ScoreResponse(
        probability_of_default=float(scored.probability_of_default[0]),
        score=int(scored.score[0]),
        risk_band=RISK_BANDS[scored.band[0]],
        model=model.name,
        model_version=model.version,
        evaluation_id=evaluation_id,
    )
    add_reason = response.reasons.add  # cheaper than building Reasons and copying them in
    reasons = model.reasons_in(locale)
    for f in scored.reason_features[0]:
        code, name, text = reasons[f]
        add_reason(code=code, feature=name, points=round(float(points[f]), 2), text=text)
    return response


def batch_response(
    model: ServedModel,
    batch: EncodedBatch,
    scored: ScoredRows | None,
    locale: str,
    evaluation_id: str,
    layout: "pb.ResultLayout.ValueType" = pb.RESULT_LAYOUT_ROWS,
) -> pb.BatchScoreResponse:
    reason_table = model.reasons_in(locale)  # per feature: code, name, text
    codes = [code for code, _, _ in reason_table]
    response = pb.BatchScoreResponse(
        model=model.name, model_version=model.version, evaluation_id=evaluation_id
    )
    if layout == pb.RESULT_LAYOUT_COLUMNS:
        used = _fill_columns(response.columns, batch, scored, codes)
    else:
        used = _add_results(response.results, batch, scored, codes)
    response.reason_texts.update({codes[f]: reason_table[f][2] for f in sorted(used)})
    return response


def _add_results(
    results, batch: EncodedBatch, scored: ScoredRows | None, codes: list[str]
) -> set[int]:
    """A ScoreResult per row (RESULT_LAYOUT_ROWS); returns the features whose reasons it used."""
    # Rows share few distinct reason lists: look each one's codes up once.
    codes_of: dict[tuple[int, ...], list[str]] = {}

    def reason_codes(reasons: list[int]) -> list[str]:
        key = tuple(reasons)
        found = codes_of.get(key)
        if found is None:
            found = codes_of[key] = [codes[f] for f in reasons]
        return found

    add_result = results.add  # measured fastest way to build a thousand results
    scored_rows = (
        zip(
            scored.probability_of_default,
            scored.score,
            scored.band,
            scored.reason_features,
            strict=True,
        )
        if scored is not None
        else iter(())
    )
    if not batch.refused and not batch.clamped:  # the usual batch: every row as it came
        for pd, score, band, reasons in scored_rows:
            add_result(
                probability_of_default=pd,
                score=score,
                risk_band=RISK_BANDS[band],
                reason_codes=reason_codes(reasons),
            )
    else:
        for row in range(batch.size):
            if row in batch.refused:
                add_result(problems=_problems(batch.refused[row]))
                continue
            pd, score, band, reasons = next(scored_rows)
            add_result(
                probability_of_default=pd,
                score=score,
                risk_band=RISK_BANDS[band],
                reason_codes=reason_codes(reasons),
                clamped_features=batch.clamped.get(row, ()),
            )
    return {f for reasons in codes_of for f in reasons}


def _fill_columns(
    columns: pb.ScoreColumns, batch: EncodedBatch, scored: ScoredRows | None, codes: list[str]
) -> set[int]:
    """Every row's values in columns (RESULT_LAYOUT_COLUMNS): an extend per column, not a
    message per row. A refused row holds NaN, 0, an unspecified band and no reasons. A reason
    is its feature's position, and reason_codes lists the model's codes in feature order.
    Returns the features whose reasons it used."""
    if scored is None:  # every row refused
        pds, scores, bands, reasons = [], [], [], []
    else:
        pds, scores, reasons = scored.probability_of_default, scored.score, scored.reason_features
        bands = [RISK_BANDS[band] for band in scored.band]
    if batch.refused:  # a placeholder at each refused row's place
        kept = iter(range(len(pds)))
        order = [None if row in batch.refused else next(kept) for row in range(batch.size)]
        pds = [math.nan if i is None else pds[i] for i in order]
        scores = [0 if i is None else scores[i] for i in order]
        bands = [risk_pb2.RISK_BAND_UNSPECIFIED if i is None else bands[i] for i in order]
        reasons = [[] if i is None else reasons[i] for i in order]
    columns.probabilities_of_default.extend(pds)
    columns.scores.extend(scores)
    columns.risk_bands.extend(bands)
    columns.reason_counts.extend(map(len, reasons))
    reason_indices = list(itertools.chain.from_iterable(reasons))
    columns.reason_indices.extend(reason_indices)
    columns.reason_codes.extend(codes)
    add_flagged = columns.flagged_rows.add
    for row in sorted(batch.refused.keys() | batch.clamped.keys()):
        add_flagged(
            row=row,
            clamped_features=batch.clamped.get(row, ()),
            problems=_problems(batch.refused.get(row, ())),
        )
    return set(reason_indices)


def _problems(problems) -> list[pb.ValueProblem]:
    return [
        pb.ValueProblem(field=field, description=description) for field, description in problems
    ]


def model_message(pair: ModelPair) -> pb.Model:
    champion = pair.champion
    create_time = timestamp_pb2.Timestamp()
    create_time.FromDatetime(champion.created_at)
    card = struct_pb2.Struct()
    json_format.ParseDict(
        {k: v for k, v in champion.artifact.card.items() if k not in INTERNAL_CARD_KEYS}, card
    )
    return pb.Model(
        name=champion.name,
        version=champion.version,
        challenger_version=pair.challenger.version if pair.challenger else "",
        create_time=create_time,
        features=[
            pb.FeatureSpec(
                name=f.name,
                type=pb.FEATURE_TYPE_CATEGORICAL if f.categorical else pb.FEATURE_TYPE_NUMERIC,
                min_value=0.0 if f.categorical else f.minimum,
                max_value=0.0 if f.categorical else f.maximum,
                categories=f.categories,
                description=f.description,
                missing_value=pb.MISSING_VALUE_OWN_BIN
                if f.missing_bin
                else pb.MISSING_VALUE_REQUIRED,
            )
            for f in champion.features
        ],
        population_stability=stability_message(champion.distribution),
        card=card,
    )


def stability_message(distribution: ScoreDistribution) -> pb.PopulationStability:
    return pb.PopulationStability(
        index=round(distribution.index(), 6),
        live_count=distribution.live_count,
        status=STABILITY[distribution.status()],
    )
