"""Log lines as each reader gets them: JSON for machines, readable text at a terminal, and JSON
in Kubernetes whatever the output is."""

import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A service's logging as the services set it up: its own events and a library's, through the
# standard library.
LOG_TWO_LINES = """
import logging
import structlog
from services.common.logging import configure_logging

configure_logging("probe", "info")
structlog.get_logger("probe").info("rpc.finished", method="/probe.Probe/Echo", code="OK")
logging.getLogger("library").warning("from a library")
"""


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    return {**base, **extra}


def log_to_a_pipe(environment: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", LOG_TWO_LINES],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def log_to_a_terminal(environment: dict[str, str]) -> str:
    """Runs the probe with standard output on a pseudo-terminal; returns what it printed."""
    terminal, process_side = os.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", LOG_TWO_LINES],
            cwd=ROOT,
            env=environment,
            stdout=process_side,
            stderr=subprocess.PIPE,
        )
        os.close(process_side)
        output = b""
        # Read while it runs: a full terminal buffer would block it.
        while True:
            ready, _, _ = select.select([terminal], [], [], 60)
            assert ready, "the probe printed nothing for 60 s"
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(60) == 0, process.stderr.read().decode()
        process.stderr.close()
    finally:
        os.close(terminal)
    return output.decode()


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_json_when_standard_output_is_not_a_terminal():
    own, library = json_lines(log_to_a_pipe(env()))
    assert own["event"] == "rpc.finished" and own["code"] == "OK"
    assert (own["service"], own["level"]) == ("probe", "info") and own["timestamp"]
    assert library["event"] == "from a library" and library["logger"] == "library"
    assert (library["service"], library["level"]) == ("probe", "warning")


def test_readable_text_at_a_terminal():
    # Without its colours: `2026-...Z [info     ] rpc.finished   code=OK method=... service=probe`
    text = re.sub(r"\x1b\[[0-9;]*m", "", log_to_a_terminal(env()))
    own, library = text.splitlines()
    assert re.search(r"Z \[info +\] rpc\.finished +code=OK method=/probe\.Probe/Echo", own), own
    assert own.endswith("service=probe")
    assert re.search(r"\[warning +\] from a library +\[library\] service=probe", library), library


def test_json_in_kubernetes_even_at_a_terminal():
    output = log_to_a_terminal(env(KUBERNETES_SERVICE_HOST="10.96.0.1"))
    own, library = json_lines(output)
    assert own["event"] == "rpc.finished" and library["event"] == "from a library"
