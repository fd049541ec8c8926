"""Pause, resume, stop, the rate limit and the automatic brake under a real Airflow scheduler.

Airflow's components run as separate processes (API server, scheduler with the LocalExecutor,
DAG processor; ``campaign.dev.airflow_harness.airflow_processes``) so that the scheduler can be
restarted while a delivery is paused. Airflow's metadata and the campaign database are on a real
PostgreSQL server; the relay is a real SMTP server on loopback that refuses every recipient at
``@refusing.test`` (550 5.1.1).
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from testsupport import free_port, wait_for

from campaign import approval, controls, deliveries, operators
from campaign.clock import as_datetime, utcnow
from campaign.db import make_engine
from campaign.dev.airflow_harness import airflow_processes
from campaign.dev.smtp import Rule, Stage, start_server
from campaign.schema import ROLE_START_DELIVERIES, create_schema, profiles

pytestmark = [pytest.mark.airflow_server, pytest.mark.postgres]

PASSWORD = "alice-pw-controls"
POOL_SLOTS = 4
# A paused chunk sleeps at least this long between looks (CAMPAIGN_PAUSE_RECHECK_SECONDS), longer
# than the test watches the pool, so that what it sees is the pause and not a chunk's brief look.
RECHECK = "30,60"
SPEC = {
    "label": "Controls",
    "sender": "Shop <news@shop.test>",
    "subject": "Hello {{ profile.email }}",
    "text": "Hello {{ profile.email }}",
    "html": "<p>Hello {{ profile.email }}</p>",
}
_batch = itertools.count(1)


@pytest.fixture(scope="module")
def controlled(postgres_server):
    """(processes, client, engine, relay handler) of one Airflow for the module."""
    folder = Path(tempfile.mkdtemp(prefix="campaign-controls-"))
    metadata_url = postgres_server.create_database("airflow_controls")
    campaign_url = postgres_server.create_database("campaign_controls")
    engine = make_engine(campaign_url)
    create_schema(engine)
    operators.create_operator(engine, "alice")
    operators.grant_role(engine, "alice", ROLE_START_DELIVERIES)
    rules = [Rule(Stage.RCPT, 550, pattern="*@refusing.test", text="5.1.1 User unknown")]
    smtp_port = free_port()
    controller, relay = start_server(folder / "maildir", port=smtp_port, rules=rules)
    connection = {
        "conn_type": "postgres",
        "host": postgres_server.host,
        "port": postgres_server.port,
        "schema": "campaign_controls",
        "login": postgres_server.user,
    }
    extra = {"CAMPAIGN_RETRY_DELAY_SECONDS": "1", "CAMPAIGN_PAUSE_RECHECK_SECONDS": RECHECK}
    try:
        with airflow_processes(
            folder, metadata_url, connection, smtp_port, {"alice": PASSWORD}, "alice:admin", POOL_SLOTS, extra
        ) as (processes, client):
            yield processes, client, engine, relay
    finally:
        controller.stop()
        engine.dispose()


def _ready_delivery(engine, good: int, refusing: int = 0, **spec) -> tuple[int, list[str]]:
    """A ready delivery to ``good`` addresses the relay accepts and ``refusing`` it refuses,
    interleaved (3 refused in every 5 when they are 60 %); returns its id and every address."""
    batch = next(_batch)
    total = good + refusing
    refused_slots = set(round(i * total / refusing) for i in range(refusing)) if refusing else set()
    addresses = [
        f"r{batch}-{i}@refusing.test" if i in refused_slots else f"p{batch}-{i}@example.test" for i in range(total)
    ]
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(text("UPDATE profiles SET blocklisted = TRUE"))  # earlier tests' audiences
        conn.execute(profiles.insert(), [{"email": a, "blocklisted": False, "created_at": now} for a in addresses])
    delivery_id = deliveries.create_delivery(engine, {**SPEC, **spec})
    deliveries.prepare_delivery(engine, delivery_id, "preparer")
    deliveries.approve_delivery(engine, delivery_id, "approver")
    return delivery_id, addresses


def _start(client, delivery_id: int, **conf) -> str:
    run_id = client.trigger("alice", {"delivery_id": delivery_id, **conf})
    answered = client.approve(run_id, "alice", approval.OK)
    assert answered.status_code == 200, answered.text
    return run_id


def _status(engine, delivery_id: int) -> str:
    with engine.begin() as conn:
        return conn.execute(text("SELECT status FROM deliveries WHERE id = :d"), {"d": delivery_id}).scalar_one()


def _logged(engine, delivery_id: int) -> dict[str, int]:
    with engine.begin() as conn:
        rows = conn.execute(
            text("SELECT status, COUNT(*) FROM broad_logs WHERE delivery_id = :d GROUP BY status"), {"d": delivery_id}
        )
        return dict(rows.all())


def _accepted(relay, addresses: list[str]) -> int:
    return sum(relay.accepted.get(address, 0) for address in addresses)


def relay_counts(relay, addresses: list[str]) -> set[int]:
    """How many times the relay accepted each address: {1} when everyone got exactly one."""
    return {relay.accepted.get(address, 0) for address in addresses}


def _chunk_states(client, run_id: str) -> list[str]:
    return [t["state"] for t in client.task_instances(run_id, "alice") if t["task_id"] == "send_chunk"]


def _pool(client) -> dict:
    return client.api("GET", "/pools/campaign_smtp", "alice").json()


def _held_in_no_slot(client, run_id: str) -> dict | None:
    """The pool when no chunk of the run runs or waits in a slot, every one rescheduled or not
    started; None otherwise."""
    pool = _pool(client)
    states = _chunk_states(client, run_id)
    idle = pool["running_slots"] == 0 and pool["queued_slots"] == 0
    return pool if idle and states and set(states) <= {"up_for_reschedule", "scheduled", None} else None


def test_pause_frees_every_slot_survives_a_scheduler_restart_and_resume_serves_everyone_once(controlled):
    processes, client, engine, relay = controlled
    delivery_id, addresses = _ready_delivery(engine, good=5_000)
    # 200 messages a second for the whole send: it lasts long enough to pause it in the middle.
    run_id = _start(client, delivery_id, chunk_size=500, max_rate=720_000)
    wait_for(lambda: _accepted(relay, addresses) >= 500, 180, 0.2, "500 messages at the relay")

    controls.pause(engine, delivery_id, "alice", "relay maintenance")
    paused_at = time.monotonic()
    pool = wait_for(lambda: _held_in_no_slot(client, run_id), 60, 0.5, "every chunk to give its slot back")
    held_after = time.monotonic() - paused_at
    assert held_after < 15, f"sending went on for {held_after:.1f}s after the pause"
    assert pool["open_slots"] == POOL_SLOTS
    sent_while_paused = _accepted(relay, addresses)
    assert _logged(engine, delivery_id) == {"sent": sent_while_paused}, "every accepted message is on the log"
    assert sent_while_paused < 5_000

    # The scheduler goes away and comes back while the delivery is paused.
    processes.stop("scheduler")
    processes.start("scheduler")
    processes.wait_healthy(client, "alice")
    time.sleep(3)
    assert _accepted(relay, addresses) == sent_while_paused, "nothing is sent while paused"
    assert _status(engine, delivery_id) == "paused"

    controls.resume(engine, delivery_id, "alice")
    run = client.wait_for_run(run_id, "alice", timeout=600)

    assert run["state"] == "success"
    assert relay_counts(relay, addresses) == {1}, "everyone exactly once"
    assert _status(engine, delivery_id) == "sent"
    assert _logged(engine, delivery_id) == {"sent": 5_000}
    trail = [(r["action"], r["actor"]) for r in approval.audit_trail(engine, delivery_id)]
    assert trail[-2:] == [("paused", "alice"), ("resumed", "alice")]
    held = [t for t in client.task_instances(run_id, "alice") if t["task_id"] == "send_chunk" and t["try_number"] == 1]
    assert len(held) == 10, "a pause is not a failure: no chunk used a retry"


def test_stop_cancels_the_rest_and_the_run_ends_without_red_tasks(controlled):
    _, client, engine, relay = controlled
    delivery_id, addresses = _ready_delivery(engine, good=2_000)
    run_id = _start(client, delivery_id, chunk_size=500, max_rate=360_000)
    wait_for(lambda: _accepted(relay, addresses) >= 200, 180, 0.2, "200 messages at the relay")

    controls.stop(engine, delivery_id, "alice", "wrong price")
    run = client.wait_for_run(run_id, "alice", timeout=300)

    assert run["state"] == "success"
    states = {t["state"] for t in client.task_instances(run_id, "alice")}
    assert states <= {"success", "skipped"}, states
    sent = _accepted(relay, addresses)
    assert _logged(engine, delivery_id) == {"sent": sent, "cancelled": 2_000 - sent}
    assert relay_counts(relay, addresses) <= {0, 1}
    assert _status(engine, delivery_id) == "stopped"
    with engine.begin() as conn:
        kpis = conn.execute(text("SELECT * FROM delivery_kpis WHERE delivery_id = :d"), {"d": delivery_id}).mappings()
        kpis = kpis.one()
    assert (kpis["processed"], kpis["delivered"], kpis["cancelled"], kpis["to_deliver"]) == (
        sent, sent, 2_000 - sent, 2_000,
    )  # fmt: skip
    log = client.api(
        "GET",
        f"/dags/confirm_send/dagRuns/{run_id}/taskInstances/aggregate_kpis/logs/1",
        "alice",
        headers={"Accept": "application/json"},
    ).text
    assert f"is stopped (stopped: {2_000 - sent:,} recipients cancelled)" in log


def test_the_rate_limit_holds_across_chunks_within_ten_percent(controlled):
    _, client, engine, relay = controlled
    delivery_id, addresses = _ready_delivery(engine, good=300)
    # 30 a second over four chunks together: about ten seconds for 300 messages.
    run_id = _start(client, delivery_id, chunk_size=75, max_rate=108_000)
    run = client.wait_for_run(run_id, "alice", timeout=300)

    assert run["state"] == "success"
    with engine.begin() as conn:
        first, last = conn.execute(
            text("SELECT MIN(logged_at), MAX(logged_at) FROM broad_logs WHERE delivery_id = :d"), {"d": delivery_id}
        ).one()
    seconds = (as_datetime(last) - as_datetime(first)).total_seconds()
    rate = (300 - 1) / seconds  # 299 intervals between the first and the last message
    assert 27.0 <= rate <= 33.0, f"{rate:.1f} messages a second for a limit of 30"


def test_a_relay_refusing_60_percent_pauses_the_delivery_by_itself(controlled):
    _, client, engine, relay = controlled
    delivery_id, addresses = _ready_delivery(engine, good=800, refusing=1_200)
    run_id = _start(client, delivery_id, chunk_size=500)

    wait_for(lambda: _status(engine, delivery_id) == "paused", 180, 0.5, "the automatic pause")
    trail = approval.audit_trail(engine, delivery_id)
    brake = [row for row in trail if row["action"] == "auto_paused"]
    assert len(brake) == 1 and brake[0]["actor"] is None
    assert brake[0]["detail"].startswith("automatic brake: ")
    assert "processed messages bounced or failed" in brake[0]["detail"]
    assert "> 30 %, window 500)" in brake[0]["detail"]
    wait_for(lambda: _held_in_no_slot(client, run_id), 60, 0.5, "every chunk to give its slot back")
    processed = sum(_logged(engine, delivery_id).values())
    assert processed < 2_000, "the brake stopped the send before the end"

    # The operator stops what the brake paused: the run ends, the rest cancelled.
    controls.stop(engine, delivery_id, "alice", "bad list")
    run = client.wait_for_run(run_id, "alice", timeout=300)
    assert run["state"] == "success"
    assert _status(engine, delivery_id) == "stopped"
    logged = _logged(engine, delivery_id)
    assert logged["cancelled"] == 2_000 - processed
    logs = "".join(
        client.api(
            "GET",
            f"/dags/confirm_send/dagRuns/{run_id}/taskInstances/send_chunk/logs/1",
            "alice",
            headers={"Accept": "application/json"},
            params={"map_index": index},
        ).text
        for index in range(4)
    )
    assert "paused itself: automatic brake" in logs
