"""Rescoring: accounts whose profile moved materially are scored again with the behaviour model,
in batches, in the background. Every score raises `behaviour_rescored`, which reports the band
and the profile scored to limits; a worse band raises `risk_band_worsened` as well.

Replicas share the work: each claims a batch of flagged accounts no other holds (see
`claim_rescoring`) and lets go of them with the scores stored, so every profile version is
scored by one replica. A replica that dies holding a claim leaves it to run out
(`CLAIM_SECONDS`, above any scoring call's deadline).

Ingestion only flags an account (`rescore_due`), so a slow or absent scoring service never
holds up ingestion: the flags wait, and the worker retries with backoff. A score is stored with
the profile version it was computed from; when events moved the profile meanwhile, the flag
stays up and the account is scored again.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from google.protobuf import json_format

from creditline.scoring.v1 import scoring_service_pb2 as pb
from creditline.scoring.v1 import scoring_service_pb2_grpc
from creditline.type.v1 import risk_pb2
from services.common.channels import ChannelOptions, create_channel
from services.common.workers import BackgroundWorker
from services.monitoring import metrics
from services.monitoring.detection import ScoredProfile, rescored
from services.monitoring.profile import features, moved_materially
from services.monitoring.rules import Rules, RulesHolder
from services.monitoring.store import MonitoringStore

log = structlog.get_logger("creditline.monitoring.rescoring")

MODEL = "behaviour"
SERVICE = pb.DESCRIPTOR.services_by_name["ScoringService"].full_name
RETRYABLE = ("BatchScore", "GetModel")
CLAIM_SECONDS = 120.0


@dataclass(frozen=True)
class ModelSchema:
    version: str
    feature_names: tuple[str, ...]  # in the card's order
    reasons: dict[str, tuple[str, dict[str, str]]]  # reason code -> (feature, {locale: text})


@dataclass(frozen=True)
class Scored:
    probability_of_default: float
    score: int
    risk_band: str
    reason_codes: tuple[str, ...]
    model_version: str


class BehaviourScorer:
    """Monitoring's view of the scoring service: batches of profiles, scored."""

    def __init__(self, target: str, timeout_seconds: float, **channel_options) -> None:
        self.channel = create_channel(
            target,
            service=SERVICE,
            retryable_methods=RETRYABLE,
            options=ChannelOptions(default_timeout_seconds=timeout_seconds),
            **channel_options,
        )
        self.stub = scoring_service_pb2_grpc.ScoringServiceStub(self.channel)
        self._schema: ModelSchema | None = None

    def close(self) -> None:
        self.channel.close()

    def schema(self, refresh: bool = False) -> ModelSchema:
        if self._schema is None or refresh:
            model = self.stub.GetModel(pb.GetModelRequest(name=MODEL)).model
            card = json_format.MessageToDict(model.card)
            self._schema = ModelSchema(
                version=model.version,
                feature_names=tuple(f.name for f in model.features),
                reasons={
                    f["reason_code"]: (f["name"], dict(f["reason_text"])) for f in card["features"]
                },
            )
        return self._schema

    def score(self, profiles: Sequence[Mapping[str, float]]) -> list[Scored]:
        """Scores the profiles. Scoring clamps values outside the card's ranges (a utilisation
        of 7 is as bad as the model's 5); a feature a profile has no value for is sent as NaN,
        which the model scores in its missing bin (or refuses that row, and only it)."""
        schema = self.schema()
        request = pb.BatchScoreRequest(
            model=MODEL,
            columns=[
                pb.FeatureColumn(name=name, numbers=[p.get(name, math.nan) for p in profiles])
                for name in schema.feature_names
            ],
        )
        response = self.stub.BatchScore(request)
        if response.model_version != schema.version:
            self.schema(refresh=True)
        return [
            Scored(
                probability_of_default=r.probability_of_default,
                score=r.score,
                # A row scoring refused alone has no band: no band signal is raised on it.
                risk_band=""
                if r.problems
                else risk_pb2.RiskBand.Name(r.risk_band).removeprefix("RISK_BAND_"),
                reason_codes=tuple(r.reason_codes),
                model_version=response.model_version,
            )
            for r in response.results
        ]


class Rescorer(BackgroundWorker):
    """The background worker: scores flagged accounts until none is left, then waits."""

    def __init__(
        self,
        store: MonitoringStore,
        scorer: BehaviourScorer,
        rules: RulesHolder,
        clock: Callable[[], datetime],
        on_alerts: Callable[[int], None],
    ) -> None:
        super().__init__("rescoring")
        self.store = store
        self.scorer = scorer
        self.rules = rules
        self.clock = clock
        self.on_alerts = on_alerts

    def run_once(self) -> bool:
        """Scores one batch of flagged accounts; returns whether there was any."""
        rules = self.rules.rules
        now = self.clock()
        with self.store.unit_of_work() as uow:
            ids = uow.claim_rescoring(
                rules.rescoring.batch_size, now, now + timedelta(seconds=CLAIM_SECONDS)
            )
        if not ids:
            return False
        try:
            self._score(ids, rules)
        except Exception:
            with self.store.unit_of_work() as uow:  # for this replica's retry, or another's
                uow.release_rescoring(ids)
            raise
        return True

    def _score(self, ids: list[str], rules: Rules) -> None:
        with self.store.read() as uow:
            states = uow.account_states(ids, lock=False)
        snapshot = {
            i: ScoredProfile(s.profile_version, s.last_event_at, features(s))
            for i, s in states.items()
        }
        scores = dict(
            zip(snapshot, self.scorer.score([p.features for p in snapshot.values()]), strict=True)
        )
        now = self.clock()
        with self.store.unit_of_work() as uow:
            current = uow.account_states(snapshot, lock=True)
            raised = []
            for account_id, state in current.items():
                if not state.rescore_due:  # another replica scored it meanwhile
                    continue
                profile = snapshot[account_id]
                scored = scores[account_id]
                raised.extend(
                    rescored(state, profile, scored.risk_band, scored.model_version, rules)
                )
                state.score = {
                    "probability_of_default": scored.probability_of_default,
                    "score": scored.score,
                    "risk_band": scored.risk_band,
                    "reason_codes": list(scored.reason_codes),
                    "model_version": scored.model_version,
                    "at": now.timestamp(),
                }
                # Events that arrived meanwhile may have moved the profile again: then the
                # flag stays up and the account is scored again.
                moved = state.profile_version != profile.version and moved_materially(
                    features(state), profile.features, rules.rescoring.numeric_change
                )
                if not moved:
                    state.scored_profile = profile.features
                    state.rescore_due = False
            uow.save_states(current.values(), set(current), now)
            uow.release_rescoring(ids)
            uow.add_alerts(raised, rules.version, now)
        metrics.ACCOUNTS_RESCORED.inc(len(snapshot))
        metrics.count_signals(raised)
        if raised:
            self.on_alerts(self.store.number_alerts())
        log.debug("rescoring.batch", accounts=len(current), signals=len(raised))
