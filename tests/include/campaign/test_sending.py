"""send_chunk with the message builder, against a real SMTP server and a real database."""

from __future__ import annotations

import mailbox
import smtplib
from contextlib import contextmanager
from email import message_from_bytes, policy

from sqlalchemy import text

from campaign import deliveries
from campaign.confirm import start_send
from campaign.sending import send_chunk


def test_a_chunk_sends_built_messages_and_records_an_address_needing_smtputf8_as_failed(
    sqlite_db, smtp_sink, add_profiles, new_delivery
) -> None:
    engine = sqlite_db.engine
    add_profiles(engine, ["ann@example.test", "jörg@example.test", "bob@example.test"])
    delivery_id = new_delivery(engine, text="Hello {{ profile.email }}\n.\n")
    deliveries.prepare_delivery(engine, delivery_id, prepared_by="alice")
    deliveries.approve_delivery(engine, delivery_id, approved_by="alice")
    start_send(engine, delivery_id, "alice", "run-1")

    @contextmanager
    def connection():
        with smtplib.SMTP("127.0.0.1", smtp_sink.port, timeout=10) as smtp:
            yield smtp

    result = send_chunk(engine, delivery_id, "run-1", 1, 3, connection)

    assert (result.counts["sent"], result.counts["failed"]) == (2, 1)
    with engine.begin() as conn:
        rows = {
            row.email: row
            for row in conn.execute(
                text("SELECT email, profile_id, status, reason, message_id FROM broad_logs WHERE delivery_id = :d"),
                {"d": delivery_id},
            )
        }
    assert (rows["jörg@example.test"].status, rows["jörg@example.test"].reason) == (
        "failed",
        "address needs SMTPUTF8",
    )
    box = mailbox.Maildir(str(smtp_sink.maildir), create=False)
    mails = [message_from_bytes(box.get_bytes(key), policy=policy.default) for key in box.keys()]
    assert sorted(str(mail["To"]) for mail in mails) == ["ann@example.test", "bob@example.test"]
    for mail in mails:
        row = rows[str(mail["To"])]
        assert row.status == "sent"
        assert mail["Message-ID"] == row.message_id == f"<campaign.{delivery_id}.{row.profile_id}@shop.test>"
        assert mail.get_body(("plain",)).get_content() == f"Hello {mail['To']}\r\n.\r\n"
        assert "=?" not in str(mail["List-Unsubscribe"])
