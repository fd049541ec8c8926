"""confirm_send on Airflow's CeleryExecutor without Docker: PostgreSQL and Redis from Debian on
loopback, API server, scheduler, DAG processor and two Celery workers as separate processes, a
local SMTP server. A large delivery is triggered through the REST API; one worker is killed with
SIGKILL in the middle of its chunks; Airflow retries them on the other worker.

Identity as in docker-compose: the FAB auth manager (our CampaignFabAuthManager). alice is a FAB
"User" with the Start deliveries role; bob is a FAB "Admin" without it: his answer to alice's
approval is refused (403), and the run he triggers fails in check_role.

Size: CAMPAIGN_SCALE_RECIPIENTS (default 20000). `make scale-out` runs this test alone and
prints the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import text
from testsupport import free_port, wait_for

from campaign import deliveries, operators
from campaign.clock import utcnow
from campaign.db import make_engine
from campaign.dev.airflow_harness import AirflowClient, airflow_env, prepare_airflow
from campaign.dev.smtp import start_server
from campaign.schema import ROLE_START_DELIVERIES, create_schema, profiles
from campaign.sending import DEFAULT_COMMIT_EVERY

pytestmark = pytest.mark.airflow_server

ROOT = Path(__file__).resolve().parents[2]
RECIPIENTS = int(os.environ.get("CAMPAIGN_SCALE_RECIPIENTS", "20000"))
CHUNK_SIZE = 1000
WORKER_CONCURRENCY = 4
PASSWORD = "scale-" + os.urandom(6).hex()
BOB_PASSWORD = "scale-bob-" + os.urandom(6).hex()
APPROVE = "approve_send"
OK = "OK, send definitively"


def _redis(port: int, folder: Path) -> subprocess.Popen:
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server (Debian package) is missing in CI; .ci/run must install it.")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _seed(engine) -> int:
    create_schema(engine)
    operators.create_operator(engine, "alice")
    operators.grant_role(engine, "alice", ROLE_START_DELIVERIES)
    operators.create_operator(engine, "bob")
    now = utcnow()
    with engine.begin() as conn:
        for start in range(0, RECIPIENTS, 5000):
            conn.execute(
                profiles.insert(),
                [
                    {"email": f"r{i:07d}@scale.test", "first_name": f"R{i}", "blocklisted": False, "created_at": now}
                    for i in range(start, min(start + 5000, RECIPIENTS))
                ],
            )
    delivery_id = deliveries.create_delivery(
        engine,
        {
            "label": "Scale-out delivery",
            "sender": "Shop <news@shop.test>",
            "subject": "Hello {{ profile.first_name }}",
            "text": "Hello {{ profile.first_name }}",
            "html": "<p>Hello {{ profile.first_name }}</p>",
            "tracking": False,
        },
    )
    deliveries.prepare_delivery(engine, delivery_id, "alice")
    deliveries.approve_delivery(engine, delivery_id, "alice")
    return delivery_id


def test_two_celery_workers_share_the_send_and_survive_a_killed_worker(postgres_server, tmp_path):
    started_at = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="campaign-scale-"))
    metadata_url = postgres_server.create_database("airflow_scale")
    campaign_url = postgres_server.create_database("campaign_scale")
    engine = make_engine(campaign_url)
    delivery_id = _seed(engine)

    redis_port, api_port, smtp_port = free_port(), free_port(), free_port()
    redis = _redis(redis_port, folder)
    controller, sink = start_server(tmp_path / "maildir", port=smtp_port)
    campaign_connection = {
        "conn_type": "postgres",
        "host": postgres_server.host,
        "port": postgres_server.port,
        "schema": "campaign_scale",
        "login": postgres_server.user,
    }
    env = airflow_env(
        folder / "airflow", api_port, {"alice": PASSWORD, "bob": BOB_PASSWORD}, "alice:User,bob:Admin",
        campaign_connection, smtp_port, auth_manager="fab",
    )  # fmt: skip
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
            # api-server, scheduler and workers are separate processes: they must share the JWT secret
            "AIRFLOW__API_AUTH__JWT_SECRET": "scale-test-" + os.urandom(8).hex(),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "CAMPAIGN_RETRY_DELAY_SECONDS": "2",
        }
    )
    prepare_airflow(env, pool_slots=8)
    airflow = str(Path(sys.executable).parent / "airflow")

    processes: dict[str, subprocess.Popen] = {}
    logs = {}

    def start(name: str, *args: str, **extra_env: str) -> None:
        logs[name] = open(folder / f"{name}.log", "wb")
        processes[name] = subprocess.Popen(
            [airflow, *args], env={**env, **extra_env}, stdout=logs[name], stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    start("api-server", "api-server", "--port", str(api_port))
    start("scheduler", "scheduler")
    start("dag-processor", "dag-processor")
    for number in (1, 2):
        start(
            f"worker-{number}", "celery", "worker", "--celery-hostname", f"worker{number}@%h",
            CAMPAIGN_WORKER_NAME=f"worker-{number}",
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        )  # fmt: skip

    killed: list[str] = []
    lock = threading.Lock()

    def kill_worker_one_halfway(total: int, _peer) -> None:
        with lock:
            if killed or total < RECIPIENTS // 2:
                return
            killed.append("worker-1")
        # The whole worker as if its machine died: the Celery processes and the task processes
        # they started (which run in sessions of their own).
        worker = psutil.Process(processes["worker-1"].pid)
        for process in [*worker.children(recursive=True), worker]:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass

    http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30)
    try:

        def token(user: str = "alice", password: str = PASSWORD) -> str | None:
            try:
                response = http.post("/auth/token", json={"username": user, "password": password})
            except httpx.HTTPError:
                return None
            return response.json()["access_token"] if response.status_code == 201 else None

        bearer = {"Authorization": f"Bearer {wait_for(token, 120, 1, 'the API server')}"}
        bob = {"Authorization": f"Bearer {token('bob', BOB_PASSWORD)}"}
        wait_for(lambda: http.get("/api/v2/dags/confirm_send", headers=bearer).status_code == 200, 120, 2, "the DAG")
        sink.on_message = kill_worker_one_halfway
        triggered_at = time.monotonic()
        client = AirflowClient(f"http://127.0.0.1:{api_port}", {"alice": PASSWORD, "bob": BOB_PASSWORD})
        run_id = client.trigger("alice", {"delivery_id": delivery_id, "chunk_size": CHUNK_SIZE})
        client.wait_for_approval(run_id, "alice", timeout=300)
        _answer_approval(client, run_id)
        run = client.wait_for_run(run_id, "alice", timeout=1500)
        send_seconds = time.monotonic() - triggered_at
        refused_run = _bobs_run_fails_in_check_role(http, bob, delivery_id)
    finally:
        sink.on_message = None
        for process in processes.values():
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        redis.terminate()
        controller.stop()

    assert refused_run["check_role"] == "failed", refused_run
    assert refused_run[APPROVE] == "upstream_failed", "bob is never asked to approve"
    assert killed == ["worker-1"], "worker-1 was never killed"
    assert run["state"] == "success", (folder / "scheduler.log").read_text()[-4000:]

    received = Counter(sink.accepted)
    assert len(received) == RECIPIENTS and min(received.values()) == 1, "every recipient got the mail"
    duplicates = sum(received.values()) - RECIPIENTS
    with engine.begin() as conn:
        per_worker = dict(
            conn.execute(
                text("SELECT substr(worker, 1, 8) AS name, COUNT(*) FROM broad_logs WHERE delivery_id = :d GROUP BY 1"),
                {"d": delivery_id},
            ).all()
        )
        chunks_per_worker = dict(
            conn.execute(
                text(
                    "SELECT name, COUNT(*) FROM (SELECT DISTINCT substr(worker, 1, 8) AS name, (seq - 1) / :size AS c "
                    "FROM broad_logs WHERE delivery_id = :d) AS chunks GROUP BY name"
                ),
                {"d": delivery_id, "size": CHUNK_SIZE},
            ).all()
        )
        kpis = (
            conn.execute(text("SELECT * FROM delivery_kpis WHERE delivery_id = :d"), {"d": delivery_id})
            .mappings()
            .one()
        )
    assert set(per_worker) == {"worker-1", "worker-2"}, per_worker
    assert sum(per_worker.values()) == RECIPIENTS
    # Each chunk in flight on the killed worker may re-send at most DEFAULT_COMMIT_EVERY mails.
    assert duplicates <= WORKER_CONCURRENCY * DEFAULT_COMMIT_EVERY, duplicates
    assert kpis["delivered"] == len(received) == RECIPIENTS
    print(
        f"\nscale-out: {RECIPIENTS} recipients, {RECIPIENTS // CHUNK_SIZE} chunks; rows per worker {per_worker}; "
        f"chunks touched per worker {chunks_per_worker}; worker-1 killed halfway; {duplicates} duplicate mails "
        f"(bound {WORKER_CONCURRENCY * DEFAULT_COMMIT_EVERY}); approval answered by alice after bob got 403; "
        f"trigger to KPIs {send_seconds:.0f} s; "
        f"whole test {time.monotonic() - started_at:.0f} s"
    )


def _answer_approval(client: AirflowClient, run_id: str) -> None:
    """bob (FAB Admin, may edit any HITL detail) is not the assigned respondent: 403 from the
    auth manager's is_authorized_hitl_task. alice, who triggered the run, is: by name, which
    only CampaignFabAuthManager accepts (her FAB id is a row number)."""
    refused = client.answer(run_id, "bob", OK)
    assert refused.status_code == 403 and "respondent" in refused.text, refused.text
    accepted = client.approve(run_id, "alice", OK)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["responded_by"]["name"] == "alice", accepted.text


def _bobs_run_fails_in_check_role(http: httpx.Client, bob: dict, delivery_id: int) -> dict[str, str]:
    """bob may trigger confirm_send (FAB Admin) but lacks Start deliveries: the run fails at
    check_role and sends nothing. Returns the state of each task of his run."""
    response = http.post(
        "/api/v2/dags/confirm_send/dagRuns",
        headers=bob,
        json={"logical_date": None, "conf": {"delivery_id": delivery_id}},
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    def finished():
        run = http.get(f"/api/v2/dags/confirm_send/dagRuns/{run_id}", headers=bob).json()
        return run if run["state"] in ("success", "failed") else None

    run = wait_for(finished, 300, 2, "bob's run")
    assert run["state"] == "failed" and run["triggering_user_name"] == "bob", run
    tasks = http.get(f"/api/v2/dags/confirm_send/dagRuns/{run_id}/taskInstances", headers=bob).json()
    states = {task["task_id"]: task["state"] for task in tasks["task_instances"]}
    log = http.get(
        f"/api/v2/dags/confirm_send/dagRuns/{run_id}/taskInstances/check_role/logs/1",
        headers={**bob, "Accept": "application/json"},
    )
    assert "User 'bob' is not allowed to confirm this send" in json.dumps(log.json()), log.text[-2000:]
    return states
