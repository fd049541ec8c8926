"""confirm_send triggered through the REST API of a running Airflow, as real authenticated users.

dag.test() always runs as 'dag_test'; only a real API server records who triggered the run, so
the role check and the crash-recovery bound are tested here against `airflow standalone`
(API server, scheduler, DAG processor, LocalExecutor), a real SMTP server and a SQLite database
(the `live_airflow` fixture of tests/e2e/conftest.py).
"""

from __future__ import annotations

import os
import signal
import threading

import psutil
import pytest
from e2e_support import (
    SPEC,
    broad_logs,
    delivery_row,
    fresh_delivery,
    kpi_row,
    mails_per_recipient,
    received,
)
from sqlalchemy import text

from campaign import operators
from campaign.dev.play_recipients import tracked_urls
from campaign.sending import DEFAULT_COMMIT_EVERY

pytestmark = pytest.mark.airflow_server


def test_operator_without_the_role_is_refused_and_nothing_is_sent(live_airflow):
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=12)
    operators.create_operator(engine, "bob")
    accepted_before = sum(live_airflow.sink.accepted.values())

    run_id = live_airflow.trigger("bob", {"delivery_id": audience.delivery_id, "confirm": True})
    run = live_airflow.wait_for_run(run_id, "bob")

    assert run["state"] == "failed"
    assert run["triggering_user_name"] == "bob"
    tis = live_airflow.task_instances(run_id)
    assert tis["check_role[-1]"]["state"] == "failed"
    assert tis["check_role[-1]"]["try_number"] == 1, "a refused role is not retried"
    log = live_airflow.task_log(run_id, "check_role", 1)
    assert "User 'bob' is not allowed to confirm this send" in log
    assert "Start deliveries role" in log
    assert sum(live_airflow.sink.accepted.values()) == accepted_before
    assert delivery_row(engine, audience.delivery_id)["status"] == "ready"
    assert broad_logs(engine, audience.delivery_id) == {}


def test_operator_with_the_role_sends(live_airflow):
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=30, hard=1)

    run_id = live_airflow.trigger("alice", {"delivery_id": audience.delivery_id, "confirm": True, "chunk_size": 10})
    run = live_airflow.wait_for_run(run_id)

    assert run["state"] == "success", live_airflow.log_path.read_text()[-3000:]
    received = mails_per_recipient(live_airflow.maildir)
    assert {address: received[address] for address in audience.good} == {address: 1 for address in audience.good}
    delivery = delivery_row(engine, audience.delivery_id)
    assert (delivery["status"], delivery["confirmed_by"], delivery["run_id"]) == ("sent", "alice", run_id)
    kpis = kpi_row(engine, audience.delivery_id)
    assert (kpis["to_deliver"], kpis["delivered"], kpis["hard_bounces"]) == (31, 30, 1)


def test_the_api_server_serves_the_tracking_endpoints(live_airflow):
    """The plugin is loaded by the real API server: a mail's pixel and link answer there, without login."""
    engine = live_airflow.engine
    spec = {**SPEC, "html": '<html><body><a href="https://shop.test/x">x</a></body></html>'}
    audience = fresh_delivery(engine, good=3, spec=spec)
    run_id = live_airflow.trigger("alice", {"delivery_id": audience.delivery_id, "confirm": True})
    assert live_airflow.wait_for_run(run_id)["state"] == "success"
    mail = next(m for m in received(live_airflow.maildir) if m["X-Campaign-Delivery"] == str(audience.delivery_id))
    pixel, links = tracked_urls(mail.as_bytes())
    assert pixel.startswith(live_airflow.base_url + "/campaign/o/")

    assert live_airflow.http.get(pixel).headers["content-type"] == "image/gif"
    click = live_airflow.http.get(links[0], follow_redirects=False)
    assert (click.status_code, click.headers["location"]) == (302, "https://shop.test/x")
    assert live_airflow.http.get(pixel[:-3] + "000").status_code == 404
    with engine.begin() as conn:
        events = conn.execute(
            text("SELECT event_type, COUNT(*) FROM tracking_logs WHERE delivery_id = :d GROUP BY event_type"),
            {"d": audience.delivery_id},
        ).all()
    assert dict(events) == {"open": 1, "click": 1}


def test_worker_killed_mid_chunk_is_retried_within_the_duplicate_bound(live_airflow):
    """SIGKILL the task process after 150 accepted mails of a 400-recipient chunk; the scheduler
    retries it and the retry skips everyone already logged."""
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=400)
    targets = set(audience.good)
    killed: list[int] = []
    lock = threading.Lock()
    accepted_before = dict(live_airflow.sink.accepted)

    def kill_sender_after_150(_total: int, peer: tuple) -> None:
        with lock:
            ours = sum(
                count - accepted_before.get(address, 0)
                for address, count in live_airflow.sink.accepted.items()
                if address in targets
            )
            if killed or ours < 150:
                return
            for connection in psutil.net_connections(kind="tcp"):
                if connection.laddr and tuple(connection.laddr)[:2] == tuple(peer)[:2] and connection.pid:
                    os.kill(connection.pid, signal.SIGKILL)
                    killed.append(connection.pid)
                    return

    live_airflow.sink.on_message = kill_sender_after_150
    try:
        run_id = live_airflow.trigger(
            "alice", {"delivery_id": audience.delivery_id, "confirm": True, "chunk_size": 400}
        )
        run = live_airflow.wait_for_run(run_id)
    finally:
        live_airflow.sink.on_message = None

    assert killed, "the sending process was never killed"
    assert run["state"] == "success", live_airflow.log_path.read_text()[-3000:]
    assert live_airflow.task_instances(run_id)["send_chunk[0]"]["try_number"] == 2
    received = mails_per_recipient(live_airflow.maildir)
    copies = {address: received[address] for address in targets}
    assert min(copies.values()) == 1, "every recipient got the mail"
    duplicates = sum(copies.values()) - len(targets)
    assert duplicates <= DEFAULT_COMMIT_EVERY, f"{duplicates} duplicates exceed the documented bound"
    logs = broad_logs(engine, audience.delivery_id)
    assert len(logs) == 400 and {row["status"] for row in logs.values()} == {"sent"}
    assert kpi_row(engine, audience.delivery_id)["delivered"] == len(targets)
    print(f"worker killed after 150 mails: {duplicates} duplicate mails (bound {DEFAULT_COMMIT_EVERY})")
