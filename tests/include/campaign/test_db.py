"""Connection fields to URLs, the SQL file loader, and the SQL files themselves."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import TextClause, text
from sqlalchemy.engine import make_url

from campaign.db import SQL_DIR, make_engine, sql, url_from_connection_fields
from campaign.errors import ConfigurationError

SQL_FILES = sorted(SQL_DIR.glob("*.sql"))
# SQLAlchemy's text() bind parameter syntax: ':name' not preceded by ':', a word character or '\'.
BIND_PARAM = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


# ---------------------------------------------------------------- url_from_connection_fields


@pytest.mark.parametrize("conn_type", ["sqlite", "SQLite"])
def test_sqlite_connection_keeps_the_file_path_in_host(conn_type: str) -> None:
    url = url_from_connection_fields(conn_type, "/var/lib/campaign/campaign.db")

    assert url.get_backend_name() == "sqlite"
    assert url.database == "/var/lib/campaign/campaign.db"
    assert url.render_as_string() == "sqlite:////var/lib/campaign/campaign.db"


@pytest.mark.parametrize("host", [None, ""])
def test_sqlite_connection_without_a_path_is_a_configuration_error(host) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        url_from_connection_fields("sqlite", host)

    assert str(excinfo.value) == "The sqlite Connection campaign_db has no file path in its host field."


@pytest.mark.parametrize("conn_type", ["postgres", "postgresql", "Postgres"])
def test_postgres_connection_maps_every_field(conn_type: str) -> None:
    url = url_from_connection_fields(conn_type, "db.internal", "campaign", "app", "p@ss:w/rd%", 5433)

    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database, url.username, url.password) == (
        "db.internal",
        5433,
        "campaign",
        "app",
        "p@ss:w/rd%",
    )
    # The password survives a trip through the URL string, special characters included.
    assert make_url(url.render_as_string(hide_password=False)).password == "p@ss:w/rd%"


def test_postgres_connection_with_empty_fields_leaves_them_out() -> None:
    url = url_from_connection_fields("postgres", "", "", "", "", None)

    assert url.render_as_string() == "postgresql+psycopg://"


@pytest.mark.parametrize("conn_type", ["mysql", "", None])
def test_unknown_connection_type_is_a_configuration_error(conn_type) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        url_from_connection_fields(conn_type, "db.internal")

    assert str(excinfo.value) == (
        f"Connection campaign_db has type {conn_type!r}; campaign-send supports 'sqlite' and 'postgres'."
    )


# ---------------------------------------------------------------- make_engine


def test_sqlite_engine_enforces_foreign_keys_and_uses_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_sqlite_autocommit_connection_runs_outside_any_transaction(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # busy, WAL frames, frames checkpointed: a checkpoint inside a transaction is refused
            busy, frames, done = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        with engine.begin() as conn:  # and ordinary transactions still take the write lock
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM t").scalar_one() == 2
    finally:
        engine.dispose()

    assert (busy, frames, done) == (0, 0, 0)


def test_sqlite_stores_a_bound_datetime_as_the_default_adapter_did(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    moment = datetime(2026, 11, 27, 2, 3, 4, 567890, tzinfo=UTC)
    try:
        with engine.begin() as conn:
            stored = conn.execute(text("SELECT CAST(:moment AS TEXT)"), {"moment": moment}).scalar_one()
    finally:
        engine.dispose()

    assert stored == "2026-11-27 02:03:04.567890+00:00"


# ---------------------------------------------------------------- sql() and the SQL files


def test_unknown_sql_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        sql("no_such_query")

    assert str(excinfo.value) == f"SQL file {SQL_DIR / 'no_such_query.sql'} does not exist."


def test_the_sql_folder_has_files() -> None:
    assert len(SQL_FILES) >= 1


@pytest.mark.parametrize("path", SQL_FILES, ids=[p.stem for p in SQL_FILES])
def test_sql_file_loads_as_the_file_text(path: Path) -> None:
    statement = sql(path.stem)

    assert isinstance(statement, TextClause)
    assert statement.text == path.read_text(encoding="utf-8")
    assert statement.text.strip(), f"{path.name} is empty"


def _split_comment(line: str) -> tuple[str, str]:
    code, marker, comment = line.partition("--")
    return code, comment if marker else ""


@pytest.mark.parametrize("path", SQL_FILES, ids=[p.stem for p in SQL_FILES])
def test_sql_comments_hold_no_bind_parameter(path: Path) -> None:
    offending = [
        f"{path.name}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if BIND_PARAM.search(_split_comment(line)[1])
    ]

    assert offending == [], "SQLAlchemy reads ':name' in a comment as a bind parameter"


@pytest.mark.parametrize("path", SQL_FILES, ids=[p.stem for p in SQL_FILES])
def test_sql_bind_parameters_are_exactly_those_in_the_code(path: Path) -> None:
    code = "\n".join(_split_comment(line)[0] for line in path.read_text(encoding="utf-8").splitlines())

    assert set(sql(path.stem)._bindparams) == set(BIND_PARAM.findall(code))
