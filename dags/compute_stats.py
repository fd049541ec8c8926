"""compute_stats: recompute every KPI from the sending and tracking logs ("Compute stats")."""

from __future__ import annotations

import logging
import time

from airflow.sdk import Param, dag, get_current_context, task

from campaign import stats
from campaign.airflow_glue import campaign_engine, says_why
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
            title="Delivery",
            description="Recompute this delivery only; leave empty for every delivery confirmed in the last days.",
        ),
        "days": Param(
            7,
            type="integer",
            minimum=1,
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
        for change in changes:
            if change.engagement_mismatch:
                log.warning(
                    "delivery %s: engagement disagreed with the tracking logs (%s); rebuilt %s recipient rows",
                    change.delivery_id, change.engagement_mismatch, change.engagement_rebuilt,
                )  # fmt: skip
        rebuilt = sum(change.engagement_rebuilt is not None for change in changes)
        folded = sum(change.events_folded for change in changes)
        log.info(
            "recompute_kpis: %s deliveries recomputed from the logs, %s pending tracking events folded first, "
            "engagement rebuilt for %s (%.2fs)\n%s",
            len(changes), folded, rebuilt, time.monotonic() - started, stats.before_after_table(changes),
        )  # fmt: skip
        return {"deliveries": delivery_ids}

    recompute_kpis()


compute_stats()
