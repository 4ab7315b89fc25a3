"""Empty databases for any service's tests: a SQLite file, and a PostgreSQL schema of its own.

Use the `database_url` fixture by importing it into a conftest.py:

    from tests.databases import database_url  # noqa: F401

Each test then runs twice, on SQLite and on PostgreSQL (127.0.0.1:5432, user postgres, database
`test`), and is dropped afterwards. Without a PostgreSQL server the PostgreSQL half is skipped
with the reason, unless CREDITLINE_TEST_REQUIRE_POSTGRES=1 (as in CI) makes it fail.
"""

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import Engine, make_url

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REQUIRE_POSTGRES = os.environ.get("CREDITLINE_TEST_REQUIRE_POSTGRES") == "1"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, then a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
    else:
        with postgres_schema() as url:
            yield url


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'test.db'}"


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose connections see only a new, empty schema, dropped with all it holds on exit.

    Skips the calling test when no PostgreSQL server answers (fails under
    CREDITLINE_TEST_REQUIRE_POSTGRES=1).
    """
    admin = _postgres_admin()
    schema = f"test_{uuid.uuid4().hex}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def _postgres_admin() -> Engine:
    engine, problem = _connect_postgres_admin()
    if engine is None:
        url = make_url(POSTGRES_URL)
        message = f"PostgreSQL not reachable at {url.host}:{url.port}: {problem}"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " (CREDITLINE_TEST_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    return engine


@functools.cache
def _connect_postgres_admin() -> tuple[Engine | None, str]:
    """An autocommit engine for creating schemas, or None and why; tried once per session."""
    engine = sqlalchemy.create_engine(
        POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as error:
        engine.dispose()
        return None, str(error.orig).strip().splitlines()[0]
    return engine, ""
