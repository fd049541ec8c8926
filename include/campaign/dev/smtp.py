"""A local SMTP server for make run and the tests: stores mail in a Maildir, misbehaves on demand.

It misbehaves the way real relays do.

Nothing leaves the machine. Reject rules make it answer like a real relay would for chosen
addresses (``*@hard-bounce.test=550`` → permanent refusal, ``*@soft-bounce.test=451`` → temporary).
``Rule`` generalises them to every stage of a transaction (EHLO/HELO, MAIL FROM, RCPT TO, the DATA
command, the end of data), optionally for the next N matching commands only. Besides:

- a 421 reply, whoever sends it, is followed by closing the connection, as RFC 5321 3.8 and 4.2.2
  say a server does when it shuts the channel;
- ``max_messages_per_session``: after N accepted messages in one session, the next MAIL FROM gets
  421 and the connection is closed, as relays that cap messages per connection do;
- ``idle_timeout``: a session idle that long gets ``421 4.4.2`` and is closed (Postfix's
  ``smtpd_timeout`` behaves so);
- EHLO offers PIPELINING (RFC 2920), as Postfix does;
- ``smtputf8``: whether EHLO offers SMTPUTF8 (RFC 6531). Without it aiosmtpd refuses a
  ``MAIL FROM:<..> SMTPUTF8`` (501) and any non-ASCII byte in a command (500).

The handler records what reached the server (accepted messages per address, refusals per stage,
sessions opened, idle drops and, when a Maildir is given, each accepted message's envelope and raw
bytes), so tests assert on what the server really saw.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import mailbox
import signal
import smtplib
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from campaign.dev.net import free_port
from campaign.relay import SmtpFactory

log = logging.getLogger(__name__)

DEFAULT_REJECT_RULES = {"*@hard-bounce.test": 550, "*@soft-bounce.test": 451}
# Reply texts as real relays word them, with the enhanced status code (RFC 3463).
REPLIES = {
    421: "421 4.3.2 Service not available, closing transmission channel",
    451: "451 4.3.0 Mailbox temporarily unavailable, try later",
    452: "452 4.2.2 Insufficient system storage, try later",
    550: "550 5.1.1 Mailbox does not exist",
    554: "554 5.7.1 Transaction failed",
}
MESSAGE_CAP_REPLY = "421 4.7.0 Too many messages in this session, closing connection"
IDLE_REPLY = b"421 4.4.2 Idle timeout exceeded, closing connection\r\n"
AIOSMTPD_DEFAULT_TIMEOUT = 300.0  # seconds; aiosmtpd closes a session idle that long


class Stage(StrEnum):
    """Where a rule answers, and what its pattern is matched against."""

    EHLO = "ehlo"  # EHLO or HELO: the host name the client gives
    MAIL = "mail"  # MAIL FROM: the sender
    RCPT = "rcpt"  # RCPT TO: the recipient
    DATA = "data"  # the DATA command, before 354: any accepted recipient of the transaction
    END_OF_DATA = "end_of_data"  # the reply after the final dot: any accepted recipient


@dataclass(frozen=True)
class Rule:
    """Answer ``code`` at ``stage`` to commands whose address matches ``pattern``.

    ``pattern`` is an fnmatch pattern, matched case-insensitively (see ``Stage`` for what it is
    matched against). ``after``: let this many matching commands through first; ``times``: then
    refuse this many, after which the rule is spent (None: refuse every one). So
    ``Rule(Stage.RCPT, 421, after=2, times=1)`` refuses the third RCPT only, and a client that
    reconnects then succeeds. ``text`` replaces the reply after the code (default: ``REPLIES``).

    Raises ValueError for a code that is not a 4xx or 5xx refusal, or for negative counts.
    """

    stage: Stage
    code: int
    pattern: str = "*"
    after: int = 0
    times: int | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", Stage(self.stage))
        if not 400 <= self.code <= 599:
            raise ValueError(f"a rule answers a refusal (4xx or 5xx), got {self.code}")
        if self.after < 0 or (self.times is not None and self.times < 1):
            raise ValueError(f"after must be >= 0 and times >= 1 or None, got {self.after} and {self.times}")

    def matches(self, address: str) -> bool:
        return fnmatch.fnmatchcase(address.lower(), self.pattern.lower())

    @property
    def reply(self) -> str:
        if self.text is not None:
            return f"{self.code} {self.text}"
        return REPLIES.get(self.code, f"{self.code} {self.code // 100}.0.0 Refused")


@dataclass(frozen=True)
class Refusal:
    """One refusal the server answered: ``address`` is what the rule matched (the host name at EHLO);
    ``reason`` is ``rule`` or ``message cap``."""

    session: int
    stage: Stage
    code: int
    address: str
    reason: str = "rule"


@dataclass(frozen=True)
class Received:
    """One accepted message: its envelope and the bytes after DATA (CRLF line ends, dots unstuffed)."""

    session: int
    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    raw: bytes


def reject_rules_as_rules(reject_rules: dict[str, int]) -> list[Rule]:
    """``{"*@hard-bounce.test": 550}`` (refusals at RCPT TO, every time) as ``Rule``s."""
    return [Rule(Stage.RCPT, code, pattern) for pattern, code in reject_rules.items()]


class MaildirHandler:
    """aiosmtpd handler: applies the rules and the message cap, stores and records what it accepts."""

    def __init__(
        self,
        maildir: str | Path | None,
        reject_rules: dict[str, int] | None = None,
        *,
        rules: Iterable[Rule] = (),
        max_messages_per_session: int | None = None,
    ) -> None:
        """``maildir`` None counts the mail without storing it (benchmarks) and keeps no ``received``.

        ``reject_rules`` (PATTERN → code at RCPT TO; None: ``DEFAULT_REJECT_RULES``) apply after
        ``rules``; the first rule that matches a command and is not spent answers it. Both are
        read here, once. Raises ValueError for a cap below 1.
        """
        self.maildir = None
        if maildir is not None:
            for sub in ("tmp", "new", "cur"):  # Maildir(create=True) skips them when the folder exists
                Path(maildir, sub).mkdir(parents=True, exist_ok=True)
            self.maildir = mailbox.Maildir(str(maildir), create=False)
        self.reject_rules = dict(DEFAULT_REJECT_RULES if reject_rules is None else reject_rules)
        self.rules: list[Rule] = [*rules, *reject_rules_as_rules(self.reject_rules)]
        if max_messages_per_session is not None and max_messages_per_session < 1:
            raise ValueError(f"max_messages_per_session must be >= 1, got {max_messages_per_session}")
        self.max_messages_per_session = max_messages_per_session
        self.lock = threading.Lock()  # the server's thread writes, the tests' thread reads
        self._matched: Counter[int] = Counter()  # rule index -> matching commands seen
        self.accepted: Counter[str] = Counter()  # recipient address -> messages accepted
        self.refused: Counter[str] = Counter()  # recipient address -> RCPT refusals
        self.refusals: list[Refusal] = []  # every refusal, at every stage, in order
        self.received: list[Received] = []  # accepted messages, only when a maildir is given
        self.sessions = 0  # connections opened
        self.idle_drops = 0  # sessions closed for idleness
        self.on_message: Callable[[int, Any], None] | None = None  # (total accepted, peer) after each message

    # ------------------------------------------------------------ what tests read

    def refusals_at(self, stage: Stage | str) -> Counter[int]:
        """Refusal codes answered at ``stage``: code → count."""
        with self.lock:
            return Counter(r.code for r in self.refusals if r.stage == Stage(stage))

    # ------------------------------------------------------------ rules

    def _refusal(self, stage: Stage, session: Session, addresses: Sequence[str]) -> str | None:
        """The reply of the first live rule of ``stage`` matching one of ``addresses`` (recorded), or None."""
        with self.lock:
            for index, rule in enumerate(self.rules):
                if rule.stage != stage:
                    continue
                address = next((a for a in addresses if rule.matches(a)), None)
                if address is None:
                    continue
                seen = self._matched[index]
                self._matched[index] += 1
                if seen < rule.after or (rule.times is not None and seen >= rule.after + rule.times):
                    continue  # let through, or spent: a later rule may still answer
                self.refusals.append(Refusal(_number(session), stage, rule.code, address.lower()))
                if stage is Stage.RCPT:
                    self.refused[address.lower()] += 1
                return rule.reply
        return None

    # ------------------------------------------------------------ aiosmtpd hooks

    def session_opened(self, session: Session) -> None:
        """Called by the server for each new connection: numbers the session from 1."""
        with self.lock:
            self.sessions += 1
            session.number = self.sessions  # type: ignore[attr-defined]
            session.messages = 0  # type: ignore[attr-defined]

    def session_idle(self, session: Session) -> None:
        with self.lock:
            self.idle_drops += 1

    async def handle_EHLO(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        refusal = self._refusal(Stage.EHLO, session, [hostname])
        if refusal is not None:
            return [refusal]
        session.host_name = hostname  # with this hook, aiosmtpd leaves it to us
        # aiosmtpd reads and answers commands in order whatever arrives at once, which is all
        # RFC 2920 asks of a server; it only does not say so. Real relays (Postfix) do.
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str) -> str:  # noqa: N802
        refusal = self._refusal(Stage.EHLO, session, [hostname])
        if refusal is not None:
            return refusal
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        cap = self.max_messages_per_session
        if cap is not None and getattr(session, "messages", 0) >= cap:
            with self.lock:
                self.refusals.append(Refusal(_number(session), Stage.MAIL, 421, address.lower(), "message cap"))
            return MESSAGE_CAP_REPLY
        refusal = self._refusal(Stage.MAIL, session, [address])
        if refusal is not None:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self._refusal(Stage.RCPT, session, [address])
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def refuse_data_command(self, session: Session, envelope: Envelope) -> str | None:
        """The reply refusing the DATA command itself, or None to go on (called by the server)."""
        return self._refusal(Stage.DATA, session, envelope.rcpt_tos)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        refusal = self._refusal(Stage.END_OF_DATA, session, envelope.rcpt_tos)
        if refusal is not None:
            return refusal
        with self.lock:
            if self.maildir is not None:
                self.maildir.add(envelope.content)
                self.received.append(
                    Received(
                        _number(session),
                        envelope.mail_from,
                        tuple(envelope.rcpt_tos),
                        tuple(envelope.mail_options),
                        bytes(envelope.original_content),
                    )
                )
            for address in envelope.rcpt_tos:
                self.accepted[address.lower()] += 1
            total = sum(self.accepted.values())
            session.messages = getattr(session, "messages", 0) + 1  # type: ignore[attr-defined]
        if self.on_message is not None:
            self.on_message(total, session.peer)
        return "250 Message accepted for delivery"


def _number(session: Session) -> int:
    return getattr(session, "number", 0)


class RelaySMTP(SMTP):
    """aiosmtpd's server with what its hooks cannot do: refusing the DATA command before 354,
    closing after a 421, and saying 421 before dropping an idle session."""

    def connection_made(self, transport: Any) -> None:
        starttls = self._original_transport is not None  # a second call, for the TLS layer
        super().connection_made(transport)
        if not starttls and hasattr(self.event_handler, "session_opened"):
            self.event_handler.session_opened(self.session)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802
        # Only a well-formed DATA in a transaction with recipients reaches a relay's policy; the
        # rest gets aiosmtpd's own 503/501.
        if self.session.host_name and self.envelope.rcpt_tos and not arg:
            refusal = self.event_handler.refuse_data_command(self.session, self.envelope)
            if refusal is not None:
                await self.push(refusal)
                return
        await super().smtp_DATA(arg)

    async def push(self, status: AnyStr) -> None:
        await super().push(status)
        line = status if isinstance(status, str) else status.decode("ascii", "replace")
        if line.startswith("421 ") and self.transport is not None:
            # RFC 5321 3.8: a server replying 421 closes the channel; no further command is read
            # (the same way aiosmtpd ends a session after QUIT).
            self._handler_coroutine.cancel()
            self.transport.close()

    def _timeout_cb(self) -> None:
        if hasattr(self.event_handler, "session_idle"):
            self.event_handler.session_idle(self.session)
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(IDLE_REPLY)  # flushed before the close below takes effect
        super()._timeout_cb()


class RelayController(Controller):
    """aiosmtpd's threaded controller serving ``RelaySMTP``."""

    def factory(self) -> SMTP:
        return RelaySMTP(self.handler, **self.SMTP_kwargs)

    def start(self) -> None:
        super().start()
        # start() connects once to see the server answer (it returns after the greeting, so the
        # session is counted by then): that probe is nobody's session.
        with self.handler.lock:
            self.handler.sessions = 0


def start_server(
    maildir: str | Path | None,
    host: str = "127.0.0.1",
    port: int = 8025,
    reject_rules: dict[str, int] | None = None,
    *,
    rules: Iterable[Rule] = (),
    max_messages_per_session: int | None = None,
    idle_timeout: float | None = None,
    smtputf8: bool = True,
) -> tuple[Controller, MaildirHandler]:
    """Start the server in a thread on ``host:port``; returns its controller (``.stop()``) and handler.

    ``idle_timeout`` in seconds (None: aiosmtpd's 300). ``smtputf8`` True, aiosmtpd's controller
    default, offers SMTPUTF8. The other arguments are ``MaildirHandler``'s.
    """
    handler = MaildirHandler(maildir, reject_rules, rules=rules, max_messages_per_session=max_messages_per_session)
    controller = RelayController(
        handler,
        hostname=host,
        port=port,
        enable_SMTPUTF8=smtputf8,
        timeout=AIOSMTPD_DEFAULT_TIMEOUT if idle_timeout is None else idle_timeout,
    )
    controller.start()
    return controller, handler


def connection_factory(port: int, host: str = "127.0.0.1", timeout: float = 30) -> SmtpFactory:
    """What ``send_chunk`` and ``RelaySession`` take to open a connection to a local server on
    ``port``: plain SMTP, QUIT when it ends (for the tests and the benchmarks)."""

    @contextmanager
    def connection() -> Iterator[smtplib.SMTP]:
        client = smtplib.SMTP(host, port, timeout=timeout)
        try:
            yield client
        finally:
            client.quit()

    return connection


@contextmanager
def running_server(maildir: str | Path | None, **options: Any) -> Iterator[tuple[int, MaildirHandler]]:
    """``start_server`` on a free loopback port for the length of a ``with``: (port, handler)."""
    port = free_port()
    controller, handler = start_server(maildir, port=port, **options)
    try:
        yield port, handler
    finally:
        controller.stop()


def _parse_rule(text: str) -> tuple[str, int]:
    pattern, _, code = text.rpartition("=")
    if not pattern or not code.isdigit():
        raise argparse.ArgumentTypeError(f"reject rule must look like PATTERN=CODE, got {text!r}")
    return pattern, int(code)


def _parse_stage_rule(text: str) -> Rule:
    """``STAGE:PATTERN=CODE`` or ``STAGE:PATTERN=CODE TEXT``: TEXT replaces the reply after the
    code (``rcpt:*@spam.test=550 5.7.1 Message rejected as spam``), so a refusal by any enhanced
    status code can be tried by hand (campaign.qualification tells hard from soft by it)."""
    stage, _, rest = text.partition(":")
    pattern, _, answer = rest.partition("=")
    code, _, reply = answer.partition(" ")
    try:
        if not pattern or not code.isdigit():
            raise ValueError("no PATTERN=CODE")
        return Rule(Stage(stage), int(code), pattern, text=reply.strip() or None)
    except ValueError as exc:
        stages = ", ".join(s.value for s in Stage)
        raise argparse.ArgumentTypeError(
            f"rule must look like STAGE:PATTERN=CODE[ TEXT] with STAGE one of {stages} and a 4xx/5xx CODE, "
            f"got {text!r} ({exc})"
        ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--maildir", help="folder where every accepted mail is stored")
    target.add_argument("--discard", action="store_true", help="count mail without storing it (benchmarks)")
    parser.add_argument("--reject", type=_parse_rule, action="append", help="PATTERN=CODE at RCPT TO, repeatable")
    parser.add_argument(
        "--rule",
        type=_parse_stage_rule,
        action="append",
        default=[],
        help="STAGE:PATTERN=CODE[ TEXT], repeatable; STAGE is one of ehlo, mail, rcpt, data, end_of_data; "
        "TEXT replaces the reply after the code "
        "(e.g. rcpt:*@x.test=421, 'rcpt:*@spam.test=550 5.7.1 Rejected as spam')",
    )
    parser.add_argument("--max-messages-per-session", type=int, help="421 and close after N messages")
    parser.add_argument("--idle-timeout", type=float, help="seconds before an idle session gets 421 and is closed")
    parser.add_argument(
        "--smtputf8", action=argparse.BooleanOptionalAction, default=True, help="offer SMTPUTF8 (default: yes)"
    )
    args = parser.parse_args(argv)
    rules = dict(args.reject) if args.reject else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s devsmtp %(message)s")
    controller, _ = start_server(
        args.maildir,
        args.host,
        args.port,
        rules,
        rules=args.rule,
        max_messages_per_session=args.max_messages_per_session,
        idle_timeout=args.idle_timeout,
        smtputf8=args.smtputf8,
    )
    log.info(
        "listening on %s:%s, %s",
        args.host,
        args.port,
        f"storing mail in {args.maildir}" if args.maildir else "discarding mail",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
