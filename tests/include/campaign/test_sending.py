"""send_chunk against a real SMTP server and a real database: the message builder, relays with
and without SMTPUTF8, and relays that answer about the connection rather than the recipient."""

from __future__ import annotations

import mailbox
import re
import time
from email import message_from_bytes, policy

import idna
import pytest
from sqlalchemy import text
from testsupport import start_confirmed_send

from campaign import deliveries
from campaign.db import make_engine
from campaign.dev.smtp import Rule, Stage, connection_factory, running_server
from campaign.errors import ConfigurationError, SmtpUnavailable
from campaign.rendering import message_id
from campaign.sending import messages_per_connection_setting, reconnect_delays_setting, send_chunk
from campaign.tokens import tracking_secret


def _sending_delivery(engine, add_profiles, new_delivery, addresses: list[str], **spec) -> int:
    add_profiles(engine, addresses)
    delivery_id = new_delivery(engine, **spec)
    deliveries.prepare_delivery(engine, delivery_id, prepared_by="alice")
    deliveries.approve_delivery(engine, delivery_id, approved_by="alice")
    start_confirmed_send(engine, delivery_id, "alice", "run-1")
    return delivery_id


def _logs(engine, delivery_id: int) -> dict[str, object]:
    with engine.begin() as conn:
        return {
            row.email: row
            for row in conn.execute(
                text(
                    "SELECT email, profile_id, status, failure_type, reason, message_id "
                    "FROM broad_logs WHERE delivery_id = :d"
                ),
                {"d": delivery_id},
            )
        }


def _mails(tmp_path) -> list:
    box = mailbox.Maildir(str(tmp_path / "maildir"), create=False)
    return [message_from_bytes(box.get_bytes(key), policy=policy.default) for key in box.keys()]


ADDRESSES = ["ann@example.test", "prénom@example.test", "info@bücher.example", "bob@example.test"]


def test_a_relay_without_smtputf8_fails_only_the_non_ascii_local_part_and_the_chunk_goes_on(
    campaign_db, tmp_path, add_profiles, new_delivery
) -> None:
    """Issue 11, failure 1: this recipient used to fail the whole chunk, then the delivery."""
    engine = campaign_db.engine
    delivery_id = _sending_delivery(
        engine, add_profiles, new_delivery, ADDRESSES, text="Hello {{ profile.email }}\n.\n"
    )
    with running_server(tmp_path / "maildir", smtputf8=False) as (port, server):
        result = send_chunk(engine, delivery_id, "run-1", 1, 4, connection_factory(port))

    assert (result.counts["sent"], result.counts["failed"]) == (3, 1)
    rows = _logs(engine, delivery_id)
    assert rows["prénom@example.test"].status == "failed"
    assert "SMTPUTF8" in rows["prénom@example.test"].reason
    # The IDN domain went as its A-label, in the envelope and in the To header (issue 11, failure 2).
    assert server.accepted == {"ann@example.test": 1, "info@xn--bcher-kva.example": 1, "bob@example.test": 1}
    mails = _mails(tmp_path)
    assert sorted(str(mail["To"]) for mail in mails) == [
        "ann@example.test",
        "bob@example.test",
        "info@xn--bcher-kva.example",
    ]
    for mail in mails:
        row = rows[{"info@xn--bcher-kva.example": "info@bücher.example"}.get(str(mail["To"]), str(mail["To"]))]
        assert row.status == "sent"
        expected_id = message_id(tracking_secret(), delivery_id, row.profile_id, "shop.test")
        assert mail["Message-ID"] == row.message_id == expected_id
        assert mail.get_body(("plain",)).get_content().startswith("Hello ")
        assert "=?" not in str(mail["List-Unsubscribe"])
    for received in server.received:  # on the wire, not as a parser decodes it
        to_header = re.search(rb"^To: (.*)$", received.raw, re.MULTILINE).group(1)
        assert b"=?" not in to_header


def test_a_relay_offering_smtputf8_gets_the_non_ascii_local_part_with_smtputf8(
    campaign_db, tmp_path, add_profiles, new_delivery
) -> None:
    engine = campaign_db.engine
    delivery_id = _sending_delivery(engine, add_profiles, new_delivery, ADDRESSES)
    with running_server(tmp_path / "maildir", smtputf8=True) as (port, server):
        result = send_chunk(engine, delivery_id, "run-1", 1, 4, connection_factory(port))

    assert (result.counts["sent"], result.counts["failed"]) == (4, 0)
    received = {r.rcpt_tos[0]: r for r in server.received}
    assert "SMTPUTF8" in received["prénom@example.test"].mail_options
    assert "SMTPUTF8" not in received["ann@example.test"].mail_options
    mail = message_from_bytes(received["prénom@example.test"].raw, policy=policy.default)
    assert str(mail["To"]) == "prénom@example.test"  # raw UTF-8 (RFC 6532), no encoded-word


def test_a_message_that_can_be_ascii_is_ascii_even_when_the_relay_offers_smtputf8(
    campaign_db, tmp_path, add_profiles, new_delivery
) -> None:
    """A fresh user's find: with a relay offering SMTPUTF8, a non-ASCII subject or sender name
    made every message SMTPUTF8, which bounces at any later hop without it (RFC 6531 3.2)."""
    engine = campaign_db.engine
    delivery_id = _sending_delivery(
        engine,
        add_profiles,
        new_delivery,
        ["ann@example.test", "prénom@example.test"],
        sender='"Bücher Shöp, Ltd." <news@bücher-shop.example>',
        subject="Grüße, {{ profile.email }} — Ünïcödé sale",
        text="Grüße 🙂\n",
    )
    with running_server(tmp_path / "maildir", smtputf8=True) as (port, server):
        result = send_chunk(engine, delivery_id, "run-1", 1, 2, connection_factory(port))

    assert result.counts == {"sent": 2}
    received = {r.rcpt_tos[0]: r for r in server.received}
    ascii_one, utf8_one = received["ann@example.test"], received["prénom@example.test"]
    assert "SMTPUTF8" not in ascii_one.mail_options and ascii_one.raw.isascii()
    assert ascii_one.mail_from == "news@" + idna.encode("bücher-shop.example").decode()
    mail = message_from_bytes(ascii_one.raw, policy=policy.default)
    assert str(mail["Subject"]) == "Grüße, ann@example.test — Ünïcödé sale"
    assert mail.get_body(("plain",)).get_content() == "Grüße 🙂\r\n"
    assert "SMTPUTF8" in utf8_one.mail_options  # only the address that cannot be ASCII


@pytest.mark.parametrize("stage", [Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.END_OF_DATA])
def test_421_mid_chunk_reconnects_and_everyone_gets_one_message_and_nobody_bounces(
    campaign_db, tmp_path, add_profiles, new_delivery, stage
) -> None:
    """Issue 11, failure 4: a 421 at RCPT used to fail the chunk ("please run connect() first")."""
    engine = campaign_db.engine
    addresses = [f"r{i}@example.test" for i in range(12)]
    delivery_id = _sending_delivery(engine, add_profiles, new_delivery, addresses)
    rules = [Rule(stage, 421, after=4, times=2, text="4.7.0 Too many connections, closing channel")]
    with running_server(tmp_path / "maildir", rules=rules, max_messages_per_session=5) as (port, server):
        result = send_chunk(engine, delivery_id, "run-1", 1, 12, connection_factory(port), reconnect_delays=(0, 0, 0))

    assert result.counts == {"sent": 12}
    assert result.reconnects >= 2
    assert server.accepted == {address: 1 for address in addresses}
    assert {row.status for row in _logs(engine, delivery_id).values()} == {"sent"}
    assert "reconnections" in result.summary_line()


def test_a_relay_that_stays_unavailable_makes_the_chunk_retry_with_what_was_sent_recorded(
    campaign_db, tmp_path, add_profiles, new_delivery
) -> None:
    engine = campaign_db.engine
    addresses = [f"r{i}@example.test" for i in range(6)]
    delivery_id = _sending_delivery(engine, add_profiles, new_delivery, addresses)
    rules = [Rule(Stage.RCPT, 421, after=3)]  # from the fourth recipient on, for good
    with running_server(tmp_path / "maildir", rules=rules) as (port, server):
        with pytest.raises(SmtpUnavailable, match=r"seq 1-6.*3 recipients were recorded"):
            send_chunk(engine, delivery_id, "run-1", 1, 6, connection_factory(port), reconnect_delays=(0, 0))

    rows = _logs(engine, delivery_id)
    assert sorted(rows) == addresses[:3]
    assert {row.status for row in rows.values()} == {"sent"}  # nobody marked because of the relay


def test_a_relay_reply_with_a_nul_byte_is_recorded_without_it(campaign_db, tmp_path, add_profiles, new_delivery):
    """PostgreSQL's text refuses NUL: one odd reply must not fail the batch of sending-log rows."""
    engine = campaign_db.engine
    delivery_id = _sending_delivery(engine, add_profiles, new_delivery, ["odd@example.test", "ann@example.test"])
    rules = [Rule(Stage.RCPT, 550, "odd@example.test", text="5.1.1 no\x00body here")]
    with running_server(tmp_path / "maildir", rules=rules) as (port, _server):
        result = send_chunk(engine, delivery_id, "run-1", 1, 2, connection_factory(port))

    assert (result.counts["bounced"], result.counts["sent"]) == (1, 1)
    with engine.begin() as conn:
        reply = conn.execute(text("SELECT smtp_reply FROM broad_logs WHERE email = 'odd@example.test'")).scalar_one()
    assert reply == "5.1.1 nobody here"


def test_a_permanent_refusal_quarantines_only_when_it_is_about_the_address(
    campaign_db, tmp_path, add_profiles, new_delivery
) -> None:
    """The synchronous refusal follows campaign.qualification, as DSNs do: a spam or policy
    refusal (550 5.7.1) or a full mailbox (552 5.2.2) is soft and quarantines nobody; an
    unknown user (550 5.1.1) and a bare 550 without enhanced code are hard."""
    engine = campaign_db.engine
    addresses = ["spam@x.test", "full@x.test", "unknown@x.test", "bare@x.test", "busy@x.test", "slow@x.test"]
    delivery_id = _sending_delivery(engine, add_profiles, new_delivery, addresses)
    rules = [
        Rule(Stage.RCPT, 550, "spam@x.test", text="5.7.1 Message rejected as spam"),
        Rule(Stage.RCPT, 552, "full@x.test", text="5.2.2 Mailbox full"),
        Rule(Stage.RCPT, 550, "unknown@x.test", text="5.1.1 No such user"),
        Rule(Stage.RCPT, 550, "bare@x.test", text="No such user here"),
        Rule(Stage.RCPT, 452, "busy@x.test", text="4.2.2 Mailbox full, try later"),
        Rule(Stage.RCPT, 451, "slow@x.test", text="Try again later"),
    ]
    with running_server(tmp_path / "maildir", rules=rules) as (port, _server):
        send_chunk(engine, delivery_id, "run-1", 1, 6, connection_factory(port), soft_retry_delays=(0,))

    with engine.begin() as conn:
        outcome = {
            email: (failure_type, reason)
            for email, failure_type, reason in conn.execute(
                text("SELECT email, failure_type, reason FROM broad_logs WHERE status = 'bounced'")
            )
        }
        quarantined = set(
            conn.execute(text("SELECT email FROM profiles WHERE quarantine_reason IS NOT NULL")).scalars()
        )
    # The reason carries the enhanced status that qualified the refusal (the Deployment view's
    # bounces table shows why a 550 was soft or hard); a reply without one keeps the bare reason.
    assert outcome == {
        "spam@x.test": ("soft", "recipient refused 5.7.1"),
        "full@x.test": ("soft", "recipient refused 5.2.2"),
        "unknown@x.test": ("hard", "recipient refused 5.1.1"),
        "bare@x.test": ("hard", "recipient refused"),
        "busy@x.test": ("soft", "temporary failure, retries exhausted 4.2.2"),
        "slow@x.test": ("soft", "temporary failure, retries exhausted"),
    }
    assert quarantined == {"unknown@x.test", "bare@x.test"}


@pytest.mark.parametrize(
    ("value", "delays"), [("", (0.5, 1.0, 2.0, 4.0, 8.0)), ("0,0.25, 3", (0.0, 0.25, 3.0)), ("10", (10.0,))]
)
def test_reconnect_delays_come_from_the_environment(monkeypatch, value, delays) -> None:
    monkeypatch.setenv("CAMPAIGN_SMTP_RECONNECT_DELAYS", value)
    assert reconnect_delays_setting() == delays


@pytest.mark.parametrize("value", ["-1", "soon", "1,,2", "nan", "inf", "1e9"])
def test_a_wrong_reconnect_delay_is_one_sentence_naming_the_variable(monkeypatch, value) -> None:
    monkeypatch.setenv("CAMPAIGN_SMTP_RECONNECT_DELAYS", value)
    with pytest.raises(ConfigurationError, match=r"^CAMPAIGN_SMTP_RECONNECT_DELAYS must be .*got"):
        reconnect_delays_setting()


@pytest.mark.parametrize(("value", "cap"), [("", 0), ("0", 0), (" 100 ", 100)])
def test_messages_per_connection_comes_from_the_environment(monkeypatch, value, cap) -> None:
    monkeypatch.setenv("CAMPAIGN_SMTP_MESSAGES_PER_CONNECTION", value)
    assert messages_per_connection_setting() == cap


@pytest.mark.parametrize("value", ["-5", "ten", "1.5"])
def test_a_wrong_messages_per_connection_is_one_sentence(monkeypatch, value) -> None:
    monkeypatch.setenv("CAMPAIGN_SMTP_MESSAGES_PER_CONNECTION", value)
    with pytest.raises(ConfigurationError, match=r"^CAMPAIGN_SMTP_MESSAGES_PER_CONNECTION must be"):
        messages_per_connection_setting()


def test_a_chunk_with_one_address_the_relay_always_answers_421_sends_the_others(
    campaign_db, tmp_path, add_profiles, new_delivery
) -> None:
    """A fresh user's find: one such address failed the whole chunk, and the delivery with it."""
    engine = campaign_db.engine
    addresses = ["a@example.test", "stuck@x.test", "b@example.test", "c@example.test"]
    delivery_id = _sending_delivery(engine, add_profiles, new_delivery, addresses)
    rules = [Rule(Stage.RCPT, 421, "stuck@x.test", text="4.7.0 Too many connections, closing channel")]
    with running_server(tmp_path / "maildir", rules=rules) as (port, server):
        result = send_chunk(
            engine,
            delivery_id,
            "run-1",
            1,
            4,
            connection_factory(port),
            soft_retry_delays=(0,),
            reconnect_delays=(0, 0),
        )

    assert result.counts == {"sent": 3, "bounced": 1}
    stuck = _logs(engine, delivery_id)["stuck@x.test"]
    assert (stuck.status, stuck.failure_type) == ("bounced", "soft")
    assert server.accepted == {"a@example.test": 1, "b@example.test": 1, "c@example.test": 1}


def test_with_a_return_path_each_message_has_its_own_signed_envelope_sender(
    campaign_db, tmp_path, add_profiles, new_delivery, monkeypatch
) -> None:
    from campaign.return_path import read_return_path
    from campaign.tokens import tracking_secret

    engine = campaign_db.engine
    monkeypatch.setenv("CAMPAIGN_RETURN_PATH", "bounces@bounce.shop.test")
    delivery_id = _sending_delivery(engine, add_profiles, new_delivery, ["ann@example.test", "bob@example.test"])
    with running_server(tmp_path / "maildir", smtputf8=False) as (port, server):
        send_chunk(engine, delivery_id, "run-1", 1, 2, connection_factory(port))

    logs = _logs(engine, delivery_id)
    for received in server.received:
        row = logs[received.rcpt_tos[0]]
        assert received.mail_from.startswith(f"bounces+{delivery_id}.{row.profile_id}.")
        assert received.mail_from.endswith("@bounce.shop.test")
        assert read_return_path(tracking_secret(), received.mail_from).ids == (delivery_id, row.profile_id)
        mail = message_from_bytes(received.raw, policy=policy.default)
        assert str(mail["From"]) == "Shop News <news@shop.test>" and mail["Return-Path"] is None
    assert len(server.received) == 2


# ---------------------------------------------------------------- rows visible soon after the send


def _visible_rows(reader, delivery_id: int) -> int:
    """The sending-log rows another process sees now (its own connection, no lock taken)."""
    with reader.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        return conn.execute(
            text("SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :d"), {"d": delivery_id}
        ).scalar_one()


def test_at_a_low_rate_each_row_is_visible_about_a_second_after_the_relay_accepted_it(
    campaign_db, tmp_path, add_profiles, new_delivery
) -> None:
    """A fresh user's find under make run: rows were committed every 100 accepted messages, so
    at 3,600 an hour a recipient's row stayed unwritten for about 100 s, and the machine rules,
    which measure from it, judged a prefetch of the pixel made right after the send human.

    60 messages at 36,000 an hour (10 a second, about 6 s): never the 100 rows of a commit by
    count. Each time the relay accepts a message, a second connection counts the rows: every
    message accepted more than ``BOUND`` before is there, while the chunk is still sending. The
    chunk commits within about a second (``CONTROL_CHECK_SECONDS``); the bound is three times
    that, for a loaded machine: what the rows' delay is, the benchmark and the logs tell."""
    bound = 3.0
    engine = campaign_db.engine
    addresses = [f"r{i:02}@example.test" for i in range(60)]
    delivery_id = _sending_delivery(engine, add_profiles, new_delivery, addresses, max_rate=36_000)
    reader = make_engine(campaign_db.url)
    accepted_at: list[float] = []
    seen: list[tuple[float, int]] = []  # at each acceptance, before the relay answers: (when, rows visible)

    def on_message(_total: int, _peer: object) -> None:
        now = time.monotonic()
        seen.append((now, _visible_rows(reader, delivery_id)))
        accepted_at.append(now)

    try:
        with running_server(tmp_path / "maildir") as (port, server):
            server.on_message = on_message
            result = send_chunk(engine, delivery_id, "run-1", 1, 60, connection_factory(port))
    finally:
        reader.dispose()

    assert result.counts == {"sent": 60} and len(seen) == 60
    late = []
    for index, (now, visible) in enumerate(seen):
        due = sum(1 for accepted in accepted_at[:index] if accepted <= now - bound)
        if visible < due:
            late.append(f"message {index + 1}: {visible} rows visible, {due} accepted over {bound} s before")
    assert not late, late
    now, visible = seen[-1]
    assert sum(1 for accepted in accepted_at if accepted <= now - bound) >= 10, "the check above judged little"
    assert visible >= 10, "the rows were visible while the chunk still sent"


def test_the_rows_are_committed_before_the_relays_reconnection_backoff(
    campaign_db, tmp_path, add_profiles, new_delivery
) -> None:
    """A relay answering 421 makes the chunk wait before it connects again (up to 15.5 s by
    default): the rows of the messages it accepted before do not wait that out uncommitted."""
    engine = campaign_db.engine
    addresses = [f"r{i}@example.test" for i in range(5)]
    delivery_id = _sending_delivery(engine, add_profiles, new_delivery, addresses)
    reader = make_engine(campaign_db.url)
    seen: list[int] = []
    # The 4th MAIL is refused twice: reopened at once, then the backoff's second wait.
    rules = [Rule(Stage.MAIL, 421, after=3, times=2)]
    try:
        with running_server(tmp_path / "maildir", rules=rules) as (port, server):
            server.on_message = lambda _total, _peer: seen.append(_visible_rows(reader, delivery_id))
            result = send_chunk(engine, delivery_id, "run-1", 1, 5, connection_factory(port), reconnect_delays=(0, 1.0))
    finally:
        reader.dispose()

    assert result.counts == {"sent": 5} and result.reconnects == 2
    assert seen[3] == 3, "the three rows accepted before the 421 were committed during the backoff"
