"""confirm_send end to end with dag.test(): real Airflow, real SMTP server, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from e2e_support import (
    SPEC,
    broad_logs,
    delivery_row,
    kpi_row,
    mails_per_recipient,
    quarantined,
    received,
    run_with_answer,
    seed_delivery,
    task_states,
)
from sqlalchemy import text

from campaign import approval, stats
from campaign.clock import utcnow
from campaign.db import sql
from campaign.rendering import message_id
from campaign.sending import DEFAULT_SOFT_RETRY_DELAYS
from campaign.tokens import tracking_secret


def test_sends_every_target_once_and_kpis_match_the_server(campaign_db, smtp_sink, confirm_send_dag):
    engine = campaign_db.engine
    audience = seed_delivery(engine, good=37, hard=2, soft=1, malformed=1, blocklisted_after_prepare=1)

    run = run_with_answer(confirm_send_dag, {"delivery_id": audience.delivery_id, "chunk_size": 10})[0]

    assert run.state == "success"
    states = task_states(run)
    assert states["send_chunk"] == ["success"] * 5  # 42 targets in chunks of 10

    # What the server got: one personalised mail per good address, nothing else.
    per_recipient = mails_per_recipient(smtp_sink.maildir)
    assert per_recipient == {address: 1 for address in audience.good}
    logs = broad_logs(engine, audience.delivery_id)
    for mail in received(smtp_sink.maildir):
        row = logs[str(mail["To"]).lower()]
        assert (
            mail["Message-ID"]
            == row["message_id"]
            == message_id(tracking_secret(), audience.delivery_id, row["profile_id"], "shop.test")
        )
        number = row["email"].split("@")[0].removeprefix("person")
        text_part = mail.get_body(("plain",)).get_content()
        html_part = mail.get_body(("html",)).get_content()
        assert f"code is {row['profile_id']}" in text_part and "Hello First" in text_part
        assert "<b>First" in html_part
        assert mail["Subject"].startswith("Offer for First")
        assert mail["List-Unsubscribe"] and mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert number.isdigit()

    # Refusals as the server gave them: 550 once per hard address, 451 on every attempt for soft.
    assert dict(smtp_sink.handler.refused) == {
        **{address: 1 for address in audience.hard},
        **{address: 1 + len(DEFAULT_SOFT_RETRY_DELAYS) for address in audience.soft},
    }

    # Sending logs mirror it, one row per target.
    assert len(logs) == audience.size
    assert {logs[a]["status"] for a in audience.good} == {"sent"}
    assert {(logs[a]["status"], logs[a]["failure_type"], logs[a]["smtp_code"]) for a in audience.hard} == {
        ("bounced", "hard", 550)
    }
    assert {(logs[a]["status"], logs[a]["failure_type"], logs[a]["smtp_code"]) for a in audience.soft} == {
        ("bounced", "soft", 451)
    }
    # The reason names the enhanced status that qualified the refusal (the Deployment view shows it).
    assert {logs[a]["reason"] for a in audience.hard} == {"recipient refused 5.1.1"}
    assert {logs[a]["reason"] for a in audience.soft} == {"temporary failure, retries exhausted 4.3.0"}
    assert {(logs[a]["status"], logs[a]["reason"]) for a in audience.malformed} == {("failed", "malformed address")}
    assert {logs[a]["status"] for a in audience.ignored} == {"ignored"}
    assert quarantined(engine, audience.hard + audience.soft) == set(audience.hard)

    # KPIs computed from the logs agree with what the server received.
    kpis = kpi_row(engine, audience.delivery_id)
    delivered = sum(per_recipient.values())
    processed = audience.size - len(audience.ignored)
    assert kpis["to_deliver"] == audience.size
    assert kpis["delivered"] == delivered == len(audience.good)
    assert kpis["bounces_errors"] == len(audience.hard) + len(audience.soft) + len(audience.malformed)
    assert (kpis["hard_bounces"], kpis["soft_bounces"], kpis["errors"]) == (2, 1, 1)
    assert kpis["ignored"] == 1
    assert kpis["processed"] == processed
    assert kpis["delivered_rate"] == pytest.approx(delivered / processed)
    assert kpis["bounce_error_rate"] == pytest.approx(4 / processed)
    assert kpis["unique_opens"] == 0 and kpis["open_rate"] == 0.0

    delivery = delivery_row(engine, audience.delivery_id)
    assert delivery["status"] == "sent"
    assert delivery["confirmed_by"] == "dag_test"
    assert delivery["run_id"] == run.run_id


def test_opens_recorded_during_the_send_are_in_its_final_kpis(
    campaign_db, smtp_sink, confirm_send_dag, caplog, monkeypatch
):
    """A user's find: the KPI table and the Deployment view read a 0.00 % open rate right after a
    send with thousands of opens recorded. aggregate_kpis folds the pending events first, up to
    CAMPAIGN_TRACKING_LAG_SECONDS; the younger ones are the hourly run's, counted once there."""
    monkeypatch.setenv("CAMPAIGN_TRACKING_LAG_SECONDS", "600")
    engine = campaign_db.engine
    audience = seed_delivery(engine, good=5, hard=1)
    with engine.begin() as conn:
        ids = dict(conn.execute(text("SELECT email, id FROM profiles")).all())
    now = utcnow()
    events = [(a, "open", now - timedelta(hours=1)) for a in audience.good[:3] + audience.hard]
    events += [(audience.good[0], "click", now - timedelta(hours=1)), (audience.good[3], "open", now)]
    with engine.begin() as conn:
        for address, event_type, at in events:
            conn.execute(
                sql("insert_tracking_event"),
                {
                    "delivery_id": audience.delivery_id, "profile_id": ids[address], "event_type": event_type,
                    "link_id": None, "user_agent": "Mozilla/5.0", "event_at": at,
                },
            )  # fmt: skip

    run = run_with_answer(confirm_send_dag, {"delivery_id": audience.delivery_id})[0]

    assert run.state == "success"
    kpis = kpi_row(engine, audience.delivery_id)
    # The hard bounce's open is not counted (delivered recipients only); the newest waits.
    assert (kpis["delivered"], kpis["unique_opens"], kpis["unique_clicks"], kpis["clicks"]) == (5, 3, 1, 1)
    assert kpis["open_rate"] == pytest.approx(3 / 5)
    assert "5 pending tracking events folded first" in caplog.text
    assert "unique opens        |     3 |  60.00%" in caplog.text

    assert stats.fold_new_events(engine, lag_seconds=0).events == 1  # the hourly run, later
    after = kpi_row(engine, audience.delivery_id)
    assert (after["unique_opens"], after["unique_clicks"], after["clicks"]) == (4, 1, 1)
    assert stats.recompute_delivery(engine, audience.delivery_id).engagement_mismatch is None


def test_cancel_sends_nothing_and_the_delivery_can_be_confirmed_again(campaign_db, smtp_sink, confirm_send_dag, caplog):
    engine = campaign_db.engine
    audience = seed_delivery(engine, good=4)

    cancelled, answers = run_with_answer(confirm_send_dag, {"delivery_id": audience.delivery_id}, approval.CANCEL)

    assert answers == [("dag_test", "Cancel", None)]
    states = task_states(cancelled)
    assert states["approve_send"] == ["success"], "an answer is not a failure"
    assert {task: states[task] for task in ("start_send", "plan_chunks", "send_chunk", "aggregate_kpis")} == {
        "start_send": ["skipped"],
        "plan_chunks": ["skipped"],
        "send_chunk": ["skipped"],
        "aggregate_kpis": ["skipped"],
    }
    assert cancelled.state == "success"
    assert received(smtp_sink.maildir) == [] and broad_logs(engine, audience.delivery_id) == {}
    assert delivery_row(engine, audience.delivery_id)["status"] == "ready"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("approve_send: Cancelled by")]
    assert len(lines) == 1 and lines[0].endswith(
        f"Nothing was sent; delivery {audience.delivery_id} stays ready and can be confirmed again."
    )
    assert "Traceback" not in caplog.text
    trail = [(row["action"], row["actor"]) for row in approval.audit_trail(engine, audience.delivery_id)]
    assert trail == [("approval_asked", "dag_test"), ("cancelled", "dag_test")]

    confirmed, _ = run_with_answer(confirm_send_dag, {"delivery_id": audience.delivery_id})

    assert confirmed.state == "success"
    assert mails_per_recipient(smtp_sink.maildir) == {address: 1 for address in audience.good}
    assert delivery_row(engine, audience.delivery_id)["confirmed_by"] == "dag_test"


def test_second_trigger_for_a_sent_delivery_is_refused(campaign_db, smtp_sink, confirm_send_dag, caplog):
    engine = campaign_db.engine
    audience = seed_delivery(engine, good=5)
    first = run_with_answer(confirm_send_dag, {"delivery_id": audience.delivery_id})[0]
    assert first.state == "success"

    second = run_with_answer(confirm_send_dag, {"delivery_id": audience.delivery_id})[0]

    assert second.state == "failed"
    states = task_states(second)
    assert states["validate"] == ["failed"] and states["validate#tries"] == ["1"]
    assert states["send_chunk"] == ["upstream_failed"]
    assert states["aggregate_kpis"] == ["failed"]
    assert f"already sent by run '{first.run_id}'" in caplog.text
    assert sum(mails_per_recipient(smtp_sink.maildir).values()) == 5
    assert delivery_row(engine, audience.delivery_id)["run_id"] == first.run_id


BAD_INPUTS = {
    "unknown delivery": ({"delivery_id": 999_999}, "Delivery 999999 does not exist"),
    "not approved": (None, "its status is draft, not ready"),
    "undefined variable": (None, "uses an undefined variable: 'dict object' has no attribute 'nickname'"),
    "empty target": (None, "has an empty target"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_a_message_and_nothing_is_sent(
    case, campaign_db, smtp_sink, confirm_send_dag, caplog
):
    engine = campaign_db.engine
    conf, message = BAD_INPUTS[case]
    if case == "empty target":
        audience = seed_delivery(engine, good=0)
    elif case == "not approved":
        audience = seed_delivery(engine, good=3, approve=False)
    elif case == "undefined variable":
        audience = seed_delivery(engine, good=3, spec={**SPEC, "text": "Hi {{ profile.nickname }}"})
    else:
        audience = seed_delivery(engine, good=3)
    conf = conf or {"delivery_id": audience.delivery_id}
    status_before = delivery_row(engine, audience.delivery_id)["status"]

    run, answers = run_with_answer(confirm_send_dag, conf)

    assert run.state == "failed"
    states = task_states(run)
    assert states["validate"] == ["failed"]
    assert states["validate#tries"] == ["1"], "a permanent refusal must not be retried"
    assert states["approve_send"] == ["upstream_failed"] and answers == [], "refused before the approval is shown"
    assert states["aggregate_kpis"] == ["failed"], "the run must show red"
    assert message in caplog.text
    assert received(smtp_sink.maildir) == []
    assert broad_logs(engine, audience.delivery_id) == {}
    assert delivery_row(engine, audience.delivery_id)["status"] == status_before


def test_smtp_server_down_retries_the_chunk_and_marks_nobody(campaign_db, smtp_sink, confirm_send_dag, caplog):
    engine = campaign_db.engine
    audience = seed_delivery(engine, good=6)
    smtp_sink.stop()

    run = run_with_answer(confirm_send_dag, {"delivery_id": audience.delivery_id})[0]

    assert run.state == "failed"
    states = task_states(run)
    assert states["send_chunk"] == ["failed"]
    assert states["send_chunk#tries"] == ["4"], "3 retries for an unreachable server"
    assert "Cannot connect to the SMTP server of Connection 'campaign_smtp'" in caplog.text
    assert broad_logs(engine, audience.delivery_id) == {}
    assert delivery_row(engine, audience.delivery_id)["status"] == "failed"
    kpis = kpi_row(engine, audience.delivery_id)
    assert (kpis["processed"], kpis["delivered_rate"]) == (0, None), "zero processed gives NULL rates"


def test_connection_lost_mid_chunk_resumes_without_duplicates(campaign_db, smtp_sink, confirm_send_dag):
    """The server drops the connection after 7 accepted mails; the chunk reconnects by itself (no
    task retry) and sends only the rest."""
    engine = campaign_db.engine
    audience = seed_delivery(engine, good=20)
    handler = smtp_sink.handler
    dropped = []
    original_rcpt = handler.handle_RCPT

    async def drop_once_after_seven(server, session, envelope, address, options):
        if not dropped and sum(handler.accepted.values()) >= 7:
            dropped.append(address)
            server.transport.close()
            return "421 4.3.2 Service shutting down"
        return await original_rcpt(server, session, envelope, address, options)

    handler.handle_RCPT = drop_once_after_seven

    run = run_with_answer(confirm_send_dag, {"delivery_id": audience.delivery_id})[0]

    assert dropped, "the server never dropped the connection"
    assert run.state == "success"
    assert task_states(run)["send_chunk#tries"] == ["1"]
    assert mails_per_recipient(smtp_sink.maildir) == {address: 1 for address in audience.good}
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :d"), {"d": audience.delivery_id})
        assert rows.scalar_one() == 20
    assert kpi_row(engine, audience.delivery_id)["delivered"] == 20
