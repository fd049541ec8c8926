"""Fixtures of the end-to-end tests: the confirm_send DAG, loggers kept visible to caplog, the live
Airflow, and a headless Chromium for the tests that use the UI as a person does."""

from __future__ import annotations

import os
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
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"  # screenshots the browser tests keep (git-ignored)


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


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, driven by Playwright; one for every browser test of the session."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing in CI; .ci/run must install it.")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Flags as this machine needs them: no sandbox as root, no background calls to the network.
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )  # fmt: skip
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The folder the browser tests keep their screenshots in."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
