"""The standalone tracking service: settings from the environment only, checked at start with one
sentence per problem, a health check on the database, no Airflow, and the options a service behind
a TLS proxy needs. Its endpoints themselves are tested both ways in test_tracking_app.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url, text
from testsupport import free_port, wait_for

from campaign import cli
from campaign.db import make_engine
from campaign.dev.tracking_process import ROOT, service_env
from campaign.errors import ConfigurationError
from campaign.schema import grant_tracking_role, tracking_privileges_missing
from campaign.tokens import sign_token
from campaign.web import tracking_service
from campaign.web.tracking_service import ServiceSettings, build_app, load_settings, open_database

SECRET = "tracking-service-test-secret-0123"
SERVICE_VARIABLES = (
    "CAMPAIGN_DB_URL",
    "CAMPAIGN_TRACKING_SECRET",
    "CAMPAIGN_TRACKING_PATH",
    "CAMPAIGN_TRACKING_BASE_URL",
    "CAMPAIGN_TRACKING_DB_POOL_SIZE",
    "CAMPAIGN_TRACKING_DB_MAX_OVERFLOW",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """None of the service's variables set (the test session sets some for the Airflow side)."""
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _problems(monkeypatch: pytest.MonkeyPatch, **variables: str) -> list[str]:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    return str(refused.value).splitlines()


# ---------------------------------------------------------------- settings


def test_it_reads_the_database_variable_the_cli_reads():
    assert tracking_service.DB_URL_ENV == cli.DB_URL_ENV == "CAMPAIGN_DB_URL"


def test_settings_from_the_environment(clean_env, tmp_path):
    clean_env.setenv("CAMPAIGN_DB_URL", f"sqlite:///{tmp_path}/campaign.db")
    clean_env.setenv("CAMPAIGN_TRACKING_SECRET", SECRET)

    settings = load_settings()

    assert (str(settings.db_url), settings.secret, settings.path) == (
        f"sqlite:///{tmp_path}/campaign.db",
        SECRET.encode(),
        "/campaign",  # the path of the default CAMPAIGN_TRACKING_BASE_URL, as the plugin serves it
    )
    assert (settings.pool_size, settings.max_overflow) == (5, 5)
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("variables", "path"),
    [
        ({"CAMPAIGN_TRACKING_BASE_URL": "https://t.shop.example/track/"}, "/track"),
        ({"CAMPAIGN_TRACKING_BASE_URL": "https://t.shop.example"}, ""),
        ({"CAMPAIGN_TRACKING_BASE_URL": "https://t.shop.example/track", "CAMPAIGN_TRACKING_PATH": "/"}, ""),
        ({"CAMPAIGN_TRACKING_PATH": "/a/b/"}, "/a/b"),
    ],
)
def test_the_path_keeps_the_shape_of_the_public_urls(clean_env, tmp_path, variables, path):
    for name, value in {"CAMPAIGN_DB_URL": "sqlite:///x.db", "CAMPAIGN_TRACKING_SECRET": SECRET, **variables}.items():
        clean_env.setenv(name, value)

    assert load_settings().path == path


def test_every_problem_is_one_sentence_naming_its_variable(clean_env):
    problems = _problems(
        clean_env,
        CAMPAIGN_TRACKING_SECRET="short",
        CAMPAIGN_TRACKING_PATH="campaign",
        CAMPAIGN_TRACKING_DB_POOL_SIZE="0",
        CAMPAIGN_TRACKING_DB_MAX_OVERFLOW="many",
    )

    assert problems == [
        "No campaign database: set CAMPAIGN_DB_URL to its SQLAlchemy URL "
        "(postgresql+psycopg://user:password@host/campaign or sqlite:////path/to/campaign.db).",
        "Environment variable CAMPAIGN_TRACKING_SECRET must hold a secret of at least 16 characters "
        "(it signs unsubscribe and tracking tokens).",
        "CAMPAIGN_TRACKING_PATH must be a URL path such as /campaign, got 'campaign'.",
        "CAMPAIGN_TRACKING_DB_POOL_SIZE must be a whole number of connections, at least 1, got '0'.",
        "CAMPAIGN_TRACKING_DB_MAX_OVERFLOW must be a whole number of connections, got 'many'.",
    ]


def test_a_wrong_database_url_is_refused_without_repeating_it(clean_env):
    [problem] = _problems(clean_env, CAMPAIGN_DB_URL="campaign:hunter2@db", CAMPAIGN_TRACKING_SECRET=SECRET)
    assert problem.startswith("CAMPAIGN_DB_URL is not a SQLAlchemy URL;") and "hunter2" not in problem

    [problem] = _problems(clean_env, CAMPAIGN_DB_URL="mysql://u:hunter2@db/campaign")
    assert problem == "CAMPAIGN_DB_URL names a 'mysql' database; the campaign database is PostgreSQL or SQLite."


# ---------------------------------------------------------------- the database at start


def _settings(url: str, path: str = "/campaign") -> ServiceSettings:
    return ServiceSettings(db_url=make_engine(url).url, secret=SECRET.encode(), path=path)


def test_an_unreachable_database_is_one_sentence_with_the_password_hidden():
    url = f"postgresql+psycopg://campaign:hunter2@127.0.0.1:{free_port()}/campaign"

    with pytest.raises(ConfigurationError) as refused:
        open_database(_settings(url))

    message = str(refused.value)
    assert message.startswith("Cannot reach the campaign database postgresql+psycopg://campaign:***@127.0.0.1:")
    assert "Connection refused" in message and message.endswith(".") and "\n" not in message
    assert "hunter2" not in message


def test_a_missing_sqlite_file_is_not_created(tmp_path):
    missing = tmp_path / "nowhere.db"

    with pytest.raises(ConfigurationError, match=r"^The campaign database file .*nowhere\.db does not exist: point"):
        open_database(_settings(f"sqlite:///{missing}"))
    assert not missing.exists()


def test_a_database_without_the_tables_is_refused(tmp_path):
    empty = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with empty.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE unrelated (id INTEGER)")
    empty.dispose()

    with pytest.raises(ConfigurationError) as refused:
        open_database(_settings(f"sqlite:///{tmp_path / 'empty.db'}"))

    assert str(refused.value) == (
        f"The campaign database sqlite:///{tmp_path / 'empty.db'} has no table profiles, delivery_targets, "
        "delivery_links, tracking_logs: create the tables with bin/campaign init-db "
        "(docker compose: the airflow-init service)."
    )


def _role(owner, privileged: bool) -> str:
    """A new login role on the test PostgreSQL, given the tracking privileges or none."""
    role = f"tracker_{uuid.uuid4().hex[:12]}"
    with owner.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    if privileged:
        grant_tracking_role(owner, role)
    return role


@pytest.mark.postgres
def test_a_role_without_the_tracking_privileges_is_refused_at_start(postgres_db):
    """Fresh-user finding: the service started, /healthz said ok, and every pixel was a 503."""
    role = _role(postgres_db.engine, privileged=False)
    url = make_url(postgres_db.url).set(username=role).render_as_string(hide_password=False)

    with pytest.raises(ConfigurationError) as refused:
        open_database(_settings(url))

    message = str(refused.value)
    assert message.startswith(f"The campaign database role {role} lacks SELECT (delivery_id) on delivery_targets; ")
    assert message.endswith(f": run bin/campaign grant-tracking {role} as the owner of the tables (docker compose: "
                            "the airflow-init service).")  # fmt: skip


@pytest.mark.postgres
def test_health_is_503_once_a_privilege_is_gone(postgres_db):
    role = _role(postgres_db.engine, privileged=True)
    url = make_url(postgres_db.url).set(username=role).render_as_string(hide_password=False)
    engine = open_database(_settings(url))
    try:
        with TestClient(build_app(_settings(url), engine)) as client:
            assert client.get("/healthz").status_code == 200
            with postgres_db.engine.begin() as conn:  # an upgrade's new grant not given, say
                conn.execute(text(f'REVOKE INSERT ON tracking_logs FROM "{role}"'))
            response = client.get("/healthz")
        assert (response.status_code, response.text) == (
            503, "campaign database role lacks privileges: run bin/campaign grant-tracking",
        )  # fmt: skip
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("granter_privileged", [False, True], ids=["stranger", "another-tracking-role"])
def test_grant_tracking_by_someone_who_is_not_the_owner_says_so(postgres_db, granter_privileged):
    """Fresh-user finding: run as a role that does not own the tables, it printed success and had
    granted nothing (PostgreSQL only warns then)."""
    granter = _role(postgres_db.engine, privileged=granter_privileged)
    target = _role(postgres_db.engine, privileged=False)
    as_granter = make_engine(make_url(postgres_db.url).set(username=granter))
    try:
        with pytest.raises(ConfigurationError, match=rf"^Cannot give role {target} the tracking privileges \("):
            grant_tracking_role(as_granter, target)
    finally:
        as_granter.dispose()
    with postgres_db.engine.connect() as conn:
        assert tracking_privileges_missing(conn, target)  # nothing half-granted either


# ---------------------------------------------------------------- the app: health, no docs, paths


def test_health_answers_while_the_database_does(campaign_db):
    engine = open_database(_settings(campaign_db.url))
    try:
        with TestClient(build_app(_settings(campaign_db.url), engine)) as client:
            response = client.get("/healthz")
            assert (response.status_code, response.text) == (200, "ok")
            assert "no-store" in response.headers["cache-control"]
            assert client.head("/healthz").status_code == 200
    finally:
        engine.dispose()


def test_health_is_503_when_the_database_is_gone():
    url = f"postgresql+psycopg://campaign@127.0.0.1:{free_port()}/campaign"
    engine = make_engine(url)  # what a running service holds once its database went away
    with TestClient(build_app(_settings(url), engine)) as client:
        response = client.get("/healthz")
    assert (response.status_code, response.text) == (503, "campaign database unreachable")


@pytest.mark.parametrize("path", ["/campaign", ""])
def test_only_the_tracking_path_and_health_are_served(sqlite_db, path):
    settings = _settings(sqlite_db.url, path)
    engine = open_database(settings)
    forged = f"{path}/o/1.2.{'0' * 32}"
    genuine_but_untargeted = f"{path}/u/{sign_token(SECRET.encode(), 'unsubscribe', 1, 2)}"
    try:
        with TestClient(build_app(settings, engine)) as client:
            assert client.get(forged).text == "Not found"  # the tracking app's own 404
            assert client.get(genuine_but_untargeted).status_code == 200  # the page, signature only
            assert client.get("/healthz").text == "ok"  # not shadowed by an app at the root
            for other in ("/docs", "/redoc", "/openapi.json", f"{path}/docs", f"{path}/openapi.json", "/api/v2/dags"):
                assert client.get(other).status_code == 404, other
    finally:
        engine.dispose()


# ---------------------------------------------------------------- no Airflow


def test_it_imports_and_starts_with_airflow_refused(sqlite_db):
    """A fresh interpreter that cannot import Airflow starts the service (settings, database,
    app) and has no Airflow module loaded afterwards."""
    script = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "airflow":
            raise ImportError(f"the tracking service imported {name}")
        return None
sys.meta_path.insert(0, Refuse())
from campaign.web.tracking_service import app
app.start()
app.stop()
print(sorted(m for m in sys.modules if m.split(".")[0] == "airflow"))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=service_env(sqlite_db.url, SECRET),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.gettempdir(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------- the process


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir())


def test_python_m_without_settings_says_what_is_missing_and_exits_2():
    env = service_env("", "")
    del env["CAMPAIGN_DB_URL"], env["CAMPAIGN_TRACKING_SECRET"]

    done = _run([sys.executable, "-m", "campaign.web.tracking_service"], env)

    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "tracking service: No campaign database: set CAMPAIGN_DB_URL to its SQLAlchemy URL "
        "(postgresql+psycopg://user:password@host/campaign or sqlite:////path/to/campaign.db).",
        "tracking service: Environment variable CAMPAIGN_TRACKING_SECRET must hold a secret of at least 16 "
        "characters (it signs unsubscribe and tracking tokens).",
    ]


def test_uvicorn_with_an_unreachable_database_stops_at_start_without_a_traceback():
    url = f"postgresql+psycopg://campaign:hunter2@127.0.0.1:{free_port()}/campaign"

    done = _run(
        [sys.executable, "-m", "uvicorn", tracking_service.APP, "--port", str(free_port()), "--lifespan", "on"],
        service_env(url, SECRET),
    )

    assert done.returncode == 3  # uvicorn's "startup failed"
    assert "ERROR:    Cannot reach the campaign database postgresql+psycopg://campaign:***@127.0.0.1:" in done.stderr
    assert "ERROR:    Application startup failed. Exiting." in done.stderr
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr


def test_python_m_serves_without_access_log_nor_server_header_and_stops_on_sigterm(campaign_db, tmp_path):
    port = free_port()
    output_path = tmp_path / "service.log"
    with open(output_path, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "campaign.web.tracking_service", "--port", str(port)],
            env=service_env(campaign_db.url, SECRET),
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
            start_new_session=True,
        )
    try:

        def health() -> httpx.Response | None:
            assert process.poll() is None, output_path.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except httpx.HTTPError:
                return None

        assert wait_for(health, 30, 0.1, "the tracking service").status_code == 200
        token = sign_token(SECRET.encode(), "open", 1, 2)
        pixel = httpx.get(f"http://127.0.0.1:{port}/campaign/o/{token}", timeout=5)
        assert pixel.status_code == 404  # no such delivery: the endpoint answered from the database
        assert "server" not in pixel.headers
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        # uvicorn shuts down, then ends itself by the signal it got (so the status tells why it stopped)
        assert process.wait(20) in (0, -signal.SIGTERM)
    log = output_path.read_text()
    assert "Application shutdown complete." in log
    assert "campaign tracking service: /campaign/ from " in log and "Application startup complete." in log
    assert token not in log and "GET /" not in log, "a request was logged"


def test_the_module_path_is_what_uvicorn_is_given():
    assert tracking_service.APP == f"{tracking_service.__name__}:app"
    assert isinstance(tracking_service.app, tracking_service.TrackingService)
    assert Path(tracking_service.__file__).is_relative_to(ROOT / "include")
