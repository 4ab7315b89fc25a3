"""The published partition function and the settings that give a replica its partitions: the
same partition as the NATS server's `partition(n, 1)` mapping, and bad settings refused at start
with a message naming them."""

import asyncio
import shutil
import subprocess
import sys

import nats
import pytest
from pydantic import ValidationError

from services.monitoring.partitions import (
    account_key,
    parse_partitions,
    partition_of,
    subject_of,
)
from services.monitoring.settings import MonitoringSettings
from tests.servers import ROOT, eventually, free_port


def test_the_partition_is_fnv_1a_32_of_the_key_modulo_the_count():
    # Published FNV-1a 32-bit vectors: "" 0x811c9dc5, "a" 0xe40c292c, "foobar" 0xbf9cf968.
    assert partition_of("", 1 << 31) == 0x811C9DC5 % (1 << 31)
    assert partition_of("a", 1 << 31) == 0xE40C292C % (1 << 31)
    assert partition_of("foobar", 1000) == 0xBF9CF968 % 1000
    assert partition_of("acct-1", 1) == 0
    with pytest.raises(ValueError, match="at least 1"):
        partition_of("acct-1", 0)


def test_a_subject_names_the_partition_and_the_accounts_key():
    assert subject_of("creditline.repayments", "acct-7") == "creditline.repayments.acct-7"
    partition = partition_of("acct-7", 16)
    assert subject_of("creditline.repayments", "acct-7", 16) == (
        f"creditline.repayments.{partition}.acct-7"
    )
    # An id that is no subject token is keyed by its digest, the partition by that digest.
    key = account_key("acct 7/eu")
    assert len(key) == 64 and key == account_key("acct 7/eu")
    assert subject_of("s", "acct 7/eu", 8) == f"s.{partition_of(key, 8)}.{key}"


def test_partitions_named_by_ranges_by_replica_or_all():
    assert parse_partitions("all", 4) == (0, 1, 2, 3)
    assert parse_partitions("0-2, 7,5", 8) == (0, 1, 2, 5, 7)
    assert parse_partitions("1/4", 16) == (1, 5, 9, 13)
    assert parse_partitions("2/3", 8) == (2, 5)
    for spec, problem in (
        ("0-8", "partition 8 is outside 0-7"),
        ("9", "partition 9 is outside 0-7"),
        ("3-1", "empty"),
        ("4/4", "below the replica count"),
        ("0/9", "9 replicas but only 8 partitions"),
        ("even", "expected all, i/n or indices"),
        ("1/x", "expected i/n"),
    ):
        with pytest.raises(ValueError, match=problem):
            parse_partitions(spec, 8)


def test_settings_refuse_partitions_outside_the_count():
    settings = MonitoringSettings(jetstream_partitions=8, jetstream_consume_partitions="4-7")
    assert settings.jetstream_consumed_partitions == (4, 5, 6, 7)
    assert MonitoringSettings().jetstream_consumed_partitions == ()
    with pytest.raises(ValidationError, match="partition 8 is outside 0-7"):
        MonitoringSettings(jetstream_partitions=8, jetstream_consume_partitions="6-8")
    with pytest.raises(ValidationError, match="needs CREDITLINE_MONITORING_JETSTREAM_PARTITIONS"):
        MonitoringSettings(jetstream_consume_partitions="0-3")
    with pytest.raises(ValidationError, match="jetstream_partitions"):
        MonitoringSettings(jetstream_partitions=-1)


def test_a_partition_outside_the_count_stops_the_service_at_start(tmp_path):
    env = {
        "CREDITLINE_MONITORING_DATABASE_URL": f"sqlite:///{tmp_path / 'monitoring.db'}",
        "CREDITLINE_MONITORING_JETSTREAM_URL": "nats://127.0.0.1:1",
        "CREDITLINE_MONITORING_JETSTREAM_PARTITIONS": "4",
        "CREDITLINE_MONITORING_JETSTREAM_CONSUME_PARTITIONS": "2-5",
    }
    result = subprocess.run(
        [sys.executable, "-m", "services.monitoring"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "CREDITLINE_MONITORING_JETSTREAM_CONSUME_PARTITIONS" in result.stderr
    assert "partition 5 is outside 0-3 (4 partitions)" in result.stderr
    assert not (tmp_path / "monitoring.db").exists()  # refused before anything started


# -- the NATS server's own mapping ------------------------------------------------------------


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="no nats-server binary here")
def test_the_nats_servers_partition_mapping_puts_each_account_where_producers_do(tmp_path):
    """A NATS server of our own (the shared one has no mapping) maps <subject>.<key> with
    `partition(16,1)`: every account lands in the partition `partition_of` computes."""
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        'mappings = { "events.*": "events.{{partition(16,1)}}.{{wildcard(1)}}" }\n'
    )
    server = subprocess.Popen(
        ["nats-server", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ids = [f"acct-{i}" for i in range(64)] + ["ACCT_x", "acct with spaces", "账户-1"]

    async def mapped() -> list[str]:
        nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=2)
        try:
            js = nc.jetstream()
            await js.add_stream(name="EVENTS", subjects=["events.*.*"])
            subjects = []
            for account_id in ids:
                ack = await js.publish(f"events.{account_key(account_id)}", b"")
                subjects.append((await js.get_msg("EVENTS", ack.seq)).subject)
            return subjects
        finally:
            await nc.close()

    try:
        subjects = eventually(lambda: _or_none(mapped), "the NATS server up", timeout=20)
    finally:
        server.terminate()
        server.wait(10)
    assert subjects == [subject_of("events", account_id, 16) for account_id in ids]


def _or_none(work):
    try:
        return asyncio.run(work())
    except (OSError, nats.errors.Error):
        return None
