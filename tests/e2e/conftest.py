"""Fixtures of the end-to-end tests: the confirm_send DAG, loggers kept visible to caplog."""

from __future__ import annotations

import pytest
from e2e_support import DAGS_FOLDER


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
