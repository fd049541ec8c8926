"""confirm_send: one run per confirmed delivery — role check, validation, the operator's OK,
chunked send, KPIs."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from campaign import approval, confirm, stats
from campaign.airflow_glue import (
    SendApproval,
    campaign_engine,
    campaign_smtp,
    max_map_length,
    reschedule_while_paused,
    says_why,
)
from campaign.pacing import MAX_RATE
from campaign.schema import MAX_ID
from campaign.sending import send_chunk as send_chunk_of_delivery
from dag_defaults import DEFAULT_ARGS

log = logging.getLogger("campaign.confirm_send")


def _run_params() -> tuple[dict, str]:
    context = get_current_context()
    return context["params"], context["dag_run"].run_id


@dag(
    dag_id="confirm_send",
    schedule=None,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["campaign", "send"],
    doc_md=__doc__,
    params={
        "delivery_id": Param(
            type="integer",
            minimum=1,
            maximum=MAX_ID,
            title="Delivery",
            description="Id of the prepared and approved delivery to send (status ready).",
        ),
        "chunk_size": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=MAX_ID,  # Airflow cannot even store a larger number: the run would never start
            title="Chunk size",
            description=(
                "Recipients per send_chunk task. Empty: sized from the target and the slots of pool "
                "campaign_smtp (a few chunks per slot, at least 5,000 recipients each). Grows if the map "
                "would be too long."
            ),
        ),
        "max_rate": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=MAX_RATE,
            title="Rate limit (messages an hour)",
            description=(
                "At most this many messages an hour for the whole send, all chunks and workers together. "
                "Empty: the delivery's own max_rate, if its spec has one, else no limit."
            ),
        ),
        "confirm_timeout": Param(
            approval.DEFAULT_CONFIRM_TIMEOUT_SECONDS,
            type="integer",
            minimum=1,
            maximum=7 * 24 * 3600,
            title="Time to confirm (seconds)",
            description=(
                "After validation the run asks you to finalise the send with 'OK, send definitively' "
                "(Required actions). Without an answer in this time the send is cancelled: nothing is sent "
                "and the delivery stays ready."
            ),
        ),
    },
)
def confirm_send():
    @task
    @says_why
    def check_role() -> None:
        started = time.monotonic()
        params, run_id = _run_params()
        user = get_current_context()["dag_run"].triggering_user_name
        operator = approval.require_sender(campaign_engine(), user, params.get("delivery_id"), run_id)
        log.info("check_role: %s holds Start deliveries (%.2fs)", operator, time.monotonic() - started)

    @task
    @says_why
    def validate() -> None:
        started = time.monotonic()
        params, _ = _run_params()
        delivery = confirm.validate_delivery(campaign_engine(), params["delivery_id"])
        log.info(
            "validate: delivery %s %r is ready, %s recipients, templates render (%.2fs)",
            delivery.id,
            delivery.label,
            delivery.target_count,
            time.monotonic() - started,
        )

    # The seed's "finalize the send definitively by clicking OK": waits in awaiting_input (no worker,
    # no pool slot). A retry asks the operator again, which sends nothing by itself, so it comes
    # soon: the operator is waiting (Airflow 3.3.2 can lose an early answer and retry the task).
    # A refused answer is permanent and fails at once (DEFAULT_ARGS' retry policy).
    approve_send = SendApproval(
        task_id="approve_send", retry_delay=timedelta(seconds=5), retry_exponential_backoff=False
    )

    @task
    @says_why
    def start_send() -> None:
        params, run_id = _run_params()
        operator, links = confirm.start_send(campaign_engine(), params["delivery_id"], run_id, params.get("max_rate"))
        log.info(
            "start_send: delivery %s is sending, confirmed by %s, run %s, %s tracked links",
            params["delivery_id"],
            operator,
            run_id,
            links,
        )

    @task
    @says_why
    def plan_chunks() -> list[dict[str, int]]:
        params, _ = _run_params()
        plan = confirm.plan_delivery(
            campaign_engine(), params["delivery_id"], params.get("chunk_size"), max_map_length()
        )
        log.info(plan.summary_line())
        return [chunk.as_xcom() for chunk in plan.chunks]

    @task(
        multiple_outputs=False,
        pool="campaign_smtp",
        map_index_template="seq {{ task.op_kwargs['chunk']['first_seq'] }}-{{ task.op_kwargs['chunk']['last_seq'] }}",
    )
    @says_why
    def send_chunk(chunk: dict[str, int]) -> dict:
        params, run_id = _run_params()
        # A paused delivery's chunk gives its worker and pool slot back and comes again later.
        with reschedule_while_paused():
            result = send_chunk_of_delivery(
                campaign_engine(), params["delivery_id"], run_id, chunk["first_seq"], chunk["last_seq"], campaign_smtp
            )
        log.info(result.summary_line())
        return result.summary()

    @task(multiple_outputs=False, trigger_rule="all_done")
    @says_why
    def aggregate_kpis() -> dict:
        params, run_id = _run_params()
        engine = campaign_engine()
        confirm.require_owned_by_run(engine, params["delivery_id"], run_id)
        cancelled = confirm.cancel_if_stopped(engine, params["delivery_id"], run_id)
        # Tracking events recorded while it sent are folded first (up to the lag), as Compute stats does.
        aggregated = stats.aggregate_kpis(engine, params["delivery_id"], stats.lag_seconds_from_env())
        kpis = aggregated.kpis
        status = confirm.finish_send(engine, params["delivery_id"], run_id, kpis)
        stopped = f" (stopped: {cancelled:,} recipients cancelled)" if status == "stopped" else ""
        log.info(
            "aggregate_kpis: delivery %s is %s%s; %s pending tracking events folded first\n%s",
            params["delivery_id"],
            status,
            stopped,
            aggregated.folded.events,
            confirm.format_kpi_table(kpis),
        )
        if status == "failed":
            confirm.raise_unserved(params["delivery_id"], kpis)
        return kpis

    started = start_send()
    # Planning only reads the prepared target: it runs beside start_send, so the send waits for
    # one task fewer. Nothing is sent before start_send has claimed the delivery.
    planned = plan_chunks()
    check_role() >> validate() >> approve_send >> [started, planned]
    chunks = send_chunk.expand(chunk=planned)
    started >> chunks
    chunks >> aggregate_kpis()


confirm_send()
