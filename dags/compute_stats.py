"""compute_stats: recompute every KPI from the sending and tracking logs ("Compute stats")."""

from __future__ import annotations

import logging
import time

from airflow.sdk import Param, dag, get_current_context, task

from campaign import stats
from campaign.airflow_glue import campaign_engine, says_why
from campaign.schema import MAX_ID
from dag_defaults import DEFAULT_ARGS

log = logging.getLogger("campaign.compute_stats")

LAG_SECONDS = stats.lag_seconds_from_env()


@dag(
    dag_id="compute_stats",
    schedule=None,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["campaign", "stats"],
    doc_md=__doc__,
    params={
        "delivery_id": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=MAX_ID,
            title="Delivery",
            description="Recompute this delivery only; leave empty for every delivery confirmed in the last days.",
        ),
        "days": Param(
            7,
            type="integer",
            minimum=1,
            maximum=36_500,
            title="Days",
            description="Without a delivery: recompute the deliveries confirmed in this many last days.",
        ),
        "rebuild_engagement": Param(
            False,
            type="boolean",
            title="Rebuild engagement",
            description="Rebuild every recipient's engagement row from the tracking events even when the counts "
            "agree (they are rebuilt anyway when they do not).",
        ),
    },
)
def compute_stats():
    @task
    @says_why
    def recompute_kpis() -> dict:
        started = time.monotonic()
        params = get_current_context()["params"]
        engine = campaign_engine()
        delivery_ids = stats.deliveries_to_recompute(engine, params.get("delivery_id"), params["days"])
        changes = stats.recompute_deliveries(engine, delivery_ids, LAG_SECONDS, params["rebuild_engagement"])
        for warning in stats.engagement_warnings(changes):
            log.warning(warning)
        log.info(stats.recompute_summary(changes, time.monotonic() - started))
        return {"deliveries": delivery_ids}

    recompute_kpis()


compute_stats()
