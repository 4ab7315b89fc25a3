"""A JetStream of its own for each test, on the NATS server at 127.0.0.1:4222.

Use the `jetstream` fixture by importing it into a conftest.py or test module:

    from tests.jetstream import jetstream  # noqa: F401

It gives stream, subject, consumer and dead-letter names no other test uses, the settings that
point monitoring at them, and helpers to publish and read; both streams are deleted afterwards.
Without a NATS server the test is skipped with the reason, unless CREDITLINE_TEST_REQUIRE_NATS=1
(as in CI) makes it fail.
"""

import asyncio
import contextlib
import functools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, RetentionPolicy
from nats.js.errors import NotFoundError

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from services.monitoring.partitions import subject_of

NATS_URL = "nats://127.0.0.1:4222"
REQUIRE_NATS = os.environ.get("CREDITLINE_TEST_REQUIRE_NATS") == "1"


@dataclass(frozen=True)
class DeadLetter:
    data: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class TestStream:
    """One test's stream names, and sync helpers over a short-lived connection each."""

    __test__ = False  # not a test class, despite its name

    url: str
    stream: str
    subject: str
    consumer: str
    dead_letter_stream: str
    dead_letter_subject: str

    def settings(self, **overrides) -> dict:
        """Monitoring's settings (without the prefix, lower case) for this stream."""
        return {
            "jetstream_url": self.url,
            "jetstream_stream": self.stream,
            "jetstream_subject": self.subject,
            "jetstream_consumer": self.consumer,
            "jetstream_dead_letter_stream": self.dead_letter_stream,
            "jetstream_dead_letter_subject": self.dead_letter_subject,
            # Quick redelivery and retries, within the settings' own consistency rule.
            "jetstream_ack_wait_seconds": 2.0,
            "jetstream_retry_delay_seconds": 0.5,
            "jetstream_max_deliveries": 12,
            **overrides,
        }

    def create_stream(self, partitioned: bool = False) -> None:
        """The source stream, as a producer's operator would create it before monitoring."""

        async def create(js) -> None:
            await js.add_stream(
                name=self.stream,
                subjects=[f"{self.subject}.{'*.*' if partitioned else '*'}"],
                retention=RetentionPolicy.LIMITS,
                duplicate_window=120,
            )

        _run(self.url, create)

    def create_consumer(self) -> None:
        """The durable consumer, as an operator managing the streams would create it."""

        async def create(js) -> None:
            await js.add_consumer(
                self.stream,
                ConsumerConfig(
                    durable_name=self.consumer,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=2.0,
                    filter_subject=f"{self.subject}.*",
                ),
            )
            await js.add_stream(name=self.dead_letter_stream, subjects=[self.dead_letter_subject])

        _run(self.url, create)

    def publish(
        self, *events: pb.RepaymentEvent | bytes, msg_ids: bool = True, partitions: int = 0
    ) -> None:
        """Publishes each event on its account's subject, `<subject>.<account_id>` or with
        `partitions` `<subject>.<partition>.<account_id>`, in order, each stored before the next
        is sent; raw bytes go to `<subject>.raw` (`<subject>.0.raw`). With `msg_ids`, each
        carries its event id as Nats-Msg-Id."""

        async def publish(js) -> None:
            for event in events:
                if isinstance(event, bytes):
                    raw = f"{self.subject}.0.raw" if partitions else f"{self.subject}.raw"
                    await js.publish(raw, event)
                    continue
                headers = {"Nats-Msg-Id": event.event_id} if msg_ids else None
                await js.publish(
                    subject_of(self.subject, event.account_id, partitions),
                    event.SerializeToString(),
                    headers=headers,
                )

        _run(self.url, publish)

    def dead_letters(self) -> list[DeadLetter]:
        """Every message in the dead-letter stream, oldest first."""

        async def read(js) -> list[DeadLetter]:
            try:
                info = await js.stream_info(self.dead_letter_stream)
            except NotFoundError:
                return []
            found = []
            for sequence in range(info.state.first_seq, info.state.last_seq + 1):
                if info.state.messages == 0:
                    break
                message = await js.get_msg(self.dead_letter_stream, sequence)
                found.append(DeadLetter(message.data or b"", dict(message.headers or {})))
            return found

        return _run(self.url, read)

    def consumer_info(self, partition: int | None = None) -> ConsumerInfo:
        """The durable consumer's state, or that of one partition's consumer."""
        name = self.consumer if partition is None else f"{self.consumer}-{partition}"

        async def info(js) -> ConsumerInfo:
            return await js.consumer_info(self.stream, name)

        return _run(self.url, info)

    def delete(self) -> None:
        async def delete(js) -> None:
            for name in (self.stream, self.dead_letter_stream):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)

        _run(self.url, delete)


def _run(url: str, work):
    async def connected():
        nc = await nats.connect(url, connect_timeout=3, allow_reconnect=False)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(connected())


@functools.cache
def _nats_problem() -> str:
    """Why no NATS server with JetStream answers (empty when one does); tried once."""

    async def probe(js) -> None:
        await js.account_info()

    try:
        _run(NATS_URL, probe)
    except Exception as error:  # noqa: BLE001 - any failure means: not usable here
        return f"{type(error).__name__}: {error}".strip()
    return ""


@pytest.fixture
def jetstream() -> Iterator[TestStream]:
    if problem := _nats_problem():
        message = f"NATS JetStream not reachable at {NATS_URL}: {problem}"
        if REQUIRE_NATS:
            pytest.fail(message + " (CREDITLINE_TEST_REQUIRE_NATS=1)")
        pytest.skip(message)
    token = uuid.uuid4().hex[:12]
    names = TestStream(
        url=NATS_URL,
        stream=f"TEST_REPAYMENTS_{token}",
        subject=f"test.{token}.repayments",
        consumer=f"monitoring-{token}",
        dead_letter_stream=f"TEST_REPAYMENTS_DEAD_{token}",
        dead_letter_subject=f"test.{token}.deadletter",
    )
    try:
        yield names
    finally:
        names.delete()
