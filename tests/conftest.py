"""Shared fixtures: real SQLite and PostgreSQL databases, a real SMTP server, a migrated Airflow.

Airflow reads its configuration when first imported, so the environment is set here, before any
test module imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="campaign-test-airflow-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "CAMPAIGN_RETRY_DELAY_SECONDS": "1",
        "CAMPAIGN_SMTP_RECONNECT_DELAYS": "0.1,0.2",
        "CAMPAIGN_TRACKING_SECRET": "test-secret-" + uuid.uuid4().hex,
        "CAMPAIGN_TRACKING_BASE_URL": "http://127.0.0.1:9/campaign",
    }
)
sys.path.insert(0, str(ROOT / "include"))

from testsupport import free_port  # noqa: E402

from campaign.db import make_engine  # noqa: E402
from campaign.dev import imap  # noqa: E402
from campaign.dev.postgres import PostgresServer, running_server, server_binary  # noqa: E402
from campaign.dev.smtp import start_server  # noqa: E402
from campaign.schema import create_schema  # noqa: E402

# ---------------------------------------------------------------- PostgreSQL server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL server on a free loopback port (as an unprivileged user under root)."""
    try:
        server_binary("initdb")
    except FileNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing in CI; .ci/run must install them.")
        pytest.skip("PostgreSQL server binaries not installed (Debian package postgresql)")
    with running_server("campaign-test-pg-") as server:
        yield server


# ---------------------------------------------------------------- campaign database


@dataclass
class CampaignDatabase:
    backend: str
    url: str
    airflow_connection: str  # the AIRFLOW_CONN_CAMPAIGN_DB value
    engine: object


def _new_database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> CampaignDatabase:
    if backend == "sqlite":
        path = tmp_path / "campaign.db"
        url = f"sqlite:///{path}"
        connection = json.dumps({"conn_type": "sqlite", "host": str(path)})
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        name = f"campaign_{uuid.uuid4().hex[:12]}"
        url = server.create_database(name)
        connection = json.dumps(
            {"conn_type": "postgres", "host": server.host, "port": server.port, "schema": name, "login": server.user}
        )
    engine = make_engine(url)
    create_schema(engine)
    return CampaignDatabase(backend, url, connection, engine)


def _published_database(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CampaignDatabase]:
    database = _new_database(backend, request, tmp_path)
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DB", database.airflow_connection)
    monkeypatch.setenv("CAMPAIGN_DB_URL", database.url)
    yield database
    database.engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def campaign_db(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CampaignDatabase]:
    """An empty campaign database on each backend, also published as Connection campaign_db."""
    yield from _published_database(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
def sqlite_db(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CampaignDatabase]:
    yield from _published_database("sqlite", request, tmp_path, monkeypatch)


@pytest.fixture
def postgres_db(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CampaignDatabase]:
    """For what only PostgreSQL has (roles and grants); mark the test ``postgres``."""
    yield from _published_database("postgres", request, tmp_path, monkeypatch)


# ---------------------------------------------------------------- SMTP server


@dataclass
class SmtpSink:
    port: int
    maildir: Path
    handler: object
    controller: object

    def stop(self) -> None:
        self.controller.stop()


def smtp_connection_json(port: int) -> str:
    return json.dumps(
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 10, "retry_limit": 0},
        }
    )


@pytest.fixture
def smtp_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpSink]:
    """A real aiosmtpd server on loopback: 550 for *@hard-bounce.test, 451 for *@soft-bounce.test."""
    port = free_port()
    maildir = tmp_path / "maildir"
    controller, handler = start_server(maildir, port=port)
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_SMTP", smtp_connection_json(port))
    sink = SmtpSink(port, maildir, handler, controller)
    yield sink
    try:
        controller.stop()
    except Exception:  # already stopped by the test
        pass


# ---------------------------------------------------------------- IMAP server


@pytest.fixture(scope="session")
def dovecot() -> Iterator[imap.ImapServer]:
    """A real Dovecot on a free loopback port, one per session (stopping one takes 2 s)."""
    try:
        imap.dovecot_binary()
    except FileNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("Dovecot is missing in CI; .ci/run must install dovecot-imapd.")
        pytest.skip("Dovecot not installed (Debian package dovecot-imapd)")
    with imap.running_server("campaign-test-imap-") as server:
        yield server


@pytest.fixture
def imap_server(dovecot: imap.ImapServer, monkeypatch: pytest.MonkeyPatch) -> imap.ImapServer:
    """An account with an empty mailbox on the session's Dovecot, also published as Connection
    campaign_bounces."""
    server = dovecot.new_account(f"bounces-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_BOUNCES", server.connection_json())
    return server


@pytest.fixture(scope="session")
def dovecot_without(dovecot: imap.ImapServer) -> Iterator[Callable[..., imap.ImapServer]]:
    """``dovecot_without("MOVE", "UIDPLUS")``: an account with an empty mailbox on a real Dovecot
    that announces after login what the session's one does, less those capabilities (its
    ``imap_capability`` setting); one server per list, started on first use."""
    servers: dict[tuple[str, ...], imap.ImapServer] = {}
    with ExitStack() as stack:

        def account(*left_out: str) -> imap.ImapServer:
            if left_out not in servers:
                advertised = [c for c in dovecot.capabilities() if c.upper() not in left_out]
                servers[left_out] = stack.enter_context(
                    imap.running_server("campaign-test-imap-", capabilities=advertised)
                )
            server = servers[left_out].new_account(f"bounces-{uuid.uuid4().hex[:12]}")
            assert not {c.upper() for c in server.capabilities()} & set(left_out), "imap_capability not applied"
            return server

        yield account


# ---------------------------------------------------------------- Airflow


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata database, migrated once, with the pool the DAG uses."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "campaign_smtp", "8", "test"], check=True, capture_output=True)
    return _AIRFLOW_HOME
