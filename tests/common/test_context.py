"""Request ids: random UUID4s in hex, as uuid.uuid4().hex gives them."""

import uuid

from services.common.context import new_request_id, uuid4_hex


def test_ids_are_random_version_4_uuids_in_hex():
    ids = [uuid4_hex() for _ in range(2000)] + [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert parsed.hex == value and len(value) == 32
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
