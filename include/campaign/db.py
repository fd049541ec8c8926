"""Campaign database access: engines for SQLite and PostgreSQL, and the SQL files by name.

Every statement is a file of ``include/sql/``, one statement per file, named after what it
computes, and loaded with ``sql(name)``. The same SQL runs on both databases wherever it can.
Where it cannot (truncating a timestamp to the minute: ``strftime`` on SQLite, ``date_trunc`` on
PostgreSQL), a *dialect variant* ``<name>.<dialect>.sql`` sits next to ``<name>.sql``, the dialect
named as SQLAlchemy names it (``postgresql``, ``sqlite``), and ``sql(name, conn.dialect.name)``
serves it to that dialect; every other dialect gets ``<name>.sql``. The plain file must exist
(it is the default, the one a reader finds first) and both files must take the same parameters
and return the same columns; ``tests/include/campaign/test_db.py`` checks the files' names and
parameters, the statements' own tests run them on both databases.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, create_engine, event, text
from sqlalchemy.engine import URL, make_url

from campaign.errors import ConfigurationError

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# Parallel chunk tasks write to the same SQLite file: WAL lets readers go on while one writes,
# and the busy timeout makes a writer wait for the lock instead of failing at once.
SQLITE_BUSY_TIMEOUT_MS = 60_000

# The SQL files bind datetimes directly. Python 3.12 deprecates sqlite3's default adapter for
# them; this one writes the very same text, so stored values keep their format across versions.
sqlite3.register_adapter(datetime, lambda value: value.isoformat(" "))


@functools.cache
def sql(name: str, dialect: str | None = None) -> TextClause:
    """The statement of ``include/sql/<name>.sql``, ready to execute with named parameters.

    With ``dialect`` (``conn.dialect.name``), the variant ``<name>.<dialect>.sql`` when there is
    one (see the module's docstring); ``<name>.sql`` otherwise, which must exist in any case.
    """
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise ConfigurationError(f"SQL file {path} does not exist.")
    variant = SQL_DIR / f"{name}.{dialect}.sql"
    if dialect and "." not in name and variant.is_file():
        path = variant
    return text(path.read_text(encoding="utf-8"))


def url_from_connection_fields(
    conn_type: str,
    host: str | None,
    schema: str | None = None,
    login: str | None = None,
    password: str | None = None,
    port: int | None = None,
) -> URL:
    """Map the fields of an Airflow Connection to a SQLAlchemy URL.

    ``sqlite`` connections keep the database file path in ``host`` (Airflow's convention);
    ``postgres`` connections use host, port, schema (the database), login and password.
    """
    kind = (conn_type or "").lower()
    if kind == "sqlite":
        if not host:
            raise ConfigurationError("The sqlite Connection campaign_db has no file path in its host field.")
        return make_url(f"sqlite:///{host}")
    if kind in ("postgres", "postgresql"):
        return URL.create(
            "postgresql+psycopg",
            username=login or None,
            password=password or None,
            host=host or None,
            port=port or None,
            database=schema or None,
        )
    raise ConfigurationError(
        f"Connection campaign_db has type {conn_type!r}; campaign-send supports 'sqlite' and 'postgres'."
    )


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would otherwise defer it).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_immediate(connection: Connection) -> None:
    # A deferred transaction that reads and then writes fails with "database is locked" when
    # another process committed in between; taking the write lock up front makes it wait instead.
    # A connection asked for AUTOCOMMIT (maintenance such as a WAL checkpoint) gets no transaction.
    if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | URL, **pool: int) -> Engine:
    """An engine for the campaign database, configured for concurrent writers on SQLite.

    ``pool`` takes SQLAlchemy's pool sizes (``pool_size``, ``max_overflow``) for a process that
    sizes its connections itself, such as the standalone tracking service; the defaults otherwise.
    """
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **pool)
        event.listen(engine, "connect", _set_sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One short transaction: committed on success, rolled back on any error."""
    with engine.begin() as connection:
        yield connection


class LazyEngine:
    """An engine made on first use and only once, even when the first requests arrive together
    (a web app must not look up its Connection per request)."""

    def __init__(self, provider: Callable[[], Engine]) -> None:
        self._provider = provider
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._provider()
        return self._engine
