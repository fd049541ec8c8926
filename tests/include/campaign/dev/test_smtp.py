"""The development relay misbehaves as asked, as real relays do, and records what reached it:
refusals at every stage, 421 closing the connection, a per-session message cap, idle sessions
dropped, SMTPUTF8 offered or not. The client is the standard library's smtplib, over loopback."""

from __future__ import annotations

import mailbox
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from testsupport import free_port, wait_for

from campaign.dev.smtp import MaildirHandler, Received, Refusal, Rule, Stage, start_server

ROOT = Path(__file__).resolve().parents[4]
CODES = (421, 451, 452, 550, 554)
REFUSED = "*refuse.test"  # matches the host name refuse.test and any address @refuse.test
MESSAGE = b"Subject: hello\r\n\r\nHello.\r\n"


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Callable[..., tuple[MaildirHandler, Callable[[], smtplib.SMTP]]]]:
    """Starts a server with the given options (no default reject rules); returns its handler and a
    function that opens a connected smtplib client."""
    controllers, clients = [], []

    def start(**options: Any) -> tuple[MaildirHandler, Callable[[], smtplib.SMTP]]:
        options.setdefault("reject_rules", {})
        port = free_port()
        controller, handler = start_server(options.pop("maildir", tmp_path / "maildir"), port=port, **options)
        controllers.append(controller)

        def connect() -> smtplib.SMTP:
            client = smtplib.SMTP("127.0.0.1", port, timeout=10)
            clients.append(client)
            return client

        return handler, connect

    yield start
    for client in clients:
        client.close()
    for controller in controllers:
        controller.stop()


def closed_by_server(client: smtplib.SMTP) -> bool:
    """True when the server has closed the connection (end of stream, nothing more to read)."""
    client.sock.settimeout(5)
    try:
        return client.sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _send(client: smtplib.SMTP, sender: str, recipient: str) -> None:
    client.sendmail(sender, [recipient], MESSAGE)


# ---------------------------------------------------------------- each stage x each code


def _reach(client: smtplib.SMTP, stage: Stage, refused: bool) -> tuple[int, bytes]:
    """Talk up to ``stage`` (for the refused party when ``refused``) and return the reply there."""
    host = "refuse.test" if refused and stage is Stage.EHLO else "client.test"
    code, reply = client.ehlo(host)
    if stage is Stage.EHLO:
        return code, reply
    sender = "ann@refuse.test" if refused and stage is Stage.MAIL else "ann@client.test"
    code, reply = client.mail(sender)
    if stage is Stage.MAIL:
        return code, reply
    code, reply = client.rcpt("bob@refuse.test" if refused else "bob@client.test")
    if stage is Stage.RCPT:
        return code, reply
    try:
        return client.data(MESSAGE)
    except smtplib.SMTPDataError as exc:  # the DATA command itself was refused
        assert stage is Stage.DATA
        return exc.smtp_code, exc.smtp_error


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("stage", list(Stage))
def test_a_rule_refuses_at_its_stage_with_its_code(relay, stage: Stage, code: int) -> None:
    handler, connect = relay(rules=[Rule(stage, code, REFUSED)])
    client = connect()

    reply = _reach(client, stage, refused=True)

    assert reply[0] == code
    address = "refuse.test" if stage is Stage.EHLO else {Stage.MAIL: "ann@refuse.test"}.get(stage, "bob@refuse.test")
    assert handler.refusals == [Refusal(1, stage, code, address)]
    assert handler.accepted == {} and handler.received == []
    if code == 421:  # RFC 5321 3.8: the server closes the channel after its 421
        assert closed_by_server(client)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    else:  # the session goes on: a transaction that matches no rule gets through
        client.rset()
        client.ehlo("client.test")
        client.sendmail("ann@client.test", ["bob@client.test"], MESSAGE)
        assert handler.accepted == {"bob@client.test": 1}
        assert handler.sessions == 1


def test_a_helo_is_refused_like_an_ehlo(relay) -> None:
    handler, connect = relay(rules=[Rule(Stage.EHLO, 554, REFUSED)])
    client = connect()

    assert client.helo("refuse.test")[0] == 554
    assert client.helo("client.test")[0] == 250
    client.sendmail("ann@client.test", ["bob@client.test"], MESSAGE)
    assert handler.accepted == {"bob@client.test": 1}


@pytest.mark.parametrize("stage", [Stage.DATA, Stage.END_OF_DATA])
def test_a_rule_after_rcpt_matches_any_recipient_of_the_transaction(relay, stage: Stage) -> None:
    handler, connect = relay(rules=[Rule(stage, 554, "*@refuse.test")])
    client = connect()

    with pytest.raises(smtplib.SMTPDataError) as excinfo:
        client.sendmail("ann@client.test", ["bob@client.test", "cid@refuse.test"], MESSAGE)
    client.rset()  # smtplib resets after a refusal at the end of data, not after one of the DATA command
    client.sendmail("ann@client.test", ["bob@client.test"], MESSAGE)

    assert excinfo.value.smtp_code == 554
    assert handler.refusals == [Refusal(1, stage, 554, "cid@refuse.test")]
    assert handler.accepted == {"bob@client.test": 1}


def test_first_matching_rule_answers_and_other_addresses_pass(relay) -> None:
    handler, connect = relay(
        rules=[Rule(Stage.RCPT, 452, "vip@refuse.test"), Rule(Stage.RCPT, 550, REFUSED)],
        reject_rules={"*@hard-bounce.test": 550},
    )
    client = connect()
    client.ehlo("client.test")
    client.mail("ann@client.test")

    replies = [client.rcpt(a)[0] for a in ("VIP@Refuse.Test", "x@refuse.test", "y@hard-bounce.test", "ok@x.test")]

    assert replies == [452, 550, 550, 250]
    assert handler.refused == {"vip@refuse.test": 1, "x@refuse.test": 1, "y@hard-bounce.test": 1}
    assert handler.refusals_at(Stage.RCPT) == {452: 1, 550: 2}


# ---------------------------------------------------------------- the next N times only


def _send_with_reconnect(connect: Callable[[], smtplib.SMTP], recipients: list[str]) -> list[tuple[str, int]]:
    """Send one message per recipient; on a 421 (connection closed) reconnect and send it again."""
    events = []
    client = connect()
    for recipient in recipients:
        while True:
            try:
                client.sendmail("ann@client.test", [recipient], MESSAGE)
                events.append((recipient, 250))
                break
            except smtplib.SMTPRecipientsRefused as exc:
                code = exc.recipients[recipient][0]
            except smtplib.SMTPSenderRefused as exc:
                code = exc.smtp_code
            events.append((recipient, code))
            assert code == 421, "only 421 is expected here"
            assert client.sock is None  # smtplib closes its end after a 421
            client = connect()
    return events


def test_a_rule_for_the_third_message_only_lets_a_reconnecting_client_through(relay) -> None:
    handler, connect = relay(rules=[Rule(Stage.RCPT, 421, after=2, times=1)])
    recipients = [f"r{i}@client.test" for i in range(1, 6)]

    events = _send_with_reconnect(connect, recipients)

    assert events == [
        ("r1@client.test", 250),
        ("r2@client.test", 250),
        ("r3@client.test", 421),
        ("r3@client.test", 250),
        ("r4@client.test", 250),
        ("r5@client.test", 250),
    ]
    assert handler.accepted == dict.fromkeys(recipients, 1)
    assert handler.sessions == 2
    assert handler.refusals == [Refusal(1, Stage.RCPT, 421, "r3@client.test")]
    assert [m.session for m in handler.received] == [1, 1, 2, 2, 2]


def test_a_rule_for_two_times_counts_only_matching_commands(relay) -> None:
    handler, connect = relay(rules=[Rule(Stage.RCPT, 451, "*@slow.test", times=2)])
    client = connect()
    client.ehlo("client.test")
    client.mail("ann@client.test")

    replies = [client.rcpt(a)[0] for a in ("a@slow.test", "b@fast.test", "a@slow.test", "a@slow.test")]

    assert replies == [451, 250, 451, 250]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"stage": "ehlo", "code": 250}, "4xx or 5xx"),
        ({"stage": "rcpt", "code": 550, "times": 0}, "times >= 1"),
        ({"stage": "rcpt", "code": 550, "after": -1}, "after must be >= 0"),
        ({"stage": "quit", "code": 550}, "not a valid Stage"),
    ],
)
def test_a_meaningless_rule_is_refused(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rule(**arguments)


# ---------------------------------------------------------------- per-session cap, idle sessions


def test_the_message_cap_answers_421_at_mail_and_closes(relay) -> None:
    handler, connect = relay(max_messages_per_session=2)
    client = connect()
    _send(client, "ann@client.test", "r1@client.test")
    _send(client, "ann@client.test", "r2@client.test")

    reply = client.mail("ann@client.test")

    assert reply == (421, b"4.7.0 Too many messages in this session, closing connection")
    assert closed_by_server(client)
    assert handler.refusals == [Refusal(1, Stage.MAIL, 421, "ann@client.test", "message cap")]
    _send(connect(), "ann@client.test", "r3@client.test")  # a new session has its own count
    assert handler.accepted == {"r1@client.test": 1, "r2@client.test": 1, "r3@client.test": 1}
    assert handler.sessions == 2


def test_an_idle_session_gets_421_and_is_closed(relay) -> None:
    handler, connect = relay(idle_timeout=0.4)
    busy, idle = connect(), connect()
    busy.ehlo("client.test")
    idle.ehlo("client.test")

    for _ in range(8):  # each command restarts the server's clock
        time.sleep(0.1)
        assert busy.noop()[0] == 250
    code, reply = idle.getreply()  # the server spoke first: read its reply without sending anything

    assert (code, reply) == (421, b"4.4.2 Idle timeout exceeded, closing connection")
    assert closed_by_server(idle)
    assert handler.idle_drops == 1
    _send(busy, "ann@client.test", "bob@client.test")
    assert handler.accepted == {"bob@client.test": 1}


# ---------------------------------------------------------------- SMTPUTF8


def test_with_smtputf8_a_non_ascii_address_is_accepted(relay) -> None:
    handler, connect = relay(smtputf8=True)
    client = connect()
    client.ehlo("client.test")
    assert client.has_extn("smtputf8")

    message = "Subject: caf\u00e9\r\n\r\nBonjour.\r\n".encode()
    client.sendmail("ann@client.test", ["pr\u00e9nom@b\u00fccher.example"], message, mail_options=["SMTPUTF8"])

    assert handler.accepted == {"pr\u00e9nom@b\u00fccher.example": 1}
    assert handler.received == [
        Received(
            1, "ann@client.test", ("pr\u00e9nom@b\u00fccher.example",), (f"SIZE={len(message)}", "SMTPUTF8"), message
        )
    ]


def test_without_smtputf8_the_parameter_and_non_ascii_addresses_are_refused(relay) -> None:
    handler, connect = relay(smtputf8=False)
    client = connect()
    client.ehlo("client.test")
    assert not client.has_extn("smtputf8")

    # smtplib would not send it (SMTPNotSupportedError): a client that does, in plain words
    assert client.docmd("MAIL", "FROM:<ann@client.test> SMTPUTF8") == (501, b"Error: SMTPUTF8 disabled")
    client.command_encoding = "utf-8"  # what a client ignoring the EHLO reply would write
    assert client.mail("pr\u00e9nom@client.test") == (500, b"Error: strict ASCII mode")
    assert client.mail("ann@client.test")[0] == 250
    assert client.rcpt("info@b\u00fccher.example") == (500, b"Error: strict ASCII mode")
    assert client.rcpt("info@xn--bcher-kva.example")[0] == 250  # the same mailbox, as an A-label
    assert client.data(MESSAGE)[0] == 250
    assert handler.accepted == {"info@xn--bcher-kva.example": 1}


# ---------------------------------------------------------------- what reached the server


def test_the_raw_bytes_of_accepted_messages_are_kept_and_stored(relay, tmp_path: Path) -> None:
    handler, connect = relay(maildir=tmp_path / "mail")
    message = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\nlast\r\n"

    connect().sendmail("ann@client.test", ["bob@client.test", "cid@client.test"], message)

    [received] = handler.received
    assert received.raw == message  # smtplib stuffed the dots, the server took them out
    assert (received.mail_from, received.rcpt_tos) == ("ann@client.test", ("bob@client.test", "cid@client.test"))
    [stored] = mailbox.Maildir(str(tmp_path / "mail"), create=False)
    assert stored.as_bytes().replace(b"\n", b"\r\n") == message


def test_without_a_maildir_messages_are_counted_not_kept(relay) -> None:
    handler, connect = relay(maildir=None)

    _send(connect(), "ann@client.test", "bob@client.test")

    assert handler.accepted == {"bob@client.test": 1}
    assert handler.received == []


def test_the_default_reject_rules_still_apply(tmp_path: Path) -> None:
    port = free_port()
    controller, handler = start_server(tmp_path / "maildir", port=port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            refused = client.sendmail(
                "ann@client.test", ["x@hard-bounce.test", "y@soft-bounce.test", "ok@client.test"], MESSAGE
            )
    finally:
        controller.stop()

    assert refused == {
        "x@hard-bounce.test": (550, b"5.1.1 Mailbox does not exist"),
        "y@soft-bounce.test": (451, b"4.3.0 Mailbox temporarily unavailable, try later"),
    }
    assert handler.refused == {"x@hard-bounce.test": 1, "y@soft-bounce.test": 1}
    assert handler.accepted == {"ok@client.test": 1}


# ---------------------------------------------------------------- the command line (make run)


def test_the_command_line_server(tmp_path: Path) -> None:
    port = free_port()
    maildir = tmp_path / "maildir"
    command = [sys.executable, "-m", "campaign.dev.smtp", "--port", str(port), "--maildir", str(maildir)]
    command += ["--reject", "*@gone.test=550", "--rule", "mail:*@blocked.test=554", "--no-smtputf8"]
    command += ["--rule", "rcpt:*@spam.test=550 5.7.1 Message rejected as spam"]
    server = subprocess.Popen(command, env={"PYTHONPATH": str(ROOT / "include")}, stderr=subprocess.PIPE)
    try:

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(listening, 15, 0.05, "the command-line SMTP server")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.test")
            assert not client.has_extn("smtputf8")
            assert client.mail("x@blocked.test")[0] == 554
            assert client.sendmail("ann@client.test", ["a@gone.test", "c@spam.test", "b@client.test"], MESSAGE) == {
                "a@gone.test": (550, b"5.1.1 Mailbox does not exist"),
                "c@spam.test": (550, b"5.7.1 Message rejected as spam"),
            }
    finally:
        server.terminate()
        server.wait(10)
    assert len(list((maildir / "new").iterdir())) == 1


def test_the_command_line_refuses_a_malformed_rule() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "campaign.dev.smtp", "--discard", "--rule", "quit:*=550"],
        env={"PYTHONPATH": str(ROOT / "include")},
        capture_output=True,
        text=True,
    )

    assert result.returncode == 2
    assert "rule must look like STAGE:PATTERN=CODE[ TEXT] with STAGE one of ehlo, mail, rcpt, data, end_of_data" in (
        result.stderr
    )
