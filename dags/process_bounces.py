"""process_bounces: read the bounce mailbox; DSNs lower "delivered", feedback reports blocklist.

Every 10 minutes: asynchronous bounces (RFC 3464) turn accepted messages into hard or soft
bounces, spam complaints (RFC 5965) are recorded and blocklist the recipient, the KPIs of the
deliveries concerned are recomputed from the logs. Mail is moved to Processed or Unusable, never
deleted (campaign.bounces).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import dag, task

from campaign import bounces
from campaign.airflow_glue import campaign_bounce_mailbox, campaign_engine, says_why
from campaign.tokens import tracking_secret
from dag_defaults import DEFAULT_ARGS, START_DATE

log = logging.getLogger("campaign.process_bounces")


@dag(
    dag_id="process_bounces",
    schedule=timedelta(minutes=10),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    # A run must not outlast the next one's slot by much: the mailbox is read again in 10 minutes.
    dagrun_timeout=timedelta(minutes=30),
    default_args=DEFAULT_ARGS,
    tags=["campaign", "bounces"],
    doc_md=__doc__,
)
def process_bounces():
    @task
    @says_why
    def process_bounce_mailbox() -> dict:
        engine, secret = campaign_engine(), tracking_secret()
        with campaign_bounce_mailbox() as client:
            summary = bounces.process_mailbox(client, engine, secret)
        log.info(summary.summary_line())
        return summary.as_dict()

    process_bounce_mailbox()


process_bounces()
