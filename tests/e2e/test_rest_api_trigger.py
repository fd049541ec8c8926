"""confirm_send triggered through the REST API of a running Airflow, as real authenticated users.

dag.test() always runs as 'dag_test'; only a real API server records who triggered the run, so
the role check and the crash-recovery bound are tested here against `airflow standalone`
(API server, scheduler, DAG processor, LocalExecutor), a real SMTP server and a SQLite database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import psutil
import pytest
from e2e_support import (
    DAGS_FOLDER,
    SPEC,
    broad_logs,
    delivery_row,
    kpi_row,
    mails_per_recipient,
    received,
    seed_delivery,
)
from sqlalchemy import text
from testsupport import free_port, wait_for

from campaign import operators
from campaign.db import make_engine
from campaign.devsmtp import start_server
from campaign.recipients import tracked_urls
from campaign.schema import create_schema
from campaign.sending import DEFAULT_COMMIT_EVERY

pytestmark = pytest.mark.airflow_server

ROOT = DAGS_FOLDER.parent
PASSWORDS = {"alice": "alice-pw-" + os.urandom(4).hex(), "bob": "bob-pw-" + os.urandom(4).hex()}
RUN_TIMEOUT = 240


class LiveAirflow:
    def __init__(self, base_url: str, engine, sink_handler, maildir: Path, log_path: Path) -> None:
        self.base_url = base_url
        self.engine = engine
        self.sink = sink_handler
        self.maildir = maildir
        self.log_path = log_path
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def token(self, user: str) -> str:
        response = self.http.post("/auth/token", json={"username": user, "password": PASSWORDS[user]})
        response.raise_for_status()
        return response.json()["access_token"]

    def api(self, method: str, path: str, user: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(user)}", **kwargs.pop("headers", {})}
        return self.http.request(method, f"/api/v2{path}", headers=headers, **kwargs)

    def trigger(self, user: str, conf: dict) -> str:
        response = self.api("POST", "/dags/confirm_send/dagRuns", user, json={"logical_date": None, "conf": conf})
        assert response.status_code == 200, response.text
        return response.json()["dag_run_id"]

    def wait_for_run(self, run_id: str, user: str = "alice") -> dict:
        def finished():
            run = self.api("GET", f"/dags/confirm_send/dagRuns/{run_id}", user).json()
            return run if run["state"] in ("success", "failed") else None

        return wait_for(finished, RUN_TIMEOUT, interval=1, what=f"run {run_id} to finish")

    def task_instances(self, run_id: str, user: str = "alice") -> dict[str, dict]:
        body = self.api("GET", f"/dags/confirm_send/dagRuns/{run_id}/taskInstances", user).json()
        return {f"{ti['task_id']}[{ti['map_index']}]": ti for ti in body["task_instances"]}

    def task_log(self, run_id: str, task_id: str, try_number: int, user: str = "alice") -> str:
        response = self.api(
            "GET",
            f"/dags/confirm_send/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            user,
            headers={"Accept": "application/json"},
        )
        return json.dumps(response.json())


@pytest.fixture(scope="module")
def live_airflow(airflow_db) -> LiveAirflow:
    folder = Path(tempfile.mkdtemp(prefix="campaign-live-airflow-"))
    home, maildir, database = folder / "airflow", folder / "maildir", folder / "campaign.db"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps(PASSWORDS))
    engine = make_engine(f"sqlite:///{database}")
    create_schema(engine)
    smtp_port, api_port = free_port(), free_port()
    controller, handler = start_server(maildir, port=smtp_port)
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "include"),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "alice:admin,bob:user",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW_CONN_CAMPAIGN_DB": json.dumps({"conn_type": "sqlite", "host": str(database)}),
        "AIRFLOW_CONN_CAMPAIGN_SMTP": json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp_port,
                "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 10, "retry_limit": 0},
            }
        ),
        "CAMPAIGN_RETRY_DELAY_SECONDS": "1",
        "CAMPAIGN_TRACKING_BASE_URL": f"http://127.0.0.1:{api_port}/campaign",
    }
    airflow = str(venv_bin / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "campaign_smtp", "4", "test"], env=env, check=True, capture_output=True)
    log_path = folder / "standalone.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [airflow, "standalone"], env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    live = LiveAirflow(f"http://127.0.0.1:{api_port}", engine, handler, maildir, log_path)
    try:

        def dag_parsed():
            try:
                return live.api("GET", "/dags/confirm_send", "alice").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(dag_parsed, 180, interval=2, what="Airflow standalone to serve confirm_send")
        yield live
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        controller.stop()
        engine.dispose()


def fresh_delivery(engine, **kwargs):
    """The module shares one database: earlier tests' profiles are blocklisted so that each
    delivery targets only its own audience."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE profiles SET blocklisted = TRUE"))
    return seed_delivery(engine, operator="alice", **kwargs)


def test_operator_without_the_role_is_refused_and_nothing_is_sent(live_airflow):
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=12)
    operators.create_operator(engine, "bob")
    accepted_before = sum(live_airflow.sink.accepted.values())

    run_id = live_airflow.trigger("bob", {"delivery_id": audience.delivery_id, "confirm": True})
    run = live_airflow.wait_for_run(run_id, "bob")

    assert run["state"] == "failed"
    assert run["triggering_user_name"] == "bob"
    tis = live_airflow.task_instances(run_id)
    assert tis["check_role[-1]"]["state"] == "failed"
    assert tis["check_role[-1]"]["try_number"] == 1, "a refused role is not retried"
    log = live_airflow.task_log(run_id, "check_role", 1)
    assert "User 'bob' is not allowed to confirm this send" in log
    assert "Start deliveries role" in log
    assert sum(live_airflow.sink.accepted.values()) == accepted_before
    assert delivery_row(engine, audience.delivery_id)["status"] == "ready"
    assert broad_logs(engine, audience.delivery_id) == {}


def test_operator_with_the_role_sends(live_airflow):
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=30, hard=1)

    run_id = live_airflow.trigger("alice", {"delivery_id": audience.delivery_id, "confirm": True, "chunk_size": 10})
    run = live_airflow.wait_for_run(run_id)

    assert run["state"] == "success", live_airflow.log_path.read_text()[-3000:]
    received = mails_per_recipient(live_airflow.maildir)
    assert {address: received[address] for address in audience.good} == {address: 1 for address in audience.good}
    delivery = delivery_row(engine, audience.delivery_id)
    assert (delivery["status"], delivery["confirmed_by"], delivery["run_id"]) == ("sent", "alice", run_id)
    kpis = kpi_row(engine, audience.delivery_id)
    assert (kpis["to_deliver"], kpis["delivered"], kpis["hard_bounces"]) == (31, 30, 1)


def test_the_api_server_serves_the_tracking_endpoints(live_airflow):
    """The plugin is loaded by the real API server: a mail's pixel and link answer there, without login."""
    engine = live_airflow.engine
    spec = {**SPEC, "html": '<html><body><a href="https://shop.test/x">x</a></body></html>'}
    audience = fresh_delivery(engine, good=3, spec=spec)
    run_id = live_airflow.trigger("alice", {"delivery_id": audience.delivery_id, "confirm": True})
    assert live_airflow.wait_for_run(run_id)["state"] == "success"
    mail = next(m for m in received(live_airflow.maildir) if m["X-Campaign-Delivery"] == str(audience.delivery_id))
    pixel, links = tracked_urls(mail.as_bytes())
    assert pixel.startswith(live_airflow.base_url + "/campaign/o/")

    assert live_airflow.http.get(pixel).headers["content-type"] == "image/gif"
    click = live_airflow.http.get(links[0], follow_redirects=False)
    assert (click.status_code, click.headers["location"]) == (302, "https://shop.test/x")
    assert live_airflow.http.get(pixel[:-3] + "000").status_code == 404
    with engine.begin() as conn:
        events = conn.execute(
            text("SELECT event_type, COUNT(*) FROM tracking_logs WHERE delivery_id = :d GROUP BY event_type"),
            {"d": audience.delivery_id},
        ).all()
    assert dict(events) == {"open": 1, "click": 1}


def test_worker_killed_mid_chunk_is_retried_within_the_duplicate_bound(live_airflow):
    """SIGKILL the task process after 150 accepted mails of a 400-recipient chunk; the scheduler
    retries it and the retry skips everyone already logged."""
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=400)
    targets = set(audience.good)
    killed: list[int] = []
    lock = threading.Lock()
    accepted_before = dict(live_airflow.sink.accepted)

    def kill_sender_after_150(_total: int, peer: tuple) -> None:
        with lock:
            ours = sum(
                count - accepted_before.get(address, 0)
                for address, count in live_airflow.sink.accepted.items()
                if address in targets
            )
            if killed or ours < 150:
                return
            for connection in psutil.net_connections(kind="tcp"):
                if connection.laddr and tuple(connection.laddr)[:2] == tuple(peer)[:2] and connection.pid:
                    os.kill(connection.pid, signal.SIGKILL)
                    killed.append(connection.pid)
                    return

    live_airflow.sink.on_message = kill_sender_after_150
    try:
        run_id = live_airflow.trigger(
            "alice", {"delivery_id": audience.delivery_id, "confirm": True, "chunk_size": 400}
        )
        run = live_airflow.wait_for_run(run_id)
    finally:
        live_airflow.sink.on_message = None

    assert killed, "the sending process was never killed"
    assert run["state"] == "success", live_airflow.log_path.read_text()[-3000:]
    assert live_airflow.task_instances(run_id)["send_chunk[0]"]["try_number"] == 2
    received = mails_per_recipient(live_airflow.maildir)
    copies = {address: received[address] for address in targets}
    assert min(copies.values()) == 1, "every recipient got the mail"
    duplicates = sum(copies.values()) - len(targets)
    assert duplicates <= DEFAULT_COMMIT_EVERY, f"{duplicates} duplicates exceed the documented bound"
    logs = broad_logs(engine, audience.delivery_id)
    assert len(logs) == 400 and {row["status"] for row in logs.values()} == {"sent"}
    assert kpi_row(engine, audience.delivery_id)["delivered"] == len(targets)
    print(f"worker killed after 150 mails: {duplicates} duplicate mails (bound {DEFAULT_COMMIT_EVERY})")
