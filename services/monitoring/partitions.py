"""Partitions of the repayment events' JetStream subjects: which partition an account's events go
to, the subject a producer publishes them on, and which partitions a replica consumes.

Producers import this module alone (no NATS, no database in it). The function is published so
that a producer in any language computes the same partition:

    key       = the account id, where it is a valid subject token (letters, digits, '-', '_'),
                else the lowercase hex SHA-256 of its UTF-8 bytes
    partition = FNV-1a 32-bit hash of the key's UTF-8 bytes, modulo the partition count
    subject   = <subject>.<partition>.<key>   (unpartitioned: <subject>.<key>)

FNV-1a is what the NATS server's subject mapping function `partition(n, 1)` computes over the
key token (checked against nats-server 2.9.10), so events published on `<subject>.<key>` and
mapped by the server land in the same partition as those a producer addresses itself.
"""

import hashlib
import re

TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_PARTITIONS = 1024

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def account_key(account_id: str) -> str:
    """The subject token of an account's events."""
    if TOKEN.match(account_id):
        return account_id
    return hashlib.sha256(account_id.encode()).hexdigest()


def partition_of(key: str, partitions: int) -> int:
    """The partition of an account key (`account_key`): FNV-1a 32 of its UTF-8 bytes mod
    `partitions`."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    digest = _FNV_OFFSET
    for byte in key.encode():
        digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return digest % partitions


def subject_of(subject: str, account_id: str, partitions: int = 0) -> str:
    """The subject to publish an account's events on, under `subject` (e.g.
    creditline.repayments), with `partitions` partitions, or none (0)."""
    key = account_key(account_id)
    if partitions == 0:
        return f"{subject}.{key}"
    return f"{subject}.{partition_of(key, partitions)}.{key}"


def parse_partitions(spec: str, partitions: int) -> tuple[int, ...]:
    """The partitions named by `spec`, in order: `all`; indices and ranges such as `0-3,8`; or
    `i/n`, every partition p with p mod n = i (replica i of n, e.g. a StatefulSet's ordinal).
    Raises ValueError saying what is wrong."""
    spec = spec.strip()
    if spec == "all":
        return tuple(range(partitions))
    if "/" in spec:
        index, _, replicas = spec.partition("/")
        if not (index.strip().isdigit() and replicas.strip().isdigit()):
            raise ValueError(f"{spec!r}: expected i/n, e.g. 0/4")
        i, n = int(index), int(replicas)
        if not 0 <= i < n:
            raise ValueError(f"{spec!r}: the replica index must be below the replica count {n}")
        if n > partitions:
            raise ValueError(f"{spec!r}: {n} replicas but only {partitions} partitions")
        return tuple(range(i, partitions, n))
    chosen: set[int] = set()
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{spec!r}: expected all, i/n or indices and ranges like 0-3,8")
        low, high = int(first), int(last) if dash else int(first)
        if low > high:
            raise ValueError(f"{spec!r}: the range {low}-{high} is empty")
        if high >= partitions:
            raise ValueError(
                f"{spec!r}: partition {high} is outside 0-{partitions - 1} "
                f"({partitions} partitions)"
            )
        chosen.update(range(low, high + 1))
    return tuple(sorted(chosen))
