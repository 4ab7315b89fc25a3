"""The stored account state: rows written in the first, positional format (committed as they
were stored) still read back to the same states, and the named format survives a field moved."""

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from services.monitoring.profile import STATE_FORMAT, AccountState, features
from services.monitoring.store import MonitoringStore, accounts

# Rows of `monitoring_accounts` as the positional format stored them, with what each read as.
POSITIONAL_ROWS = json.loads(
    (Path(__file__).parent / "fixtures" / "account_states_positional.json").read_text()
)["rows"]


def _read_as_when_written(state: AccountState, row: dict) -> None:
    assert state.account_id == row["account_id"]
    assert features(state) == row["features"]
    assert (state.last_sequence, state.profile_version) == (
        row["last_sequence"],
        row["profile_version"],
    )
    assert sorted(state.episodes) == row["episodes"]
    assert state.score == row["score"]


def test_rows_stored_in_the_positional_format_read_back_through_the_store(database_url):
    store = MonitoringStore.open(database_url)
    try:
        now = datetime(2026, 11, 22, tzinfo=UTC)
        with store.engine.begin() as connection:
            connection.execute(
                accounts.insert(),
                [
                    {
                        "account_id": row["account_id"],
                        "last_sequence": row["last_sequence"],
                        "profile_version": row["profile_version"],
                        "rescore_due": False,
                        "version": 1,
                        "state": row["state"],
                        "updated_at": now,
                    }
                    for row in POSITIONAL_ROWS
                ],
            )
        with store.read() as uow:
            for row in POSITIONAL_ROWS:
                state = uow.account_state(row["account_id"])
                assert state is not None
                _read_as_when_written(state, row)
        # Written again, a state takes the named format and reads the same.
        with store.unit_of_work() as uow:
            states = uow.account_states([r["account_id"] for r in POSITIONAL_ROWS], lock=True)
            uow.save_states(states.values(), set(states), now)
        with store.engine.connect() as connection:
            stored = connection.exec_driver_sql("SELECT state FROM monitoring_accounts")
            assert all(orjson.loads(text)["v"] == STATE_FORMAT for (text,) in stored)
        with store.read() as uow:
            for row in POSITIONAL_ROWS:
                state = uow.account_state(row["account_id"])
                assert state is not None
                _read_as_when_written(state, row)
    finally:
        store.close()


@pytest.mark.parametrize("row", POSITIONAL_ROWS, ids=lambda r: r["account_id"])
def test_the_named_format_names_every_field_and_reads_in_any_order(row):
    state = AccountState.from_json(row["state"])
    document = orjson.loads(state.to_json())
    assert document.pop("v") == STATE_FORMAT
    assert set(document) == {f.name for f in dataclasses.fields(AccountState)}
    shuffled = dict(reversed(list(document.items())), v=STATE_FORMAT)
    assert AccountState.from_json(orjson.dumps(shuffled)) == state
    # A field the document lacks (stored before it existed) takes its default.
    del document["score"]
    assert AccountState.from_json(orjson.dumps({"v": STATE_FORMAT, **document})).score is None


def test_a_state_of_an_unknown_format_is_refused_not_misread():
    with pytest.raises(ValueError, match="format"):
        AccountState.from_json(b'{"v": 3, "account_id": "a", "opened_at": 0}')
