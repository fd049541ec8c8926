"""Fixtures of the end-to-end tests: the confirm_send DAG, loggers kept visible to caplog."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from e2e_support import DAGS_FOLDER, PASSWORDS, ROLES, LiveAirflow
from testsupport import free_port

from campaign.db import make_engine
from campaign.dev.airflow_harness import standalone
from campaign.dev.smtp import start_server
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
    maildir, database = folder / "maildir", folder / "campaign.db"
    engine = make_engine(f"sqlite:///{database}")
    create_schema(engine)
    smtp_port = free_port()
    controller, handler = start_server(maildir, port=smtp_port)
    try:
        with standalone(
            folder, database, smtp_port, PASSWORDS, ROLES,
            extra_env={"CAMPAIGN_RETRY_DELAY_SECONDS": "1", "CAMPAIGN_SMTP_RECONNECT_DELAYS": "0.1,0.2"},
        ) as (base_url, log_path):  # fmt: skip
            yield LiveAirflow(base_url, engine, handler, maildir, log_path)
    finally:
        controller.stop()
        engine.dispose()
