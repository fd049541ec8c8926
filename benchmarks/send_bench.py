"""Send throughput: a confirm_send run by a real scheduler (LocalExecutor, embedded defaults,
tracking on, pool ``campaign_smtp`` of POOL_SLOTS) against two baselines measured in the same run
over as many SMTP connections as the pool has slots (benchmarks/baselines.py): (a) a plain loop
building each message with ``EmailMessage`` and (b) pre-built message bytes. All three send to
the same Postfix ``smtp-sink``, whose count of accepted mail checks that each sent everything."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import datagen
from benchmarks.baselines import Job, send_seconds
from benchmarks.sink import PostfixSink
from benchmarks.stats_bench import Ratio
from campaign import approval, deliveries, operators
from campaign.db import make_engine
from campaign.dev.airflow_harness import APPROVAL_SETTLE_SECONDS, AirflowClient, standalone
from campaign.dev.net import wait_until
from campaign.schema import ROLE_START_DELIVERIES
from campaign.tokens import tracking_secret

USER, PASSWORD = "bench", "bench-password"
POOL_SLOTS = 4
# The baselines' rates are per message and carry no state that grows with the send, so a
# million-recipient run measures them on the first 100,000 (building a million messages' bytes
# up front would take most of an hour and gigabytes of memory, and tell nothing more).
BASELINE_MAX = 100_000
BASELINE_LINK_BASE = "http://127.0.0.1:8080/campaign"  # the baselines' tracking URLs: a fixed, typical length


def _ready_delivery(engine, recipients: int) -> int:
    """The benchmark message to the first ``recipients`` profiles, prepared and approved; tracking on."""
    delivery_id = datagen.new_delivery(engine, f"throughput {recipients}")
    deliveries.prepare_delivery(engine, delivery_id, USER)
    deliveries.approve_delivery(engine, delivery_id, USER)
    return delivery_id


def _sent_all(sink: PostfixSink, before: int, count: int, what: str) -> None:
    """The sink accepted ``count`` more messages since ``before`` (its counter lags a few ms)."""
    wait_until(lambda: sink.accepted() - before >= count, 30, 0.2, f"smtp-sink to count the {count:,} mails of {what}")


def send_throughput(folder: Path, sink: PostfixSink, recipients: int) -> list[Ratio]:
    database = folder / "throughput.db"
    url = f"sqlite:///{database}"
    engine = make_engine(url)
    datagen.profiles(engine, recipients)
    operators.create_operator(engine, USER)
    operators.grant_role(engine, USER, ROLE_START_DELIVERIES)
    delivery_id = _ready_delivery(engine, recipients)

    baseline_count = min(recipients, BASELINE_MAX)
    job = Job(url, delivery_id, "throughput", datagen.MESSAGE, tracking_secret(), BASELINE_LINK_BASE, sink.port)
    baselines = {}
    for name, prebuilt in (("plain", False), ("prebuilt", True)):
        before = sink.accepted()
        baselines[name] = send_seconds(job, baseline_count, POOL_SLOTS, prebuilt)
        _sent_all(sink, before, baseline_count, f"the {name} baseline")

    before = sink.accepted()
    airflow = standalone(folder, database, sink.port, {USER: PASSWORD}, f"{USER}:admin", pool_slots=POOL_SLOTS)
    with airflow as (base_url, log_path):
        client = AirflowClient(base_url, {USER: PASSWORD})
        # A fresh scheduler starts the hourly DAG's latest run at once: let it finish, so the
        # figure is confirm_send's, not start-up's.
        client.wait_idle(USER)
        started, triggered_at = time.perf_counter(), datetime.now(UTC)
        run_id = client.trigger(USER, {"delivery_id": delivery_id})
        # The operator's OK, given as soon as the run asks for it plus the client's settle time
        # (AirflowClient.wait_for_approval), which is the operator's time, not the product's, and
        # is taken out of the figure. An answer Airflow loses (and asks again) counts against us.
        client.wait_for_approval(run_id, USER, settle=0)
        answered = client.approve(run_id, USER, approval.OK)
        answering = APPROVAL_SETTLE_SECONDS
        if answered.status_code != 200:
            raise RuntimeError(f"the benchmark could not answer the approval: {answered.text}")
        run = client.wait_for_run(run_id, USER, timeout=6 * 3600)
        pipeline_seconds = time.perf_counter() - started - answering
        tasks = client.task_instances(run_id, USER)
        chunks = [t["map_index"] for t in tasks if t["task_id"] == "send_chunk"]
        peaks = [client.return_value(run_id, "send_chunk", i, USER).get("peak_rss_mib") for i in chunks]
    if run["state"] != "success":
        raise RuntimeError(f"the benchmark run failed; see {log_path}")
    _sent_all(sink, before, recipients, "confirm_send")

    pipeline_rate = recipients / pipeline_seconds
    measured = f"{pipeline_rate:,.0f} msg/s ({pipeline_seconds:.0f} s)"
    sized = f"{baseline_count:,} messages, " if baseline_count != recipients else ""
    rows = []
    for name, label, target in (
        ("plain", "(a) plain EmailMessage loop", "≥ 4.0"),
        ("prebuilt", "(b) pre-built bytes", "≥ 0.35 (stretch 0.5)"),
    ):
        rate = baseline_count / baselines[name]
        rows.append(
            Ratio(
                f"Send throughput, {recipients:,} recipients, tracking on: confirm_send / {label}, "
                f"{POOL_SLOTS} connections",
                "sqlite", pipeline_rate, rate, measured,
                f"{rate:,.0f} msg/s ({sized}{_seconds(baselines[name])})", target,
            )
        )  # fmt: skip
    # The phase split once, under the first row.
    detail = where_the_time_went(triggered_at, run, tasks)
    if peaks and None not in peaks:
        detail += f"; peak memory of a send_chunk task {min(peaks):.0f}–{max(peaks):.0f} MiB"
    rows[0] = dataclasses.replace(rows[0], detail=detail)
    return rows


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def where_the_time_went(triggered_at: datetime, run: dict, tasks: list[dict]) -> str:
    """The run's wall time split by phase, from the task instances' own start and end times."""

    def at(value: str) -> datetime:
        return datetime.fromisoformat(value)

    chunks = [t for t in tasks if t["task_id"] == "send_chunk"]
    before_send = [
        t for t in tasks if t["task_id"] in ("check_role", "validate", "approve_send", "start_send", "plan_chunks")
    ]
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
        f"{(send_end - send_start).total_seconds():.0f} s of sending ({len(chunks)} chunk{'s' * (len(chunks) != 1)}, "
        f"{in_tasks:.0f} s in send_chunk tasks, {in_tasks / max((send_end - send_start).total_seconds(), 1):.1f} "
        f"running at a time on average), "
        f"{(run_end - send_end).total_seconds():.0f} s from the last chunk to the end of the run "
        f"(aggregate_kpis ran {aggregate['duration']:.1f} s)"
    )
