"""A throw-away Airflow wired to a campaign database and an SMTP server, with a small REST client:
for the end-to-end tests and the benchmarks. Either `airflow standalone` (API server, scheduler,
DAG processor, triggerer, LocalExecutor, SQLite metadata; ``standalone``) or the components as
separate processes a test can restart (``airflow_processes``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx

from campaign.confirm import POOL_SLOTS_ENV
from campaign.dev.net import free_port, wait_until

ROOT = Path(__file__).resolve().parents[3]
# The docker-compose deployment's auth manager (include/campaign_auth_manager.py): FAB's users and
# roles in Airflow's metadata database. airflow_env(..., auth_manager="fab") selects it.
FAB_AUTH_MANAGER = "campaign_auth_manager.CampaignFabAuthManager"
_FAB_USERS_FILE = "fab-users.json"
# How long a script waits between seeing the approval and answering it (AirflowClient.wait_for_approval).
APPROVAL_SETTLE_SECONDS = 2.0


class AirflowClient:
    """Airflow's REST API as its users see it (SimpleAuthManager or FAB: both serve POST /auth/token)."""

    def __init__(self, base_url: str, passwords: dict[str, str]) -> None:
        self.base_url = base_url
        self.passwords = passwords
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def token(self, user: str) -> str:
        response = self.http.post("/auth/token", json={"username": user, "password": self.passwords[user]})
        response.raise_for_status()
        return response.json()["access_token"]

    def api(self, method: str, path: str, user: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(user)}", **kwargs.pop("headers", {})}
        return self.http.request(method, f"/api/v2{path}", headers=headers, **kwargs)

    def trigger(self, user: str, conf: dict, dag_id: str = "confirm_send") -> str:
        for attempt in range(3):
            response = self.api("POST", f"/dags/{dag_id}/dagRuns", user, json={"logical_date": None, "conf": conf})
            # The standalone's SQLite metadata database takes one writer at a time: under load the
            # API server's write can wait out SQLite's 5 s busy timeout and answer 500 "Database
            # error". Its transaction was rolled back (no run exists), so asking again is safe.
            if response.status_code == 500 and "Database error" in response.text and attempt < 2:
                time.sleep(1)
                continue
            break
        if response.status_code != 200:
            raise RuntimeError(f"trigger of {dag_id} refused: {response.status_code} {response.text}")
        return response.json()["dag_run_id"]

    def approval_path(self, run_id: str, dag_id: str = "confirm_send", task_id: str = "approve_send") -> str:
        return f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/-1/hitlDetails"

    def wait_for_approval(
        self, run_id: str, user: str, timeout: float = 120, settle: float = APPROVAL_SETTLE_SECONDS
    ) -> dict:
        """The approval of the run once it waits for an answer (its HITL detail, as ``user`` reads it);
        raises if the run ends first (refused by check_role or validate).

        Returns ``settle`` seconds after the task is first seen ``awaiting_input``: Airflow 3.3.2's
        scheduler loses an answer given before it has processed the worker's exit from the parked
        task (it takes the task for killed externally, retries it and asks again), and a script can
        otherwise answer within that second. A person never does.
        """

        def asked() -> dict | None:
            response = self.api("GET", self.approval_path(run_id), user)
            if response.status_code == 200 and response.json()["task_instance"]["state"] == "awaiting_input":
                return response.json()
            run = self.api("GET", f"/dags/confirm_send/dagRuns/{quote(run_id, safe='')}", user).json()
            if run.get("state") in ("success", "failed"):
                raise RuntimeError(f"run {run_id} ended ({run['state']}) without asking for approval")
            return None

        detail = wait_until(asked, timeout, 0.5, f"run {run_id} to ask for approval")
        time.sleep(settle)
        return detail

    def answer(self, run_id: str, user: str, option: str) -> httpx.Response:
        """Answer the approval of the run as ``user``: what a script does after the trigger."""
        return self.api(
            "PATCH", self.approval_path(run_id), user, json={"chosen_options": [option], "params_input": {}}
        )

    def approve(self, run_id: str, user: str, option: str, attempts: int = 3) -> httpx.Response:
        """Wait for the approval, answer it and make sure the answer took; the last response.

        Airflow 3.3.2 can lose an answer (see ``wait_for_approval``): the task then goes up for
        retry and a later try asks again, and this answers that one. A refused answer (403, 409, …)
        is returned at once.
        """
        for _ in range(attempts):
            asked_in = self.wait_for_approval(run_id, user)["task_instance"]["try_number"]
            response = self.answer(run_id, user, option)
            if response.status_code != 200 or self.answer_took(run_id, user, asked_in):
                return response
        raise RuntimeError(f"Airflow lost {attempts} answers in a row to the approval of run {run_id}")

    def answer_took(self, run_id: str, user: str, asked_in: int, timeout: float = 120) -> bool:
        """Whether the answer given to try ``asked_in`` of the approval took: the task ends with
        that try (True), or Airflow lost the answer and the task goes up for retry to ask again
        (False)."""
        task_path = f"/dags/confirm_send/dagRuns/{quote(run_id, safe='')}/taskInstances/approve_send"

        def outcome() -> str | None:
            task = self.api("GET", task_path, user).json()
            if task["try_number"] > asked_in or task["state"] == "up_for_retry":
                return "lost"
            return "took" if task["state"] in ("success", "failed", "skipped", "upstream_failed") else None

        return wait_until(outcome, timeout, 0.5, f"the answer to run {run_id} to take") == "took"

    def wait_for_run(self, run_id: str, user: str = "alice", dag_id: str = "confirm_send", timeout: float = 240):
        def finished():
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}", user).json()
            return run if run["state"] in ("success", "failed") else None

        try:
            return wait_until(finished, timeout, 1, f"run {run_id} to finish")
        except TimeoutError as exc:  # say where the run stands, not only that it did not end
            tasks = self.task_instances(run_id, user, dag_id)
            states = ", ".join(f"{t['task_id']}[{t['map_index']}] {t['state']} (try {t['try_number']})" for t in tasks)
            raise TimeoutError(f"{exc}; its tasks: {states}") from None

    def wait_idle(self, user: str, timeout: float = 180) -> None:
        """Wait until no DAG run is queued or running, e.g. the hourly run a fresh scheduler starts."""

        def idle() -> bool:
            response = self.api("GET", "/dags/~/dagRuns", user, params={"state": ["queued", "running"], "limit": 1})
            return response.status_code == 200 and response.json()["total_entries"] == 0

        wait_until(idle, timeout, 1, "Airflow to finish the runs it started by itself")

    def task_instances(self, run_id: str, user: str, dag_id: str = "confirm_send") -> list[dict]:
        """Every task instance of a run, mapped ones included."""
        response = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", user, params={"limit": 1000})
        response.raise_for_status()
        return response.json()["task_instances"]

    def return_value(self, run_id: str, task_id: str, map_index: int, user: str, dag_id: str = "confirm_send"):
        """What a task instance returned (its XCom ``return_value``)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        response = self.api("GET", path, user, params={"map_index": map_index, "deserialize": True})
        response.raise_for_status()
        value = response.json()["value"]
        return json.loads(value) if isinstance(value, str) else value


def airflow_env(
    home: Path,
    api_port: int,
    users: dict[str, str],
    roles: str,
    campaign_connection: dict,
    smtp_port: int,
    auth_manager: str = "simple",
) -> dict[str, str]:
    """The environment of every process of a throw-away Airflow serving our DAGs and plugin on
    loopback: SimpleAuthManager ``users`` (passwords) with ``roles`` ("alice:admin,…"), the
    campaign_db Connection given and campaign_smtp on ``smtp_port``. Callers add the executor.

    ``auth_manager="fab"``: FAB_AUTH_MANAGER instead; ``roles`` then names FAB roles
    ("alice:User,bob:Admin") and prepare_airflow creates the users (``airflow users create``)."""
    if auth_manager not in ("simple", "fab"):
        raise ValueError(f"auth_manager is 'simple' or 'fab', not {auth_manager!r}")
    home.mkdir(parents=True, exist_ok=True)
    (home / "passwords.json").write_text(json.dumps(users))
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "include"),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": roles,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # How often the scheduler ends approvals whose time is up (default 15 s).
        "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
        "AIRFLOW_CONN_CAMPAIGN_DB": json.dumps(campaign_connection),
        "AIRFLOW_CONN_CAMPAIGN_SMTP": json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp_port,
                "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 30, "retry_limit": 0},
            }
        ),
        "CAMPAIGN_TRACKING_BASE_URL": f"http://127.0.0.1:{api_port}/campaign",
    }
    if auth_manager == "fab":
        role_of = dict(pair.split(":", 1) for pair in roles.split(","))
        fab_users = {name: {"role": role_of[name], "password": password} for name, password in users.items()}
        (home / _FAB_USERS_FILE).write_text(json.dumps(fab_users))
        del env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"], env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
        # FAB's tables come with `airflow db migrate`: Airflow 3.3 runs the DB managers of the
        # installed providers (FAB's FABDBManager) without [database] external_db_managers.
        env["AIRFLOW__CORE__AUTH_MANAGER"] = FAB_AUTH_MANAGER
    return env


def _fab_user_commands(env: dict[str, str]) -> list[list[str]]:
    """`airflow users create` for each user of an airflow_env(..., auth_manager="fab")."""
    if env.get("AIRFLOW__CORE__AUTH_MANAGER") != FAB_AUTH_MANAGER:
        return []
    fab_users = json.loads((Path(env["AIRFLOW_HOME"]) / _FAB_USERS_FILE).read_text())
    return [
        ["users", "create", "--username", name, "--role", user["role"], "--password", user["password"],
         "--firstname", name, "--lastname", "Test", "--email", f"{name}@example.test"]
        for name, user in fab_users.items()
    ]  # fmt: skip


def prepare_airflow(env: dict[str, str], pool_slots: int) -> None:
    """Migrate the metadata database and create the campaign_smtp pool the send chunks run in;
    ``env`` gets the slot count too (CAMPAIGN_SMTP_POOL_SLOTS), which plan_chunks sizes chunks by.
    Under FAB it also creates the users."""
    env[POOL_SLOTS_ENV] = str(pool_slots)
    airflow = str(Path(sys.executable).parent / "airflow")
    pool = ["pools", "set", "campaign_smtp", str(pool_slots), "campaign sends"]
    for command in (["db", "migrate"], pool, *_fab_user_commands(env)):
        done = subprocess.run([airflow, *command], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(command[:3])} failed: {done.stderr[-2000:]}")


@contextmanager
def standalone(
    folder: Path,
    campaign_db: Path,
    smtp_port: int,
    users: dict[str, str],
    roles: str,
    pool_slots: int = 4,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[str, Path]]:
    """Start it; yields (base URL, log path) once confirm_send is served. ``roles``: "alice:admin,…"."""
    home = folder / "airflow"
    api_port = free_port()
    campaign_connection = {"conn_type": "sqlite", "host": str(campaign_db)}
    env = airflow_env(home, api_port, users, roles, campaign_connection, smtp_port)
    env.update({"AIRFLOW__CORE__EXECUTOR": "LocalExecutor", **(extra_env or {})})
    prepare_airflow(env, pool_slots)
    airflow = str(Path(sys.executable).parent / "airflow")
    log_path = folder / "standalone.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [airflow, "standalone"], env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    base_url = f"http://127.0.0.1:{api_port}"
    client = AirflowClient(base_url, users)
    user = next(iter(users))
    try:

        def dag_served() -> bool:
            try:
                return client.api("GET", "/dags/confirm_send", user).status_code == 200
            except httpx.HTTPError:
                return False

        def scheduler_healthy() -> bool:
            # Serving the DAG is not being ready: the scheduler may still be starting, and a run
            # triggered then waits for it (seconds that belong to start-up, not to the run).
            try:
                health = client.http.get("/api/v2/monitor/health").json()
            except (httpx.HTTPError, ValueError):
                return False
            return all((health.get(part) or {}).get("status") == "healthy" for part in ("scheduler", "dag_processor"))

        wait_until(dag_served, 180, 2, "Airflow standalone to serve confirm_send")
        wait_until(scheduler_healthy, 120, 1, "Airflow standalone's scheduler to report healthy")
        yield base_url, log_path
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


class AirflowProcesses:
    """Airflow's components as separate processes of one deployment (API server, scheduler with
    the LocalExecutor, DAG processor), each of which a test can stop and start again: what
    ``standalone`` cannot do. Metadata in the database at ``metadata_url`` (PostgreSQL: several
    processes write it at once). Use ``airflow_processes``."""

    COMPONENTS = ("api-server", "scheduler", "dag-processor")

    def __init__(self, folder: Path, env: dict[str, str], api_port: int) -> None:
        self.folder, self.env, self.api_port = folder, env, api_port
        self.processes: dict[str, subprocess.Popen] = {}
        self.base_url = f"http://127.0.0.1:{api_port}"

    def start(self, name: str) -> None:
        airflow = str(Path(sys.executable).parent / "airflow")
        args = [name, "--port", str(self.api_port)] if name == "api-server" else [name]
        with open(self.folder / f"{name}.log", "ab") as log_file:
            self.processes[name] = subprocess.Popen(
                [airflow, *args], env=self.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Stop one component and everything it started (the scheduler's executor workers too)."""
        process = self.processes.pop(name)
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def wait_healthy(self, client: AirflowClient, user: str, timeout: float = 180) -> None:
        def healthy() -> bool:
            try:
                if client.api("GET", "/dags/confirm_send", user).status_code != 200:
                    return False
                health = client.http.get("/api/v2/monitor/health").json()
            except (httpx.HTTPError, ValueError, RuntimeError):
                return False
            return all((health.get(part) or {}).get("status") == "healthy" for part in ("scheduler", "dag_processor"))

        wait_until(healthy, timeout, 1, "Airflow's scheduler and DAG processor to report healthy")


@contextmanager
def airflow_processes(
    folder: Path,
    metadata_url: str,
    campaign_connection: dict,
    smtp_port: int,
    users: dict[str, str],
    roles: str,
    pool_slots: int = 4,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[AirflowProcesses, AirflowClient]]:
    """Start API server, scheduler (LocalExecutor) and DAG processor as separate processes; yields
    them and a REST client once confirm_send is served and the scheduler is healthy."""
    api_port = free_port()
    env = airflow_env(folder / "airflow", api_port, users, roles, campaign_connection, smtp_port)
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            # Separate processes sign and check each other's tokens: one secret for all of them.
            "AIRFLOW__API_AUTH__JWT_SECRET": "controls-" + os.urandom(8).hex(),
            **(extra_env or {}),
        }
    )
    prepare_airflow(env, pool_slots)
    airflow = AirflowProcesses(folder, env, api_port)
    client = AirflowClient(airflow.base_url, users)
    try:
        for name in AirflowProcesses.COMPONENTS:
            airflow.start(name)
        airflow.wait_healthy(client, next(iter(users)))
        yield airflow, client
    finally:
        for name in list(airflow.processes):
            airflow.stop(name, timeout=30)
