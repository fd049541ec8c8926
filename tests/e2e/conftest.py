"""Fixtures of the end-to-end tests: the confirm_send DAG, loggers kept visible to caplog."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from e2e_support import DAGS_FOLDER, PASSWORDS, LiveAirflow
from testsupport import free_port, wait_for

from campaign.db import make_engine
from campaign.devsmtp import start_server
from campaign.schema import create_schema

ROOT = DAGS_FOLDER.parent


@pytest.fixture
def confirm_send_dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    return bag.get_dag("confirm_send")


@pytest.fixture(autouse=True)
def campaign_loggers_enabled():
    """Airflow's first in-process task run reconfigures logging and disables existing loggers;
    in a worker the DAG file is parsed after that, so production logs are not affected."""
    import logging

    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("campaign") and isinstance(logger, logging.Logger):
            logger.disabled = False
            logger.propagate = True


@pytest.fixture(scope="session")
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
