"""Connection fields to URLs, the SQL file loader, and the SQL files themselves."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import TextClause, text
from sqlalchemy.engine import make_url

from campaign import db
from campaign.db import SQL_DIR, make_engine, sql, url_from_connection_fields
from campaign.errors import ConfigurationError

SQL_FILES = sorted(SQL_DIR.glob("*.sql"))
# <name>.<dialect>.sql: a statement's variant for one dialect (db.py's docstring)
VARIANTS = [path for path in SQL_FILES if "." in path.stem]
DIALECTS = ("postgresql", "sqlite")
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


def _load(path: Path) -> TextClause:
    """A file's statement as the code asks for it: a variant through its dialect."""
    name, _, dialect = path.stem.partition(".")
    return sql(name, dialect or None)


@pytest.fixture
def sql_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An SQL folder of the test's own, and sql()'s cache emptied before and after."""
    monkeypatch.setattr(db, "SQL_DIR", tmp_path)
    sql.cache_clear()
    yield tmp_path
    sql.cache_clear()


def test_a_dialect_variant_is_served_to_its_dialect_and_to_it_only(sql_dir: Path) -> None:
    (sql_dir / "truncate_time.sql").write_text("SELECT 'portable'", encoding="utf-8")
    (sql_dir / "truncate_time.postgresql.sql").write_text("SELECT 'postgresql'", encoding="utf-8")

    assert sql("truncate_time", "postgresql").text == "SELECT 'postgresql'"
    assert sql("truncate_time", "sqlite").text == "SELECT 'portable'"
    assert sql("truncate_time", "mysql").text == "SELECT 'portable'"
    assert sql("truncate_time").text == "SELECT 'portable'"


def test_a_variant_without_its_plain_file_is_a_configuration_error(sql_dir: Path) -> None:
    (sql_dir / "only_here.postgresql.sql").write_text("SELECT 1", encoding="utf-8")

    with pytest.raises(ConfigurationError) as excinfo:
        sql("only_here", "postgresql")

    assert str(excinfo.value) == f"SQL file {sql_dir / 'only_here.sql'} does not exist."


def test_the_connection_chooses_the_variant(campaign_db) -> None:
    # delivery_messages_per_minute has a PostgreSQL variant: date_trunc there, strftime on SQLite.
    with campaign_db.engine.connect() as conn:
        statement = sql("delivery_messages_per_minute", conn.dialect.name)
        conn.execute(statement, {"delivery_id": 1}).all()

    expected = "date_trunc(" if campaign_db.backend == "postgres" else "strftime("
    assert expected in statement.text


@pytest.mark.parametrize("path", VARIANTS, ids=[p.stem for p in VARIANTS])
def test_a_variant_names_a_dialect_and_stands_beside_its_plain_file(path: Path) -> None:
    name, _, dialect = path.stem.partition(".")

    assert dialect in DIALECTS, f"{path.name}: {dialect!r} is not a dialect name SQLAlchemy gives"
    assert (SQL_DIR / f"{name}.sql").is_file(), f"{path.name} has no {name}.sql"
    assert set(sql(name, dialect)._bindparams) == set(sql(name)._bindparams), "both take the same parameters"


@pytest.mark.parametrize("path", SQL_FILES, ids=[p.stem for p in SQL_FILES])
def test_sql_file_loads_as_the_file_text(path: Path) -> None:
    statement = _load(path)

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

    assert set(_load(path)._bindparams) == set(BIND_PARAM.findall(code))
