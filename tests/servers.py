"""Real servers on port 0 for tests of any service: build, connect, stop."""

from services.scoring.__main__ import build_server as build_scoring_server
from services.scoring.settings import ScoringSettings


def scoring_settings(**overrides) -> ScoringSettings:
    defaults = dict(port=0, reload_interval_seconds=0, shutdown_grace_seconds=2)
    return ScoringSettings(**{**defaults, **overrides})


def start_scoring(**overrides):
    """A started scoring server on the bundled models and its registry."""
    return build_scoring_server(scoring_settings(**overrides))
