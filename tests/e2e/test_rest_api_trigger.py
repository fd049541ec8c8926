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

from campaign import approval, operators
from campaign.dev.play_recipients import tracked_urls
from campaign.sending import DEFAULT_COMMIT_EVERY

pytestmark = pytest.mark.airflow_server


def _accepted(live_airflow) -> int:
    return sum(live_airflow.sink.accepted.values())


def test_operator_without_the_role_is_refused_before_any_approval(live_airflow):
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=12)
    operators.create_operator(engine, "bob")
    accepted_before = _accepted(live_airflow)

    run_id = live_airflow.trigger("bob", {"delivery_id": audience.delivery_id})
    run = live_airflow.wait_for_run(run_id, "bob")

    assert run["state"] == "failed"
    assert run["triggering_user_name"] == "bob"
    tis = live_airflow.task_instances(run_id)
    assert tis["check_role[-1]"]["state"] == "failed"
    assert tis["check_role[-1]"]["try_number"] == 1, "a refused role is not retried"
    assert tis["approve_send[-1]"]["state"] == "upstream_failed", "nobody is asked to approve"
    log = live_airflow.task_log(run_id, "check_role", 1)
    assert "User 'bob' is not allowed to confirm this send" in log
    assert "Start deliveries role" in log
    assert _accepted(live_airflow) == accepted_before
    assert delivery_row(engine, audience.delivery_id)["status"] == "ready"
    assert broad_logs(engine, audience.delivery_id) == {}
    trail = [(r["action"], r["actor"], r["run_id"]) for r in approval.audit_trail(engine, audience.delivery_id)]
    assert trail == [("role_refused", "bob", run_id)], "who tried to send what"


def test_only_the_operator_who_started_the_run_can_answer_ok(live_airflow):
    """alice triggers; the run waits; bob, an Airflow admin without the role, cannot answer; nothing
    is sent until alice answers OK; then every recipient gets the mail once."""
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=30, hard=1)
    accepted_before = _accepted(live_airflow)

    # With a rate limit of 36,000 an hour (10 a second) for this send, from the trigger form.
    conf = {"delivery_id": audience.delivery_id, "chunk_size": 10, "max_rate": 36_000}
    run_id = live_airflow.trigger("alice", conf)
    asked = live_airflow.wait_for_approval(run_id, "alice")

    assert asked["subject"] == f"Send delivery {audience.delivery_id} 'E2E delivery' to 31 recipients?"
    for shown in ("| Subject (first recipient) | Offer for First0 |", "| Will be sent to | **31 recipients** |",
                  "| Chunks | 4 of up to 10 recipients |", "| Rate limit | 36,000 messages an hour |",
                  f"/campaign-deployment/deliveries/{audience.delivery_id})"):  # fmt: skip
        assert shown in asked["body"], shown
    assert asked["options"] == ["OK, send definitively", "Cancel"]
    assert [user["name"] for user in asked["assigned_users"]] == ["alice"]

    refused = live_airflow.answer(run_id, "bob", approval.OK)
    assert refused.status_code == 403, refused.text
    assert "not a respondent" in refused.text
    assert live_airflow.wait_for_approval(run_id, "alice")["response_received"] is False
    assert _accepted(live_airflow) == accepted_before, "nothing is sent before alice answers"
    assert delivery_row(engine, audience.delivery_id)["status"] == "ready"

    answered = live_airflow.approve(run_id, "alice", approval.OK)
    assert answered.status_code == 200, answered.text
    assert answered.json()["responded_by"]["name"] == "alice"
    run = live_airflow.wait_for_run(run_id)

    assert run["state"] == "success", live_airflow.log_path.read_text()[-3000:]
    received = mails_per_recipient(live_airflow.maildir)
    assert {address: received[address] for address in audience.good} == {address: 1 for address in audience.good}
    delivery = delivery_row(engine, audience.delivery_id)
    assert (delivery["status"], delivery["confirmed_by"], delivery["run_id"]) == ("sent", "alice", run_id)
    assert delivery["max_rate"] == 36_000
    assert "rate limit 36,000/h for the delivery" in live_airflow.task_log(run_id, "send_chunk", 1, map_index=0)
    kpis = kpi_row(engine, audience.delivery_id)
    assert (kpis["to_deliver"], kpis["delivered"], kpis["hard_bounces"]) == (31, 30, 1)
    trail = [(row["action"], row["actor"]) for row in approval.audit_trail(engine, audience.delivery_id)]
    # (more than one question only if Airflow lost an answer and asked again, see AirflowClient.approve)
    assert trail[0] == ("approval_asked", "alice") and trail[-1] == ("confirmed", "alice")
    assert set(trail[:-1]) == {("approval_asked", "alice")}


def test_cancel_and_timeout_send_nothing_and_a_later_confirmation_sends(live_airflow):
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=5)
    accepted_before = _accepted(live_airflow)

    cancelled = live_airflow.trigger("alice", {"delivery_id": audience.delivery_id})
    assert live_airflow.approve(cancelled, "alice", approval.CANCEL).status_code == 200
    timed_out = live_airflow.trigger("alice", {"delivery_id": audience.delivery_id, "confirm_timeout": 2})

    for run_id, line in (
        (cancelled, "approve_send: Cancelled by alice at "),
        (timed_out, "approve_send: No answer within 2 s"),
    ):
        run = live_airflow.wait_for_run(run_id)
        assert run["state"] == "success", "an answer, or its absence, is not a failure"
        tis = live_airflow.task_instances(run_id)
        assert {name: ti["state"] for name, ti in tis.items()} == {
            "check_role[-1]": "success", "validate[-1]": "success", "approve_send[-1]": "success",
            "start_send[-1]": "skipped", "plan_chunks[-1]": "skipped", "send_chunk[-1]": "skipped",
            "aggregate_kpis[-1]": "skipped",
        }  # fmt: skip
        log = live_airflow.task_log(run_id, "approve_send", 1)
        assert line in log and f"delivery {audience.delivery_id} stays ready" in log
        assert "Traceback" not in log
    assert _accepted(live_airflow) == accepted_before
    assert delivery_row(engine, audience.delivery_id)["status"] == "ready"
    trail = [(row["action"], row["actor"], row["run_id"]) for row in approval.audit_trail(engine, audience.delivery_id)]
    assert ("cancelled", "alice", cancelled) in trail and ("timed_out", None, timed_out) in trail

    run_id, run = live_airflow.confirmed_run("alice", {"delivery_id": audience.delivery_id})

    assert run["state"] == "success"
    assert _accepted(live_airflow) == accepted_before + len(audience.good)


def test_of_two_runs_waiting_for_one_delivery_only_the_first_ok_sends(live_airflow):
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=6)
    accepted_before = _accepted(live_airflow)
    first = live_airflow.trigger("alice", {"delivery_id": audience.delivery_id})
    second = live_airflow.trigger("alice", {"delivery_id": audience.delivery_id})
    live_airflow.wait_for_approval(first, "alice")
    live_airflow.wait_for_approval(second, "alice")

    assert live_airflow.approve(first, "alice", approval.OK).status_code == 200
    assert live_airflow.wait_for_run(first)["state"] == "success"
    assert live_airflow.approve(second, "alice", approval.OK).status_code == 200
    refused = live_airflow.wait_for_run(second)

    assert refused["state"] == "failed"
    tis = live_airflow.task_instances(second)
    assert tis["approve_send[-1]"]["state"] == "failed" and tis["approve_send[-1]"]["try_number"] == 1
    assert tis["start_send[-1]"]["state"] == "upstream_failed"
    log = live_airflow.task_log(second, "approve_send", 1)
    assert f"delivery {audience.delivery_id} is sent by run '{first}', confirmed by alice, not ready any more" in log
    assert _accepted(live_airflow) == accepted_before + len(audience.good)
    assert delivery_row(engine, audience.delivery_id)["run_id"] == first


def test_an_approval_marked_success_by_an_admin_sends_nothing(live_airflow):
    """bob cannot answer, but as an Airflow admin he can set the approval task's state by hand:
    start_send finds no recorded OK and refuses; nothing is sent and the run says why."""
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=4)
    accepted_before = _accepted(live_airflow)
    run_id = live_airflow.trigger("alice", {"delivery_id": audience.delivery_id})
    live_airflow.wait_for_approval(run_id, "alice")

    forced = live_airflow.api(
        "PATCH", f"/dags/confirm_send/dagRuns/{run_id}/taskInstances/approve_send", "bob",
        json={"new_state": "success"},
    )  # fmt: skip
    assert forced.status_code == 200, forced.text
    run = live_airflow.wait_for_run(run_id)

    assert run["state"] == "failed"
    tis = live_airflow.task_instances(run_id)
    assert tis["start_send[-1]"]["state"] == "failed" and tis["start_send[-1]"]["try_number"] == 1
    log = live_airflow.task_log(run_id, "start_send", 1)
    assert "No 'OK, send definitively' stands" in log and "marked success by hand" in log
    assert _accepted(live_airflow) == accepted_before
    assert delivery_row(engine, audience.delivery_id)["status"] == "ready"


def test_the_api_server_serves_the_tracking_endpoints(live_airflow):
    """The plugin is loaded by the real API server: a mail's pixel and link answer there, without login."""
    engine = live_airflow.engine
    spec = {**SPEC, "html": '<html><body><a href="https://shop.test/x">x</a></body></html>'}
    audience = fresh_delivery(engine, good=3, spec=spec)
    _, run = live_airflow.confirmed_run("alice", {"delivery_id": audience.delivery_id})
    assert run["state"] == "success"
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
        run_id, run = live_airflow.confirmed_run("alice", {"delivery_id": audience.delivery_id, "chunk_size": 400})
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
