"""process_bounces end to end with dag.test(): a real send with VERP return paths through a real
SMTP server, DSNs and feedback reports for those very messages in a real Dovecot, the DAG run,
then the sending logs, profiles, KPIs and folders (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import logging
from email import message_from_bytes, policy

import pytest
from bounce_mail import Sent, auto_reply, exim_dsn, feedback_report, gmail_dsn, microsoft_dsn, postfix_dsn, truncated
from e2e_support import DAGS_FOLDER, broad_logs, kpi_row, quarantined, run_with_answer, seed_delivery, task_states
from sqlalchemy import text

from campaign.rendering import message_id
from campaign.tokens import tracking_secret

RETURN_PATH = "bounces@bounce.shop.test"


@pytest.fixture
def bounce_dags(airflow_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("CAMPAIGN_RETURN_PATH", RETURN_PATH)
    monkeypatch.setenv("CAMPAIGN_TRACKING_LAG_SECONDS", "0")
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    return bag.get_dag("confirm_send"), bag.get_dag("process_bounces"), bag.get_dag("compute_stats")


def _what_was_sent(handler, logs: dict[str, dict]) -> dict[str, Sent]:
    """Per recipient, what the relay received: envelope sender, Message-ID, subject."""
    sent = {}
    for received in handler.received:
        mail = message_from_bytes(received.raw, policy=policy.default)
        row = logs[received.rcpt_tos[0]]
        sent[row["email"]] = Sent(
            row["delivery_id"], row["profile_id"], row["email"], received.mail_from, str(mail["Message-ID"]),
            subject=str(mail["Subject"]),
        )  # fmt: skip
    return sent


def test_bounces_and_complaints_of_a_real_send_reach_the_logs_and_kpis(
    campaign_db, smtp_sink, imap_server, bounce_dags, caplog
):
    confirm_send, process_bounces, compute_stats = bounce_dags
    engine = campaign_db.engine
    audience = seed_delivery(engine, good=12)
    assert run_with_answer(confirm_send, {"delivery_id": audience.delivery_id})[0].state == "success"
    logs = broad_logs(engine, audience.delivery_id)
    sent = _what_was_sent(smtp_sink.handler, logs)
    assert len(sent) == 12
    assert all(s.return_path.startswith(f"bounces+{audience.delivery_id}.") for s in sent.values())
    assert kpi_row(engine, audience.delivery_id)["delivered"] == 12

    people = [sent[address] for address in audience.good]
    hard, soft = [people[0], people[1], people[2]], [people[3]]
    delayed, complainers = [people[4]], [people[5], people[6]]
    forged = Sent(
        people[7].delivery_id, people[7].profile_id, people[7].email,
        people[7].return_path.replace(f".{people[7].profile_id}.", f".{people[8].profile_id}."), people[7].message_id,
    )  # fmt: skip
    good = [
        postfix_dsn(hard[0]), gmail_dsn(hard[1]), exim_dsn(hard[2]), microsoft_dsn(soft[0], "soft"),
        postfix_dsn(delayed[0], "delayed"), feedback_report(complainers[0]),
        feedback_report(complainers[1], user_agent="Microsoft JMRP", original_mail_from=False),
    ]  # fmt: skip
    # A signed Message-ID of a delivery that does not exist: unknown, not forged.
    unknown = Sent(
        audience.delivery_id + 1, 1, "x@example.test", "news@shop.test",
        message_id(tracking_secret(), audience.delivery_id + 1, 1, "shop.test"),
    )  # fmt: skip
    bad = [auto_reply(people[9]), postfix_dsn(unknown), truncated(postfix_dsn(people[10])), postfix_dsn(forged)]
    for data in good + bad:
        imap_server.append(data)

    with caplog.at_level(logging.INFO):
        run = process_bounces.test()

    assert run.state == "success"
    assert task_states(run) == {"process_bounce_mailbox": ["success"], "process_bounce_mailbox#tries": ["1"]}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("process_bounces: ")]
    assert len(lines) == 1
    assert lines[0].startswith(
        "process_bounces: 11 messages read, 5 DSNs (hard 3, soft 1, delayed 1), 2 complaints, 4 unusable (not a "
        "bounce 1, unknown delivery 1, truncated 1, forged return path 1), 0 already applied, profiles quarantined 3 "
        f"and blocklisted 2, KPIs recomputed for delivery {audience.delivery_id}, moved 7 to Processed and 4 to "
        "Unusable ("
    )

    # Which message went to Unusable and why, one line each in the task log; a forgery as a warning.
    unusable = [(r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("unusable message")]
    assert [(level, line.rsplit(": ", 1)[1]) for level, line in unusable] == [
        ("INFO", "not a bounce"),
        ("INFO", "unknown delivery"),
        ("INFO", "truncated"),
        ("WARNING", "forged return path"),
    ]
    assert unusable[0][1].startswith("unusable message UID 8, Message-ID <oof.1796033702@example.test>, From ")

    logs = broad_logs(engine, audience.delivery_id)
    assert {(logs[s.email]["status"], logs[s.email]["failure_type"]) for s in hard} == {("bounced", "hard")}
    assert [logs[s.email]["dsn_status"] for s in hard] == ["5.1.1", "5.1.1", "5.0.0"]
    assert (logs[soft[0].email]["status"], logs[soft[0].email]["failure_type"]) == ("bounced", "soft")
    assert {logs[s.email]["status"] for s in delayed + complainers + people[7:]} == {"sent"}
    assert quarantined(engine, [s.email for s in people]) == {s.email for s in hard}
    with engine.begin() as conn:
        blocklisted = set(conn.execute(text("SELECT email FROM profiles WHERE blocklisted")).scalars())
    assert blocklisted == {s.email for s in complainers}

    kpis = kpi_row(engine, audience.delivery_id)
    assert (kpis["delivered"], kpis["hard_bounces"], kpis["soft_bounces"], kpis["bounces_errors"]) == (8, 3, 1, 4)
    assert kpis["delivered_rate"] == pytest.approx(8 / 12) and kpis["bounce_error_rate"] == pytest.approx(4 / 12)
    assert kpis["complaints"] == 2 and kpis["complaint_rate"] == pytest.approx(2 / 8)

    # No message left in the inbox, not even flagged \Deleted: through Airflow's IMAP hook too, the
    # run asked Dovecot after the login what it offers, and moved with MOVE (RFC 6851).
    assert imap_server.messages("INBOX") == []  # SEARCH ALL
    assert sorted(imap_server.messages("Processed")) == sorted(good)
    assert sorted(imap_server.messages("Unusable")) == sorted(bad)
    assert [c for c in imap_server.commands() if c.startswith(("UID MOVE", "UID COPY", "UID STORE"))] == [
        f"UID MOVE {','.join(map(str, range(1, 8)))} Processed",
        f"UID MOVE {','.join(map(str, range(8, 12)))} Unusable",
    ]

    # Compute stats recomputes the same figures from the logs; a second run finds an empty inbox.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert compute_stats.test(run_conf={"delivery_id": audience.delivery_id}).state == "success"
    assert any(r.getMessage().endswith("no KPI changed") for r in caplog.records)
    assert kpi_row(engine, audience.delivery_id)["delivered"] == 8
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert process_bounces.test().state == "success"
    assert any(r.getMessage().startswith("process_bounces: 0 messages read") for r in caplog.records)


def test_a_refused_login_fails_at_once_and_touches_no_mail(campaign_db, imap_server, bounce_dags, monkeypatch, caplog):
    _, process_bounces, _ = bounce_dags
    connection = json.loads(imap_server.connection_json())
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_BOUNCES", json.dumps({**connection, "password": "wrong"}))
    imap_server.append(b"Subject: kept\r\n\r\nkept\r\n")

    run = process_bounces.test()

    assert run.state == "failed"
    # One try: a refused login is permanent (ConfigurationError), no retry.
    assert task_states(run) == {"process_bounce_mailbox": ["failed"], "process_bounce_mailbox#tries": ["1"]}
    assert any("refused the login" in r.getMessage() for r in caplog.records)
    assert imap_server.messages("INBOX") == [b"Subject: kept\r\n\r\nkept\r\n"]


def test_without_a_bounce_mailbox_the_run_is_skipped_not_red(campaign_db, bounce_dags, monkeypatch, capsys):
    """make run and a first docker-compose define no Connection campaign_bounces: a failed run
    every ten minutes would bury the failures that matter."""
    _, process_bounces, _ = bounce_dags
    monkeypatch.delenv("AIRFLOW_CONN_CAMPAIGN_BOUNCES", raising=False)

    run = process_bounces.test()

    assert run.state == "success"
    assert task_states(run)["process_bounce_mailbox"] == ["skipped"]
    # The task runner logs the skip's reason (structured, to the task log) with the sentence.
    assert "No bounce mailbox: Airflow Connection 'campaign_bounces' is not defined" in capsys.readouterr().out


def test_a_bounce_connection_without_a_host_skips_the_run(campaign_db, bounce_dags, monkeypatch, capsys):
    """docker-compose defines the Connection from .env, whose bounce host is empty until ops set
    it: the same skip, with the sentence naming what is missing."""
    _, process_bounces, _ = bounce_dags
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAMPAIGN_BOUNCES",
        json.dumps({"conn_type": "imap", "host": "", "port": 993, "login": "bounces", "password": "x"}),
    )

    run = process_bounces.test()

    assert run.state == "success"
    assert task_states(run)["process_bounce_mailbox"] == ["skipped"]
    assert "No bounce mailbox: Airflow Connection 'campaign_bounces' has no host" in capsys.readouterr().out
