"""The relay session against a real SMTP server (aiosmtpd) that misbehaves like real relays:
replies about the recipient or the message come back; replies about the connection (421 at any
stage, a dropped or capped session) reconnect and send again, a bounded number of times."""

from __future__ import annotations

import time

import pytest

from campaign.dev.net import free_port
from campaign.dev.smtp import Rule, Stage, connection_factory, running_server, start_server
from campaign.errors import SmtpUnavailable
from campaign.relay import MessageNotSendable, RelaySession

SENDER = "news@shop.test"


# Every test runs twice: smtplib's sendmail, and our pipelined transaction (RFC 2920) that must
# give the same outcomes on the same relay.
@pytest.fixture(params=[False, True], ids=["smtplib", "pipelined"])
def pipelining(request) -> bool:
    return request.param


NO_WAIT = (0.0, 0.0, 0.0)


def _message(to: str, subject: str = "Hello") -> bytes:
    return f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()


def test_an_accepted_message_reaches_the_server_once(tmp_path, pipelining):
    with (
        running_server(tmp_path / "maildir") as (port, server),
        RelaySession(connection_factory(port), pipelining=pipelining, reconnect_delays=NO_WAIT) as session,
    ):
        reply = session.send(SENDER, "a@example.test", _message("a@example.test"))
    assert (reply.code, reply.accepted) == (250, True)
    assert server.accepted == {"a@example.test": 1}
    assert (session.connections, session.reconnects) == (1, 0)


@pytest.mark.parametrize(
    ("stage", "code", "reported_at"),
    [
        (Stage.MAIL, 451, "MAIL"),
        (Stage.MAIL, 550, "MAIL"),
        (Stage.RCPT, 450, "RCPT"),
        (Stage.RCPT, 451, "RCPT"),
        (Stage.RCPT, 452, "RCPT"),
        (Stage.RCPT, 550, "RCPT"),
        (Stage.RCPT, 554, "RCPT"),
        (Stage.DATA, 451, "DATA"),
        (Stage.DATA, 554, "DATA"),
        (Stage.END_OF_DATA, 452, "DATA"),
        (Stage.END_OF_DATA, 554, "DATA"),
    ],
)
def test_replies_about_the_message_come_back_with_their_stage(tmp_path, stage, code, reported_at, pipelining):
    rules = [Rule(stage, code, "refused@example.test" if stage is not Stage.MAIL else SENDER, times=1)]
    with (
        running_server(tmp_path / "maildir", rules=rules) as (port, server),
        RelaySession(connection_factory(port), pipelining=pipelining, reconnect_delays=NO_WAIT) as s,
    ):
        refused = s.send(SENDER, "refused@example.test", _message("refused@example.test"))
        after = s.send(SENDER, "next@example.test", _message("next@example.test"))
    assert (refused.code, refused.stage, refused.accepted) == (code, reported_at, False)
    assert refused.text  # the relay's own words, for the sending log
    assert after.accepted, "the same connection goes on after a refusal about one message"
    assert server.accepted == {"next@example.test": 1}
    assert s.reconnects == 0


@pytest.mark.parametrize("stage", list(Stage))
def test_421_at_any_stage_reconnects_and_sends_the_message_once(tmp_path, stage, pipelining):
    # The second message's command at that stage; EHLO comes once per session: the first one.
    rules = [Rule(stage, 421, after=0 if stage is Stage.EHLO else 1, times=1)]
    with (
        running_server(tmp_path / "maildir", rules=rules) as (port, server),
        RelaySession(connection_factory(port), pipelining=pipelining, reconnect_delays=NO_WAIT) as s,
    ):
        replies = [s.send(SENDER, f"r{i}@example.test", _message(f"r{i}@example.test")) for i in range(4)]
    assert [r.code for r in replies] == [250, 250, 250, 250]
    assert server.accepted == {f"r{i}@example.test": 1 for i in range(4)}
    assert server.refusals_at(stage) == {421: 1}
    assert s.reconnects == 1


def test_a_relay_capping_its_sessions_gets_every_message_once(tmp_path, pipelining):
    with (
        running_server(tmp_path / "maildir", max_messages_per_session=3) as (port, server),
        RelaySession(connection_factory(port), pipelining=pipelining, reconnect_delays=NO_WAIT) as s,
    ):
        replies = [s.send(SENDER, f"r{i}@example.test", _message(f"r{i}@example.test")) for i in range(10)]
    assert all(r.accepted for r in replies)
    assert server.accepted == {f"r{i}@example.test": 1 for i in range(10)}
    assert server.sessions == 4


def test_our_own_session_cap_opens_new_connections_before_the_relay_has_to_refuse(tmp_path, pipelining):
    with (
        running_server(tmp_path / "maildir") as (port, server),
        RelaySession(
            connection_factory(port), pipelining=pipelining, reconnect_delays=NO_WAIT, messages_per_connection=2
        ) as s,
    ):
        for i in range(5):
            assert s.send(SENDER, f"r{i}@example.test", _message(f"r{i}@example.test")).accepted
    assert server.sessions == 3
    assert server.refusals == []


def test_an_idle_connection_dropped_by_the_relay_is_reopened(tmp_path, pipelining):
    with (
        running_server(tmp_path / "maildir", idle_timeout=0.5) as (port, server),
        RelaySession(connection_factory(port), pipelining=pipelining, reconnect_delays=NO_WAIT) as s,
    ):
        assert s.send(SENDER, "a@example.test", _message("a@example.test")).accepted
        time.sleep(1.5)  # well past the idle timeout, also on a loaded machine
        assert s.send(SENDER, "b@example.test", _message("b@example.test")).accepted
    assert server.idle_drops >= 1
    assert server.accepted == {"a@example.test": 1, "b@example.test": 1}
    assert s.reconnects == 1


def test_a_relay_that_keeps_answering_421_makes_the_chunk_give_up_after_the_bounded_attempts(tmp_path, pipelining):
    waits: list[float] = []
    rules = [Rule(Stage.RCPT, 421)]
    with running_server(tmp_path / "maildir", rules=rules) as (port, server):
        with RelaySession(
            connection_factory(port), pipelining=pipelining, reconnect_delays=(0.1, 0.2), sleep=waits.append
        ) as s:
            # The first recipient refused through every new connection is given back as a
            # deferral (the connections themselves opened fine); the second in a row is the relay.
            deferred = s.send(SENDER, "a@example.test", _message("a@example.test"))
            with pytest.raises(SmtpUnavailable, match=r"after 2 reconnections .*421 .* at RCPT for b@example.test"):
                s.send(SENDER, "b@example.test", _message("b@example.test"))
    assert (deferred.code, deferred.stage, deferred.accepted) == (421, "RCPT", False)
    assert waits == [0.1, 0.2, 0.1, 0.2]
    assert server.refusals_at(Stage.RCPT) == {421: 6}
    assert server.accepted == {}


def test_one_recipient_refused_with_421_through_every_connection_does_not_stop_the_others(tmp_path, pipelining):
    """A fresh user's find: a relay answering 421 to one address only failed the whole chunk."""
    rules = [Rule(Stage.RCPT, 421, "stuck@x.test")]
    with running_server(tmp_path / "maildir", rules=rules) as (port, server):
        with RelaySession(connection_factory(port), pipelining=pipelining, reconnect_delays=NO_WAIT) as s:
            replies = [
                s.send(SENDER, address, _message(address))
                for address in ("a@example.test", "stuck@x.test", "b@example.test", "stuck@x.test", "c@example.test")
            ]
    assert [r.code for r in replies] == [250, 421, 250, 421, 250]
    assert server.accepted == {"a@example.test": 1, "b@example.test": 1, "c@example.test": 1}


def test_a_session_that_carried_mail_and_ended_is_reopened_without_waiting(tmp_path, pipelining):
    """A fresh user's find: each end of a capped session cost the first backoff (0.5 s)."""
    waits: list[float] = []
    with running_server(tmp_path / "maildir", max_messages_per_session=2) as (port, server):
        with RelaySession(
            connection_factory(port), pipelining=pipelining, reconnect_delays=(5.0,), sleep=waits.append
        ) as s:
            for i in range(6):
                assert s.send(SENDER, f"r{i}@example.test", _message(f"r{i}@example.test")).accepted
    assert waits == []
    assert server.sessions == 3


def test_an_unreachable_relay_raises_smtp_unavailable_with_what_happened(tmp_path, pipelining):
    port = free_port()  # nobody listens
    waits: list[float] = []
    with pytest.raises(SmtpUnavailable, match="ConnectionRefusedError"):
        with RelaySession(
            connection_factory(port), pipelining=pipelining, reconnect_delays=(0.5, 1.0), sleep=waits.append
        ):
            pass
    assert waits == [0.5, 1.0]


def test_the_relay_coming_back_during_the_backoff_is_used(tmp_path, pipelining):
    port = free_port()
    started: list[object] = []

    def start_the_relay_while_waiting(seconds: float) -> None:
        if not started:
            started.append(start_server(tmp_path / "maildir", port=port))

    try:
        with RelaySession(
            connection_factory(port),
            pipelining=pipelining,
            reconnect_delays=(1.0,),
            sleep=start_the_relay_while_waiting,
        ) as s:
            assert s.send(SENDER, "a@example.test", _message("a@example.test")).accepted
        assert started[0][1].accepted == {"a@example.test": 1}
    finally:
        for controller, _ in started:
            controller.stop()


def test_smtputf8_is_asked_for_only_when_needed_and_offered(tmp_path, pipelining):
    address = "prénom@example.test"
    with (
        running_server(tmp_path / "maildir", smtputf8=True) as (port, server),
        RelaySession(connection_factory(port), pipelining=pipelining) as s,
    ):
        assert s.smtputf8
        assert s.send(SENDER, address, _message("x@example.test"), ["SMTPUTF8"]).accepted
        assert s.send(SENDER, "plain@example.test", _message("plain@example.test")).accepted
    assert ["SMTPUTF8" in r.mail_options for r in server.received] == [True, False]
    assert server.received[0].rcpt_tos == (address,)


def test_a_message_needing_smtputf8_is_not_sendable_to_a_relay_without_it(tmp_path, pipelining):
    with (
        running_server(tmp_path / "maildir", smtputf8=False) as (port, server),
        RelaySession(connection_factory(port), pipelining=pipelining) as s,
    ):
        assert not s.smtputf8
        with pytest.raises(MessageNotSendable, match="SMTPUTF8"):
            s.send(SENDER, "prénom@example.test", _message("x@example.test"), ["SMTPUTF8"])
        with pytest.raises(MessageNotSendable, match="SMTPUTF8"):
            s.send(SENDER, "prénom@example.test", _message("x@example.test"))  # forgot to ask
        assert s.send(SENDER, "next@example.test", _message("next@example.test")).accepted
    assert server.accepted == {"next@example.test": 1}
    assert s.reconnects == 0


def test_both_ways_put_the_same_bytes_on_the_relay(tmp_path):
    bodies = [
        b"Subject: dots\r\n\r\n.\r\n..two\r\n.\r\nend",  # no final line break
        b"Subject: plain\r\n\r\nHello.\r\n",
        "Subject: utf8\r\n\r\nGrüße, 🙂\r\n".encode(),
    ]
    received = {}
    for pipelining in (False, True):
        with running_server(tmp_path / str(pipelining) / "maildir", smtputf8=True) as (port, server):
            with RelaySession(connection_factory(port), pipelining=pipelining) as s:
                for i, body in enumerate(bodies):
                    options = ["SMTPUTF8", "BODY=8BITMIME"] if not body.isascii() else []
                    assert s.send(SENDER, f"r{i}@example.test", body, options).accepted
            received[pipelining] = [(r.mail_from, r.rcpt_tos, r.mail_options, r.raw) for r in server.received]
    assert received[True] == received[False]
    assert received[True][0][3].startswith(b"Subject: dots\r\n\r\n.\r\n..two\r\n")
