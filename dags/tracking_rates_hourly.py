"""tracking_rates_hourly: fold the tracking events of the last hour into open and click-through rates."""

from __future__ import annotations

import logging

from airflow.sdk import dag, task

from campaign import stats
from campaign.airflow_glue import campaign_engine, says_why
from dag_defaults import DEFAULT_ARGS, START_DATE

log = logging.getLogger("campaign.tracking_rates_hourly")

LAG_SECONDS = stats.lag_seconds_from_env()


@dag(
    dag_id="tracking_rates_hourly",
    schedule="@hourly",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["campaign", "stats"],
    doc_md=__doc__,
)
def tracking_rates_hourly():
    @task
    @says_why
    def fold_tracking_events() -> dict:
        result = stats.fold_new_events(campaign_engine(), LAG_SECONDS)
        log.info(
            "fold_tracking_events: %s new events, %s recipients, %s deliveries updated, watermark %s (%.2fs)",
            result.events, result.recipients, result.deliveries, result.upto_id, result.seconds,
        )  # fmt: skip
        return {"events": result.events, "recipients": result.recipients, "deliveries": result.deliveries}

    fold_tracking_events()


tracking_rates_hourly()
