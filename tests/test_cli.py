"""The `creditline` command as an operator types it."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.harness import free_port
from services.scoring.modelling.artifact import load_artifact, validate_artifact
from tests.servers import wait_serving

CREDITLINE = Path(sys.executable).parent / "creditline"
# What the `train` and `dev` extras bring: serving (`pip install creditline`, the image) has none.
TRAINING_LIBRARIES = ("sklearn", "skl2onnx", "onnx", "matplotlib", "scipy", "threadpoolctl")
NOT_SERVED = (*TRAINING_LIBRARIES, "grpc_tools", "optbinning")
HIDE = f"import sys; sys.modules.update(dict.fromkeys({NOT_SERVED!r}))"


def creditline_without_training(*args: str) -> list[str]:
    """The `creditline` command in a Python where no training library can be imported."""
    return [sys.executable, "-c", f"{HIDE}; from services.cli import app; app()", *args]


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()


def limits_env(tmp_path: Path, scoring_port: int) -> dict[str, str]:
    """Limits on a database of the test's own, not data/limits.db of the working directory."""
    return {
        "CREDITLINE_LIMITS_DATABASE_URL": f"sqlite:///{tmp_path / 'limits.db'}",
        "CREDITLINE_LIMITS_SCORING_TARGET": f"127.0.0.1:{scoring_port}",
    }


def test_serve_scoring_on_a_chosen_port():
    port = free_port()
    process = subprocess.Popen(
        [CREDITLINE, "serve", "scoring", "--port", str(port)], stdout=subprocess.DEVNULL
    )
    wait_serving(port, "creditline.scoring.v1.ScoringService", process)
    assert stop(process) == 0


def test_serve_limits_on_a_chosen_port(tmp_path):
    port = free_port()
    # Limits serves without scoring (only decisions that need a score fail while it is down).
    env = {**os.environ, **limits_env(tmp_path, free_port())}
    process = subprocess.Popen(
        [CREDITLINE, "serve", "limits", "--port", str(port)], env=env, stdout=subprocess.DEVNULL
    )
    wait_serving(port, "creditline.limits.v1.LimitsService", process)
    assert stop(process) == 0
    assert (tmp_path / "limits.db").exists()


def monitoring_env(tmp_path: Path, scoring_port: int, limits_port: int) -> dict[str, str]:
    return {
        "CREDITLINE_MONITORING_DATABASE_URL": f"sqlite:///{tmp_path / 'monitoring.db'}",
        "CREDITLINE_MONITORING_SCORING_TARGET": f"127.0.0.1:{scoring_port}",
        "CREDITLINE_MONITORING_LIMITS_TARGET": f"127.0.0.1:{limits_port}",
    }


def test_serve_monitoring_on_a_chosen_port(tmp_path):
    port = free_port()
    # Monitoring serves without limits and scoring: signals wait in its outbox.
    env = {**os.environ, **monitoring_env(tmp_path, free_port(), free_port())}
    process = subprocess.Popen(
        [CREDITLINE, "serve", "monitoring", "--port", str(port)], env=env, stdout=subprocess.DEVNULL
    )
    wait_serving(port, "creditline.monitoring.v1.MonitoringService", process)
    assert stop(process) == 0
    assert (tmp_path / "monitoring.db").exists()


def test_run_starts_the_suite_and_stops_it_on_sigterm(tmp_path):
    scoring_port, limits_port, monitoring_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        **limits_env(tmp_path, scoring_port),
        **monitoring_env(tmp_path, scoring_port, limits_port),
        "CREDITLINE_SCORING_PORT": str(scoring_port),
        "CREDITLINE_LIMITS_PORT": str(limits_port),
        "CREDITLINE_MONITORING_PORT": str(monitoring_port),
    }
    # In a directory of its own: run writes its development tokens under data/dev there.
    process = subprocess.Popen(
        [CREDITLINE, "run"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_serving(scoring_port, "creditline.scoring.v1.ScoringService", process)
    wait_serving(limits_port, "creditline.limits.v1.LimitsService", process)
    wait_serving(monitoring_port, "creditline.monitoring.v1.MonitoringService", process)
    assert (tmp_path / "data" / "dev" / "tokens.yaml").exists()
    assert stop(process) == 0


def test_model_train_publishes_a_valid_model(tmp_path):
    result = subprocess.run(
        [CREDITLINE, "model", "train", "--name", "application", "--output", tmp_path],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # Published as the bundled version, chosen by the full fairness search.
    artifact = load_artifact(tmp_path / "application" / "1.1.0")
    validate_artifact(artifact)
    bundled = Path(__file__).resolve().parent.parent / "models" / "application" / "1.1.0"
    # Same seed and date: the published bytes are the bundled model's, to the byte.
    assert artifact.onnx == (bundled / "model.onnx").read_bytes()
    assert (tmp_path / "application/1.1.0/card.json").read_bytes() == (
        bundled / "card.json"
    ).read_bytes()


def test_unknown_model_name_is_refused(tmp_path):
    result = subprocess.run(
        [CREDITLINE, "model", "train", "--name", "fraud", "--output", tmp_path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "application, behaviour" in result.stderr + result.stdout


def test_the_services_import_no_training_library():
    modules = (
        "services.scoring.__main__",
        "services.limits.__main__",
        "services.monitoring.__main__",
        "services.cli",
        "services.demo",
        "services.devtools",
    )
    check = (
        f"import importlib; from pathlib import Path; {HIDE}\n"
        f"for module in {modules!r}: importlib.import_module(module)\n"
        "from services.scoring.modelling.artifact import load_artifact, validate_artifact\n"
        "for card in sorted(Path('models').glob('*/*/card.json')):\n"
        "    validate_artifact(load_artifact(card.parent))\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", check], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_serve_scoring_without_the_training_libraries():
    port = free_port()
    process = subprocess.Popen(
        creditline_without_training("serve", "scoring", "--port", str(port)),
        stdout=subprocess.DEVNULL,
    )
    wait_serving(port, "creditline.scoring.v1.ScoringService", process)
    assert stop(process) == 0


def test_model_train_without_the_train_extra_says_how_to_install_it(tmp_path):
    result = subprocess.run(
        creditline_without_training("model", "train", "--output", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "pip install 'creditline[train]'" in result.stderr
    assert not any(tmp_path.iterdir())
