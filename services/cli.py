"""The `creditline` command line: serve the services, run the suite, train the models."""

import os
import platform
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="creditline: credit lines as gRPC services.")
serve_app = typer.Typer(no_args_is_help=True, help="Start one service in this process.")
model_app = typer.Typer(no_args_is_help=True, help="Train and inspect the credit models.")
app.add_typer(serve_app, name="serve")
app.add_typer(model_app, name="model")
dev_app = typer.Typer(no_args_is_help=True, help="Development certificates and tokens.")
app.add_typer(dev_app, name="dev")

# The services `creditline run` starts, in dependency order (callees first).
SUITE = ("scoring", "limits", "monitoring")
# What `creditline model train` imports beyond the services: the `train` extra.
TRAINING_MODULES = frozenset(
    {"sklearn", "skl2onnx", "onnx", "matplotlib", "scipy", "threadpoolctl"}
)

Port = Annotated[int | None, typer.Option(help="gRPC port (default from the environment).")]
Host = Annotated[str | None, typer.Option(help="Listen address (default 127.0.0.1).")]
MetricsPort = Annotated[int | None, typer.Option(help="Prometheus /metrics port.")]


@serve_app.command("scoring")
def serve_scoring(port: Port = None, host: Host = None, metrics_port: MetricsPort = None) -> None:
    """Serve ScoringService (default 127.0.0.1:50051)."""
    from services.scoring.__main__ import main

    main(port=port, host=host, metrics_port=metrics_port)


@serve_app.command("limits")
def serve_limits(port: Port = None, host: Host = None, metrics_port: MetricsPort = None) -> None:
    """Serve LimitsService (default 127.0.0.1:50052)."""
    from services.limits.__main__ import main

    main(port=port, host=host, metrics_port=metrics_port)


@serve_app.command("monitoring")
def serve_monitoring(
    port: Port = None, host: Host = None, metrics_port: MetricsPort = None
) -> None:
    """Serve MonitoringService (default 127.0.0.1:50053)."""
    from services.monitoring.__main__ import main

    main(port=port, host=host, metrics_port=metrics_port)


@app.command()
def run(
    auth: Annotated[
        bool, typer.Option(help="Require bearer tokens: fresh development ones, printed once.")
    ] = True,
) -> None:
    """Start the whole suite on the local defaults, each service in its own process."""
    env = os.environ.copy()
    if auth:
        from services.devtools import dev_auth_environment, tokens_banner, write_dev_tokens

        dev_tokens = write_dev_tokens(Path("data/dev"))
        typer.echo(tokens_banner(dev_tokens), err=True)
        env = {**dev_auth_environment(dev_tokens), **env}  # settings already given win
    processes = [
        subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env) for name in SUITE
    ]
    typer.echo(f"started {', '.join(SUITE)}; Ctrl-C stops them", err=True)

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [process.wait() for process in processes]
    # A service still starting when asked to stop may die of the SIGTERM before its handler
    # is in place: stopped as asked, not a failure.
    if stopping:
        codes = [0 if code == -signal.SIGTERM else code for code in codes]
    raise typer.Exit(max(codes, key=abs))


@app.command()
def demo(
    limits: Annotated[str, typer.Option(help="Limits address.")] = "127.0.0.1:50052",
    monitoring: Annotated[str, typer.Option(help="Monitoring address.")] = "127.0.0.1:50053",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CREDITLINE_TOKEN",
            help="An operator token (`creditline run` prints one); none for a suite without auth.",
        ),
    ] = None,
) -> None:
    """Drive a scripted customer through the running suite (start it with `creditline run`)."""
    from services.demo import run_demo

    run_demo(limits, monitoring, token)


@model_app.command("train")
def train(
    output: Annotated[Path, typer.Option(help="Model directory to write into.")] = Path("models"),
    name: Annotated[
        str | None, typer.Option(help="Train only this model: application or behaviour.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 7,
    version: Annotated[
        str | None,
        typer.Option(
            help="Version of the trained models (default: each model's committed version)."
        ),
    ] = None,
) -> None:
    """Train, check parity and publish the credit models with their cards and plots."""
    if platform.machine() in ("x86_64", "AMD64"):
        # OpenBLAS chooses its kernels by CPU, and they round differently: on an AVX-512 machine
        # the fitted coefficients land 1e-7 away from an AVX2 machine's. One kernel everywhere
        # gives the same bytes on every machine (the committed models were fitted with it). It
        # must be set before numpy loads OpenBLAS, which nothing above has done yet.
        os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")
    try:
        from services.scoring.modelling.cli import train_with_progress
        from services.scoring.modelling.training import MODEL_NAMES
    except ModuleNotFoundError as missing:
        module = (missing.name or "").partition(".")[0]
        if module not in TRAINING_MODULES:
            raise
        typer.echo(
            f"creditline model train needs the training libraries ({module} is not "
            "installed): pip install 'creditline[train]'",
            err=True,
        )
        raise typer.Exit(1) from None

    if name is not None and name not in MODEL_NAMES:
        raise typer.BadParameter(f"one of {', '.join(MODEL_NAMES)}", param_hint="--name")
    train_with_progress(output, name=name, seed=seed, version=version)


@dev_app.command("certs")
def dev_certs(
    out: Annotated[Path, typer.Option(help="Directory to write into.")] = Path("certs"),
    namespace: Annotated[
        str, typer.Option(help="Kubernetes namespace in the certificates' names.")
    ] = "creditline",
    force: Annotated[bool, typer.Option(help="Replace existing files, the CA too.")] = False,
) -> None:
    """Write a development CA (ca.crt, ca.key) and, for each service, <service>.crt and
    <service>.key: server and client certificates for mTLS."""
    from services.devtools import write_dev_certs

    try:
        written = write_dev_certs(out, namespace=namespace, overwrite=force)
    except FileExistsError as error:
        raise typer.BadParameter(f"{error}; --force replaces them", param_hint="--out") from None
    for path in written:
        typer.echo(path)


@dev_app.command("tokens")
def dev_tokens(
    out: Annotated[Path, typer.Option(help="Directory to write into.")] = Path("data/dev"),
) -> None:
    """Write new development tokens for every role (tokens.yaml holds their digests; limits
    and monitoring get <service>.token) and print them once on standard error."""
    from services.devtools import tokens_banner, write_dev_tokens

    typer.echo(tokens_banner(write_dev_tokens(out)), err=True)
