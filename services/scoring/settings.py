"""Settings of the scoring service (environment variables prefixed CREDITLINE_SCORING_)."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

# The default models, trained reproducibly by `creditline model train` and shipped with the code.
BUNDLED_MODELS = Path(__file__).resolve().parents[2] / "models"


class ScoringSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CREDITLINE_SCORING_", extra="ignore", frozen=True)

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    model_dir: Path = Field(
        BUNDLED_MODELS,
        description="Directory of <model>/<version>/ artifacts, watched for new ones.",
    )
    challenger_versions: dict[str, str] = Field(
        default_factory=dict,
        description='Versions scored in shadow, by model, as JSON: {"application": "1.2.0"}.',
    )
    reload_interval_seconds: float = Field(
        2.0, ge=0, description="How often the model directory is checked; 0 turns reload off."
    )
    max_batch_rows: int = Field(10_000, ge=1, description="Most rows one BatchScore may carry.")
    psi_min_count: int = Field(
        100, ge=1, description="Live scores needed before the stability index is judged."
    )
