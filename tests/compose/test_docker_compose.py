"""docker-compose.yaml, read by a real compose parser (Debian's docker-compose), names what the
project expects: images, commands, mounts, Python path, Connections, separate databases, and the
tracking service as the only one facing the internet (its command run for real against SQLite)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url
from testsupport import free_port, wait_for

from campaign.airflow_glue import CAMPAIGN_DB_CONN_ID, CAMPAIGN_SMTP_CONN_ID
from campaign.db import url_from_connection_fields
from campaign.dev.airflow_harness import FAB_AUTH_MANAGER
from campaign.dev.tracking_process import service_env

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
    "airflow-triggerer": "triggerer",
}
OTHER_SERVICES = {"postgres", "redis", "mailpit", "airflow-init", "tracking"}


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose (Debian package) is missing in CI; .ci/run must install it.")
        pytest.skip("Debian's docker-compose is not installed")
    project = tmp_path_factory.mktemp("compose")
    for name in ("docker-compose.yaml", "Dockerfile"):
        shutil.copy(ROOT / name, project / name)
    shutil.copy(ROOT / ".env.example", project / ".env")
    # Compose prefers the shell's variables to .env's: the test session's own (conftest.py) must not leak in.
    shell = {key: value for key, value in os.environ.items() if not key.startswith(("CAMPAIGN_", "AIRFLOW"))}
    result = subprocess.run([tool, "config"], cwd=project, env=shell, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "is not set" not in result.stderr, f".env.example misses a variable: {result.stderr}"
    return yaml.safe_load(result.stdout)


def env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in service["environment"].items()}


def test_services_and_health_checks(compose):
    services = compose["services"]
    assert set(services) == set(AIRFLOW_SERVICES) | OTHER_SERVICES
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_airflow_services_run_the_project_image_and_commands(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    airflow_version = re.search(r"^apache-airflow==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert f"FROM apache/airflow:{airflow_version}-python3.11" in dockerfile
    assert "requirements.txt" in dockerfile
    assert "apache-airflow-providers-celery==" in (ROOT / "requirements.txt").read_text()
    for name, command in AIRFLOW_SERVICES.items():
        service = compose["services"][name]
        assert service["image"] == f"campaign-send-airflow:{airflow_version}"
        actual = service["command"]
        assert (" ".join(actual) if isinstance(actual, list) else actual) == command
        variables = env(service)
        assert variables["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert variables["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/airflow/dags"
        assert variables["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/airflow/plugins"
        assert "/opt/airflow/include" in variables["PYTHONPATH"].split(":")
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in map(_volume, service["volumes"])}
        for folder in ("dags", "plugins", "include"):
            assert Path(mounts[f"/opt/airflow/{folder}"]).name == folder


def _volume(volume) -> str:
    if isinstance(volume, dict):
        return f"{volume['source']}:{volume['target']}"
    return volume


def test_workers_scale_and_wait_for_their_dependencies(compose):
    worker = compose["services"]["airflow-worker"]
    assert "container_name" not in worker, "a fixed container name would forbid --scale"
    assert "ports" not in worker
    assert worker["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_connections_and_databases(compose):
    variables = env(compose["services"]["airflow-scheduler"])
    database = json.loads(variables[f"AIRFLOW_CONN_{CAMPAIGN_DB_CONN_ID.upper()}"])
    url = url_from_connection_fields(
        database["conn_type"], database["host"], database["schema"], database["login"], database["password"],
        database["port"],
    )  # fmt: skip
    metadata = variables["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert url.get_backend_name() == "postgresql" and url.host == "postgres"
    assert url.database != metadata.rsplit("/", 1)[1], "the campaign database is separate from Airflow's"
    smtp = json.loads(variables[f"AIRFLOW_CONN_{CAMPAIGN_SMTP_CONN_ID.upper()}"])
    assert smtp["conn_type"] == "smtp" and smtp["host"] == "mailpit"
    assert variables["CAMPAIGN_TRACKING_SECRET"] and variables["AIRFLOW__API_AUTH__JWT_SECRET"]
    # The bounce mailbox's Connection is valid JSON with .env.example's values, and has no host
    # until ops set one: process_bounces then skips its runs instead of failing every ten minutes.
    bounces = json.loads(variables["AIRFLOW_CONN_CAMPAIGN_BOUNCES"])
    assert (bounces["conn_type"], bounces["host"], bounces["port"]) == ("imap", "", 993)
    init = " ".join(compose["services"]["airflow-init"]["command"])
    assert "airflow db migrate" in init and "airflow pools set campaign_smtp" in init and "init-db" in init


def test_no_secret_is_written_in_the_compose_file():
    text = (ROOT / "docker-compose.yaml").read_text()
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET|KEY)\w*:\s*\S", line) and "${" not in line:
            pytest.fail(f"a secret is written in docker-compose.yaml: {line.strip()}")
    assert ".env" in (ROOT / ".gitignore").read_text()


def test_every_airflow_service_uses_the_campaign_fab_auth_manager(compose):
    assert "apache-airflow-providers-fab==" in (ROOT / "requirements.txt").read_text()
    for name, service in compose["services"].items():
        if name.startswith("airflow-"):
            variables = env(service)
            assert variables["AIRFLOW__CORE__AUTH_MANAGER"] == FAB_AUTH_MANAGER, name
            assert not any("SIMPLE_AUTH_MANAGER" in key for key in variables), name


def _dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def _run_init(compose: dict, tmp_path: Path, **overrides: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """airflow-init's script, as compose hands it to bash, with its environment from .env.example;
    `airflow` and `python` are stand-ins that record their arguments (no database here)."""
    init = compose["services"]["airflow-init"]
    assert init["entrypoint"] in ("/bin/bash", ["/bin/bash"]) and init["command"][0] == "-c"
    script = init["command"][1].replace("$$", "$")  # compose's escape of a literal $
    calls = tmp_path / "calls.jsonl"
    for tool in ("airflow", "python"):
        stand_in = tmp_path / tool
        stand_in.write_text(
            "#!/usr/bin/env python3\nimport json, sys\n"
            f"open({str(calls)!r}, 'a').write(json.dumps([{tool!r}, *sys.argv[1:]]) + '\\n')\n"
        )
        stand_in.chmod(0o755)
    environment = {**env(init), **overrides, "PATH": f"{tmp_path}:/usr/bin:/bin"}
    done = subprocess.run(["/bin/bash", "-c", script], env=environment, capture_output=True, text=True, timeout=60)
    recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return done, recorded


def _options(call: list[str]) -> dict[str, str]:
    return dict(zip(call[3::2], call[4::2], strict=True))


def test_init_creates_the_users_of_dotenv_and_grants_start_deliveries(compose, tmp_path):
    dotenv = _dotenv(ROOT / ".env.example")
    done, calls = _run_init(compose, tmp_path)
    assert done.returncode == 0, done.stderr
    users = {
        _options(call)["--username"]: _options(call) for call in calls if call[:3] == ["airflow", "users", "create"]
    }
    admin = dotenv["AIRFLOW_ADMIN_USER"]
    operators = dict(pair.split(":") for pair in dotenv["AIRFLOW_OPERATORS"].split(","))
    assert set(users) == {admin, *operators}
    assert users[admin]["--role"] == "Admin" and users[admin]["--password"] == dotenv["AIRFLOW_ADMIN_PASSWORD"]
    for login, role in operators.items():
        assert role == "User", "the least FAB role that triggers runs and answers the approval"
        assert users[login]["--role"] == role
        assert users[login]["--password"] == dotenv[f"AIRFLOW_PASSWORD_{login.upper()}"]
    campaign = [call[call.index("--db") + 2 :] for call in calls if call[:3] == ["python", "-m", "campaign.cli"]]
    assert ["init-db"] in campaign
    assert {call[2] for call in campaign if call[:2] == ["operator", "create"]} == set(operators)
    granted = {call[2] for call in campaign if call[:2] == ["operator", "grant"]}
    assert granted == set(dotenv["CAMPAIGN_START_DELIVERIES"].split(",")) == {"alice"}
    assert all(call[3] == "start_deliveries" for call in campaign if call[:2] == ["operator", "grant"])


def test_init_stops_when_a_user_has_no_password_in_dotenv(compose, tmp_path):
    done, calls = _run_init(compose, tmp_path, AIRFLOW_OPERATORS="alice:User,carol:User")
    assert done.returncode != 0
    assert "no password for Airflow user carol in .env" in done.stderr
    assert not any(call[:2] == ["airflow", "connections"] for call in calls), "init went on"


def test_dotenv_example_secrets_say_change_me_and_stay_out_of_the_compose_file():
    compose_text = (ROOT / "docker-compose.yaml").read_text()
    for key, value in _dotenv(ROOT / ".env.example").items():
        if re.search(r"PASSWORD|SECRET", key) and key != "CAMPAIGN_SMTP_PASSWORD":
            assert value.startswith("change-me"), key
            assert value not in compose_text, key
    assert re.findall(r"--password (\S+)", compose_text) == ['"$$3"'], "passwords come from .env only"


# ---------------------------------------------------------------- the tracking service


def _published(entry) -> tuple[str, int, int]:
    """(host address, published port, container port) of a ``ports`` entry in either of the forms
    compose writes it ("127.0.0.1:8080:8080/tcp", or a mapping)."""
    if isinstance(entry, dict):
        return entry.get("host_ip", "0.0.0.0"), int(entry["published"]), int(entry["target"])
    *host, published, target = entry.split("/")[0].split(":")
    return (host[0] if host else "0.0.0.0"), int(published), int(target)


def _option(command: list[str], name: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{name}=")]
    return value


def test_only_the_tracking_service_faces_the_internet(compose):
    services = compose["services"]
    published = {name: [_published(entry) for entry in service.get("ports", [])] for name, service in services.items()}
    everywhere = {name for name, ports in published.items() if any(host != "127.0.0.1" for host, _, _ in ports)}
    # mailpit (the development mail catcher) holds every recipient's signed links: loopback too.
    assert everywhere == {"tracking"}
    [api] = services["airflow-apiserver"]["ports"]
    assert _published(api)[0] == "127.0.0.1", "Airflow's UI and REST API stay internal"
    [tracking_port] = services["tracking"]["ports"]
    _, published, target = _published(tracking_port)
    base_url = urlsplit(env(services["airflow-worker"])["CAMPAIGN_TRACKING_BASE_URL"])
    assert base_url.port == published, "the mails' links point at the tracking service"
    assert int(_option(services["tracking"]["command"], "--port")) == target
    for name in AIRFLOW_SERVICES:
        assert env(services[name])["CAMPAIGN_TRACKING_BASE_URL"] == base_url.geturl(), name
    # The service serves under the path of that URL (campaign.web.tracking_service).
    assert env(services["tracking"])["CAMPAIGN_TRACKING_BASE_URL"] == base_url.geturl()


def test_the_tracking_service_runs_uvicorn_with_the_campaign_database_and_secret_only(compose):
    services = compose["services"]
    tracking = services["tracking"]
    airflow = env(services["airflow-worker"])
    assert tracking["image"] == services["airflow-worker"]["image"]
    assert tracking["entrypoint"] == ["/usr/bin/dumb-init", "--"], "not the image's `airflow …` entrypoint"
    command = tracking["command"]
    assert command[:2] == ["uvicorn", "campaign.web.tracking_service:app"]
    assert {"--proxy-headers", "--no-access-log", "--no-server-header", "--lifespan=on"} <= set(command)
    variables = env(tracking)
    assert "env_file" not in tracking, "the internet-facing service gets no Airflow setting or secret"
    assert not [key for key in variables if key.startswith("AIRFLOW")]
    own = {variables["CAMPAIGN_TRACKING_SECRET"], make_url(variables["CAMPAIGN_DB_URL"]).password}
    others = {v for k, v in _dotenv(ROOT / ".env.example").items() if re.search(r"PASSWORD|SECRET|KEY", k) and v} - own
    assert others and not [value for value in others if any(value in held for held in variables.values())]
    assert variables["CAMPAIGN_TRACKING_SECRET"] == airflow["CAMPAIGN_TRACKING_SECRET"]
    connection = json.loads(airflow[f"AIRFLOW_CONN_{CAMPAIGN_DB_CONN_ID.upper()}"])
    url = make_url(variables["CAMPAIGN_DB_URL"])
    assert (url.get_backend_name(), url.host, url.database) == ("postgresql", connection["host"], connection["schema"])
    # ... as its own role, not the owner's: the one the postgres service creates and airflow-init grants.
    postgres = env(services["postgres"])
    assert url.username == postgres["CAMPAIGN_TRACKING_DB_USER"] != connection["login"]
    assert url.password == postgres["CAMPAIGN_TRACKING_DB_PASSWORD"] != connection["password"]
    init = " ".join(services["airflow-init"]["command"])
    assert init.index("campaign init-db") < init.index('campaign grant-tracking "$${CAMPAIGN_TRACKING_DB_USER}"')
    assert "/opt/airflow/include" in variables["PYTHONPATH"].split(":")
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in map(_volume, tracking["volumes"])}
    assert set(mounts) == {"/opt/airflow/include"} and Path(mounts["/opt/airflow/include"]).name == "include"
    assert tracking["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert tracking["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    port = _option(command, "--port")
    assert tracking["healthcheck"]["test"] == ["CMD", "curl", "--fail", f"http://localhost:{port}/healthz"]


def test_the_tracking_command_of_the_compose_file_serves(compose, sqlite_db, tmp_path):
    """The service's command and environment as compose gives them, run here on loopback against
    a SQLite campaign database: uvicorn takes every option, the health check and the path answer."""
    tracking = compose["services"]["tracking"]
    port = free_port()
    command = [a for a in tracking["command"] if not a.startswith(("--host=", "--port="))]
    assert command[0] == "uvicorn"
    command = [sys.executable, "-m", *command, "--host=127.0.0.1", f"--port={port}"]
    variables = {**env(tracking), **service_env(sqlite_db.url, env(tracking)["CAMPAIGN_TRACKING_SECRET"])}
    variables["WEB_CONCURRENCY"] = "1"  # two cores in CI
    log = tmp_path / "tracking.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, env=variables, stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True
        )
    try:

        def healthy() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 30, 0.1, "the tracking service of docker-compose.yaml")
        path = urlsplit(variables["CAMPAIGN_TRACKING_BASE_URL"]).path
        forged = httpx.get(f"http://127.0.0.1:{port}{path}/o/1.2.{'0' * 32}", timeout=5)
        assert (forged.status_code, forged.text) == (404, "Not found")  # the tracking app's own answer
        assert "server" not in forged.headers
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    assert "/o/1.2." not in log.read_text(), "no access log: paths carry recipients' tokens"
