"""The README's grpcurl commands, sent as printed through a reflection-only client (the real
grpcurl runs them in tests/test_readme_grpcurl.py)."""

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
SCORING_ADDRESS = "127.0.0.1:50051"


def grpcurl_commands(address: str) -> list[list[str]]:
    commands = []
    for line in README.read_text().splitlines():
        if line.startswith("grpcurl ") and address in line:
            commands.append(shlex.split(line))
    return commands


def test_readme_has_the_documented_commands():
    verbs = [
        c[-1] if "-d" not in c else c[-1].rsplit("/", 1)[-1]
        for c in grpcurl_commands(SCORING_ADDRESS)
    ]
    assert "list" in verbs
    assert {"Score", "BatchScore", "GetModel", "Check"} <= set(verbs)


def test_readme_commands_work_as_printed(scoring_reflection):
    for command in grpcurl_commands(SCORING_ADDRESS):
        assert command[:2] == ["grpcurl", "-plaintext"], command
        if command[-1] == "list":
            services = scoring_reflection.list_services()
            assert "creditline.scoring.v1.ScoringService" in services
            assert "grpc.health.v1.Health" in services
        elif command[-2] == "describe":
            service = scoring_reflection.describe(command[-1])
            assert {"Score", "BatchScore", "GetModel", "ListModels"} <= set(service.methods_by_name)
        else:
            body = command[command.index("-d") + 1]
            method = command[-1]
            assert re.fullmatch(r"[\w.]+/\w+", method), method
            response = scoring_reflection.call(method, body)
            assert response, f"{method} answered nothing"
            if method.endswith("/Score"):
                assert response["reasons"] and response["riskBand"].startswith("RISK_BAND_")
            if method.endswith("/BatchScore"):
                assert len(response["results"]) == 2
            if method.endswith("/Check"):
                assert response["status"] == "SERVING"
