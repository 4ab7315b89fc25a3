"""The models a scoring server serves: loading, validation, hot reload, champion and challenger.

The model directory holds `<name>/<version>/` artifacts. For each name the newest version is
the champion, unless a challenger version is configured, which is then scored in shadow and the
newest other version is the champion. A new version placed in the directory is validated
(card, schema, parity) before it is swapped in; calls in flight finish on the model they
started with. A bad artifact is refused with a log line, and the old model keeps serving.
"""

import contextlib
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from packaging.version import InvalidVersion, Version
from prometheus_client import Counter, Gauge, Histogram

from services.common.periodic import Periodic
from services.scoring.model import ScoreDistribution, ServedModel
from services.scoring.modelling.artifact import ArtifactError, load_artifact, validate_artifact

log = structlog.get_logger("creditline.scoring.registry")

MODEL_RELOADS = Counter(
    "creditline_model_loads_total", "Model versions loaded or refused.", ["model", "outcome"]
)
MODEL_PSI = Gauge(
    "creditline_model_population_stability_index",
    "PSI of live scores against the training scores.",
    ["model", "version"],
)
MODEL_PSI_SCORES = Gauge(
    "creditline_model_psi_scores",
    "Live scores the PSI is computed from (since the version was loaded).",
    ["model", "version"],
)
MODEL_INFO = Gauge(
    "creditline_model_serving",
    "1 for each model version being served.",
    ["model", "version", "role"],
)
SHADOW_RESULTS = Counter(
    "creditline_shadow_evaluations_total",
    "Challenger evaluations in shadow, by whether the band agreed with the champion's.",
    ["model", "champion_version", "challenger_version", "band_agreement"],
)
SHADOW_SCORE_DELTA = Histogram(
    "creditline_shadow_score_delta_points",
    "Challenger score minus champion score.",
    ["model"],
    buckets=(-100, -50, -20, -10, -5, 0, 5, 10, 20, 50, 100),
)
SHADOW_DROPPED = Counter(
    "creditline_shadow_dropped_total", "Shadow evaluations skipped: the queue was full.", ["model"]
)


@dataclass(frozen=True)
class ModelPair:
    """The champion whose results are returned, and the challenger scored in shadow."""

    champion: ServedModel
    challenger: ServedModel | None = None


def version_key(version: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


class ModelRegistry:
    """Thread-safe map from model name to the pair being served."""

    def __init__(
        self,
        model_dir: Path,
        *,
        challenger_versions: Mapping[str, str] | None = None,
        psi_min_count: int = 100,
    ) -> None:
        self.model_dir = model_dir
        self.challenger_versions = dict(challenger_versions or {})
        self.psi_min_count = psi_min_count
        self._pairs: dict[str, ModelPair] = {}
        # Artifacts refused, with the modification times they were refused at.
        self._refused: dict[Path, float] = {}
        self._lock = threading.Lock()
        self._watcher: Periodic | None = None
        self.shadow = ShadowScorer()

    def get(self, name: str) -> ModelPair | None:
        return self._pairs.get(name)

    def names(self) -> list[str]:
        return sorted(self._pairs)

    def refresh(self) -> None:
        """Loads every new or changed version in the directory; safe to call at any time."""
        with self._lock:
            for name_dir in sorted(p for p in self.model_dir.iterdir() if p.is_dir()):
                self._refresh_model(name_dir)

    def _refresh_model(self, name_dir: Path) -> None:
        name = name_dir.name
        current = self._pairs.get(name)
        versions = sorted(
            # A dot-directory is a version still being copied in; it is renamed when complete.
            (p for p in name_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: version_key(p.name),
        )
        challenger_version = self.challenger_versions.get(name)
        champion = self._newest_valid(
            [p for p in versions if p.name != challenger_version],
            current.champion if current else None,
        )
        if champion is None:
            return
        challenger = None
        if challenger_version:
            loaded = current.challenger if current else None
            challenger = self._newest_valid(
                [p for p in versions if p.name == challenger_version], loaded
            )
        pair = ModelPair(champion, challenger)
        if current == pair:
            return
        self._pairs[name] = pair
        self._publish(name, current, pair)

    def _newest_valid(self, candidates: list[Path], loaded: ServedModel | None):
        """The newest version that validates, trying older ones when a newer one is refused."""
        for path in reversed(candidates):
            if loaded is not None and loaded.artifact.path == path:
                return loaded
            mtime = _modified(path)
            if self._refused.get(path) == mtime:
                continue
            try:
                artifact = load_artifact(path)
                validate_artifact(artifact)
                model = ServedModel(artifact, psi_min_count=self.psi_min_count)
            except (ArtifactError, OSError, ValueError, KeyError) as error:
                self._refused[path] = mtime
                MODEL_RELOADS.labels(path.parent.name, "refused").inc()
                log.error("model.refused", path=str(path), error=str(error))
                continue
            MODEL_RELOADS.labels(model.name, "loaded").inc()
            return model
        return loaded

    def _publish(self, name: str, old: ModelPair | None, new: ModelPair) -> None:
        if old is not None:
            for role, model in (("champion", old.champion), ("challenger", old.challenger)):
                if model is not None:
                    MODEL_INFO.remove(name, model.version, role)
                    _remove_if_present(MODEL_PSI, name, model.version)
                    _remove_if_present(MODEL_PSI_SCORES, name, model.version)
        for role, model in (("champion", new.champion), ("challenger", new.challenger)):
            if model is not None:
                MODEL_INFO.labels(name, model.version, role).set(1)
                MODEL_PSI.labels(name, model.version).set_function(model.distribution.index)
                MODEL_PSI_SCORES.labels(name, model.version).set_function(
                    _live_count(model.distribution)
                )
        log.info(
            "model.serving",
            model=name,
            version=new.champion.version,
            challenger_version=new.challenger.version if new.challenger else None,
        )

    def watch(self, interval_seconds: float) -> None:
        """Polls the directory for new versions in a daemon thread."""
        self._watcher = Periodic(interval_seconds, self.refresh, "model-watcher").start()

    def close(self) -> None:
        if self._watcher:
            self._watcher.stop()
        self.shadow.close()


class ShadowScorer:
    """Scores challengers off the request path: one worker thread and a bounded queue, so a
    slow challenger can never slow down or fail a champion call."""

    def __init__(self, capacity: int = 1024) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._worker = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._worker.start()

    def submit(self, pair: ModelPair, rows: np.ndarray, champion_scores, evaluation_id: str):
        if pair.challenger is None:
            return
        try:
            self._queue.put_nowait((pair, rows, champion_scores, evaluation_id))
        except queue.Full:
            SHADOW_DROPPED.labels(pair.champion.name).inc()

    def drain(self) -> None:
        """Waits until every submitted evaluation is done (tests and shutdown)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._evaluate(*item)
            except Exception:  # noqa: BLE001 - a failing challenger is logged, never fatal
                log.exception("shadow.failed")
            finally:
                self._queue.task_done()
        self._queue.task_done()

    @staticmethod
    def _evaluate(pair: ModelPair, rows: np.ndarray, champion, evaluation_id: str) -> None:
        challenger_model = pair.challenger
        if challenger_model is None:  # submit queues only pairs with a challenger
            return
        challenger = challenger_model.score(rows)
        name = pair.champion.name
        delta = np.subtract(challenger.score, champion.score)
        for champion_band, challenger_band, points in zip(
            champion.band, challenger.band, delta, strict=True
        ):
            agreement = "same" if champion_band == challenger_band else "different"
            SHADOW_RESULTS.labels(
                name, pair.champion.version, challenger_model.version, agreement
            ).inc()
            SHADOW_SCORE_DELTA.labels(name).observe(float(points))
        log.info(
            "shadow.scored",
            model=name,
            evaluation_id=evaluation_id,
            champion_version=pair.champion.version,
            challenger_version=challenger_model.version,
            rows=len(rows),
            band_changes=sum(a != b for a, b in zip(champion.band, challenger.band, strict=True)),
            mean_score_delta=round(float(np.mean(delta)), 2),
        )


def _modified(path: Path) -> float:
    try:
        return max(p.stat().st_mtime for p in [path, *path.iterdir()])
    except OSError:
        return -1.0


def _live_count(distribution: ScoreDistribution) -> Callable[[], float]:
    """A gauge function of this distribution's live count (bound now, not by the loop)."""
    return lambda: distribution.live_count


def _remove_if_present(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
