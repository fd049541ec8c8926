"""Send throughput: a confirm_send run by a real scheduler (LocalExecutor, embedded defaults)
against a plain loop that renders and sends the same messages over one SMTP connection to the
same server, in the same run."""

from __future__ import annotations

import smtplib
import time
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path

from sqlalchemy import text

from benchmarks import datagen
from benchmarks.stats_bench import Ratio
from campaign import deliveries, operators
from campaign.db import make_engine
from campaign.dev.airflow_harness import AirflowClient, standalone
from campaign.rendering import build_email, compile_templates, recipient_context, render
from campaign.schema import ROLE_START_DELIVERIES
from campaign.tokens import tracking_secret

USER, PASSWORD = "bench", "bench-password"


def _ready_delivery(engine, recipients: int) -> int:
    delivery_id = datagen.new_delivery(engine, f"throughput {recipients}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE deliveries SET tracking = FALSE WHERE id = :d"), {"d": delivery_id})
    deliveries.prepare_delivery(engine, delivery_id, USER)
    deliveries.approve_delivery(engine, delivery_id, USER)
    return delivery_id


def plain_loop(engine, delivery_id: int, smtp_port: int) -> float:
    """Seconds to render and send every message of the delivery over one connection."""
    delivery = deliveries.load_delivery(engine, delivery_id)
    templates = compile_templates(delivery.content)
    secret, sender = tracking_secret(), parseaddr(delivery.sender)[1]
    query = text(
        "SELECT t.seq, t.profile_id, t.email, p.first_name, p.last_name, p.locale, p.mobile "
        "FROM delivery_targets t JOIN profiles p ON p.id = t.profile_id WHERE t.delivery_id = :d ORDER BY t.seq"
    )
    started = time.perf_counter()
    with engine.connect() as conn, smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
        for row in conn.execute(query, {"d": delivery_id}).mappings():
            recipient = dict(row)
            rendered = render(templates, recipient_context(recipient, delivery.content), delivery_id)
            message = build_email(delivery.content, rendered, recipient["email"], recipient["profile_id"], secret, "")
            smtp.send_message(message, from_addr=sender, to_addrs=[recipient["email"]])
    return time.perf_counter() - started


def send_throughput(folder: Path, smtp_port: int, recipients: int) -> Ratio:
    database = folder / "throughput.db"
    engine = make_engine(f"sqlite:///{database}")
    datagen.profiles(engine, recipients)
    operators.create_operator(engine, USER)
    operators.grant_role(engine, USER, ROLE_START_DELIVERIES)
    baseline_seconds = plain_loop(engine, _ready_delivery(engine, recipients), smtp_port)
    delivery_id = _ready_delivery(engine, recipients)
    with standalone(folder, database, smtp_port, {USER: PASSWORD}, f"{USER}:admin") as (base_url, log_path):
        client = AirflowClient(base_url, {USER: PASSWORD})
        started, triggered_at = time.perf_counter(), datetime.now(UTC)
        run_id = client.trigger(USER, {"delivery_id": delivery_id, "confirm": True})
        run = client.wait_for_run(run_id, USER, timeout=6 * 3600)
        pipeline_seconds = time.perf_counter() - started
        tasks = client.task_instances(run_id, USER)
    if run["state"] != "success":
        raise RuntimeError(f"the benchmark run failed; see {log_path}")
    pipeline_rate, baseline_rate = recipients / pipeline_seconds, recipients / baseline_seconds
    return Ratio(
        f"Send throughput, {recipients:,} recipients: confirm_send / plain loop", "sqlite",
        pipeline_rate, baseline_rate, f"{pipeline_rate:,.0f} msg/s ({pipeline_seconds:.0f} s)",
        f"{baseline_rate:,.0f} msg/s ({baseline_seconds:.0f} s)", "≥ 1.0",
        where_the_time_went(triggered_at, run, tasks),
    )  # fmt: skip


def where_the_time_went(triggered_at: datetime, run: dict, tasks: list[dict]) -> str:
    """The run's wall time split by phase, from the task instances' own start and end times."""

    def at(value: str) -> datetime:
        return datetime.fromisoformat(value)

    chunks = [t for t in tasks if t["task_id"] == "send_chunk"]
    before_send = [t for t in tasks if t["task_id"] in ("check_role", "validate", "start_send", "plan_chunks")]
    aggregate = next(t for t in tasks if t["task_id"] == "aggregate_kpis")
    run_end = at(run["end_date"])
    first_task = min(at(t["start_date"]) for t in tasks)
    send_start, send_end = min(at(t["start_date"]) for t in chunks), max(at(t["end_date"]) for t in chunks)
    in_tasks = sum(t["duration"] for t in chunks)
    return (
        f"trigger to end of run {(run_end - triggered_at).total_seconds():.0f} s = "
        f"{(first_task - triggered_at).total_seconds():.0f} s until the first task starts, "
        f"{(send_start - first_task).total_seconds():.0f} s for the {len(before_send)} tasks before the send "
        f"({sum(t['duration'] for t in before_send):.0f} s of it running), "
        f"{(send_end - send_start).total_seconds():.0f} s of sending ({len(chunks)} chunks, "
        f"{in_tasks:.0f} s in send_chunk tasks, {in_tasks / max((send_end - send_start).total_seconds(), 1):.1f} "
        f"running at a time on average), "
        f"{(run_end - send_end).total_seconds():.0f} s from the last chunk to the end of the run "
        f"(aggregate_kpis ran {aggregate['duration']:.1f} s)"
    )
