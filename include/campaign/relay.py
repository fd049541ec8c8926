"""One chunk's conversation with the SMTP relay: send a message, tell the relay's answer about the
recipient or the message from a trouble with the connection, and reconnect by itself.

Relays answer ``421`` at any stage and close (RFC 5321 section 3.8: "service not available,
closing transmission channel"), drop idle connections, and cap the messages of one session.
None of that says anything about the recipient: the message in flight is sent again on a new
connection, a bounded number of times with a short backoff, and only a relay that stays
unreachable raises :class:`SmtpUnavailable` (the task retries later). Replies about the
recipient or the message (4xx, 5xx other than 421) are returned to the caller, who records them.

A message whose connection is lost after its data was sent but before the relay's reply is sent
again: the relay may have accepted the first copy (RFC 5321 section 6.1 accepts such duplicates
over lost mail); both copies carry the same Message-ID.
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass

from campaign.errors import SmtpUnavailable

SmtpFactory = Callable[[], AbstractContextManager[smtplib.SMTP]]
_LEADING_DOT = re.compile(rb"(?m)^\.")

# Short: a relay that closed one session usually takes the next at once. The sum (15.5 s) bounds
# how long a chunk waits for a relay before its task gives up and Airflow retries it later.
DEFAULT_RECONNECT_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
SERVICE_NOT_AVAILABLE = 421  # RFC 5321 section 4.2.3: the server closes the channel


class MessageNotSendable(Exception):
    """This message cannot go to this relay whatever the connection (e.g. it needs SMTPUTF8 and the
    relay does not offer it): record the recipient ``failed`` with the message and go on."""


@dataclass(frozen=True)
class Reply:
    """The relay's final answer about one message: ``code`` 250 (or 251) when accepted, else the
    refusal and the stage it came at (``MAIL``, ``RCPT`` or ``DATA``)."""

    code: int
    text: str
    stage: str = ""

    @property
    def accepted(self) -> bool:
        return self.code in (250, 251)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SmtpUnavailable):  # the factory's own sentence (Connection name, host)
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    # A relay's words go to the sending log; PostgreSQL's text cannot hold NUL, and one odd reply
    # must not make the whole batch of rows fail.
    return text.replace("\x00", "")


class RelaySession:
    """A persistent connection to the relay that reconnects by itself.

    ``smtp_factory()`` opens one connection (a context manager, entered and left here);
    ``reconnect_delays`` are the waits, in seconds, before each new attempt after the connection
    failed for the same message (their count bounds the attempts); ``messages_per_connection``
    (0: unlimited) opens a new session after so many messages, for relays that cap sessions;
    ``pipelining`` sends MAIL, RCPT and DATA in one write when the relay offers PIPELINING
    (RFC 2920): two round trips a message instead of four, what makes a distant relay fast.

    Use as a context manager; :meth:`send` raises :class:`SmtpUnavailable` when the relay stays
    unreachable and :class:`MessageNotSendable` for a message this relay cannot take.
    """

    def __init__(
        self,
        smtp_factory: SmtpFactory,
        *,
        reconnect_delays: Sequence[float] = DEFAULT_RECONNECT_DELAYS,
        messages_per_connection: int = 0,
        pipelining: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.smtp_factory = smtp_factory
        self.pipelining = pipelining
        self.reconnect_delays = tuple(reconnect_delays)
        self.messages_per_connection = messages_per_connection
        self.sleep = sleep
        self.connections = 0  # attempts to open one, for the task's summary line
        self._stack: ExitStack | None = None
        self._smtp: smtplib.SMTP | None = None
        self._on_connection = 0
        self._deferred_in_a_row = 0  # messages in a row given back as 421 deferrals

    def __enter__(self) -> RelaySession:
        failures, last = 0, ""
        while True:
            self._wait_or_give_up(failures, last)
            try:
                self._connect()
                return self
            except (SmtpUnavailable, OSError, smtplib.SMTPException) as exc:
                failures, last = failures + 1, _describe(exc)

    def __exit__(self, *exc_info) -> None:
        self._drop()

    # ------------------------------------------------------------------ connection

    def _connect(self) -> smtplib.SMTP:
        self.connections += 1
        stack = ExitStack()
        try:
            smtp = stack.enter_context(self.smtp_factory())
            smtp.ehlo_or_helo_if_needed()
        except BaseException:
            self._close_quietly(stack)
            raise
        self._stack, self._smtp, self._on_connection = stack, smtp, 0
        return smtp

    def _drop(self) -> None:
        stack, self._stack, self._smtp = self._stack, None, None
        if stack is not None:
            self._close_quietly(stack)

    @staticmethod
    def _close_quietly(stack: ExitStack) -> None:
        try:
            stack.close()  # the factory says QUIT; on a dead connection that fails, which is fine
        except (OSError, smtplib.SMTPException):
            pass

    def _wait_or_give_up(self, failures: int, last: str, *, at_once: bool = False) -> None:
        """Before attempt ``failures + 1``: wait its backoff (none when ``at_once``), or give up
        when they are spent."""
        if not failures:
            return
        if failures > len(self.reconnect_delays):
            raise SmtpUnavailable(
                f"The SMTP relay stays unavailable after {len(self.reconnect_delays)} reconnections (last: {last})."
            )
        if not at_once:
            self.sleep(self.reconnect_delays[failures - 1])

    @property
    def reconnects(self) -> int:
        """Connections attempted after the first one."""
        return max(self.connections - 1, 0)

    @property
    def smtputf8(self) -> bool:
        """Whether the relay of the current connection offers SMTPUTF8 (RFC 6531)."""
        return self._smtp is not None and self._smtp.has_extn("smtputf8")

    @property
    def eightbitmime(self) -> bool:
        """Whether the relay of the current connection offers 8BITMIME (RFC 6152)."""
        return self._smtp is not None and self._smtp.has_extn("8bitmime")

    # ------------------------------------------------------------------ sending

    def send(self, envelope_sender: str, recipient: str, data: bytes, mail_options: Sequence[str] = ()) -> Reply:
        """Send one message (``data``: the whole message, CRLF line ends) to one recipient.

        Returns the relay's answer about the message; a 421, a dropped connection or a socket
        error reconnects and sends again (bounded by ``reconnect_delays``). ``mail_options`` go
        with MAIL FROM, e.g. ``("SMTPUTF8", "BODY=8BITMIME")`` for a message or an envelope that
        is not ASCII (RFC 6531 section 3.4).
        """
        options = list(mail_options)
        smtputf8 = any(option.upper() == "SMTPUTF8" for option in options)
        failures, last = 0, ""
        # The last failure, when it was a 421 to this message on a connection that opened fine.
        refused_on_working_connection: Reply | None = None
        # A session that carried mail and then ended (a cap, an idle drop) is reopened at once:
        # relays take a new connection right away; the backoff is for a relay in trouble.
        ended_after_mail = False
        while True:
            if (
                failures > len(self.reconnect_delays)
                and refused_on_working_connection is not None
                and not self._deferred_in_a_row
            ):
                # The relay answers 421 to this recipient through every new connection: a
                # deferral of the recipient (retried, then a soft bounce), not the relay's loss.
                # A second one in a row means the relay refuses everyone: give up then.
                self._deferred_in_a_row += 1
                return refused_on_working_connection
            self._wait_or_give_up(failures, last, at_once=failures == 1 and ended_after_mail)
            if self._smtp is not None and self.messages_per_connection:
                if self._on_connection >= self.messages_per_connection:
                    self._drop()
            try:
                smtp = self._smtp or self._connect()
            except (SmtpUnavailable, OSError, smtplib.SMTPException) as exc:
                failures, last, refused_on_working_connection = failures + 1, _describe(exc), None
                continue
            if not smtputf8 and not (envelope_sender.isascii() and recipient.isascii()):
                # smtplib would fail half-way through the transaction, writing a command in ASCII.
                raise MessageNotSendable("an address is not ASCII and SMTPUTF8 (RFC 6531) was not asked for")
            if smtputf8 and not smtp.has_extn("smtputf8"):
                raise MessageNotSendable("the relay does not offer SMTPUTF8 (RFC 6531), which this address needs")
            try:
                if self.pipelining and smtp.has_extn("pipelining"):
                    pipelined_sendmail(smtp, envelope_sender, recipient, data, options)
                else:
                    smtp.sendmail(envelope_sender, [recipient], data, mail_options=options)
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = next(iter(exc.recipients.values()))
                reply = Reply(code, _text(text), "RCPT")
            except smtplib.SMTPSenderRefused as exc:
                reply = Reply(exc.smtp_code, _text(exc.smtp_error), "MAIL")
            except smtplib.SMTPDataError as exc:
                reply = Reply(exc.smtp_code, _text(exc.smtp_error), "DATA")
            except smtplib.SMTPNotSupportedError as exc:
                raise MessageNotSendable(f"the relay cannot take this message: {exc}") from None
            except (smtplib.SMTPException, OSError) as exc:  # lost, reset, timed out, 421 at EHLO
                ended_after_mail = failures == 0 and self._on_connection > 0
                self._drop()
                failures, last, refused_on_working_connection = failures + 1, _describe(exc), None
                continue
            else:
                self._on_connection += 1
                self._deferred_in_a_row = 0
                return Reply(250, "accepted")
            if reply.code == SERVICE_NOT_AVAILABLE or smtp.sock is None:
                # About the session, not the recipient (smtplib has closed it): send again.
                ended_after_mail = failures == 0 and self._on_connection > 0
                self._drop()
                failures, last = failures + 1, f"{reply.code} {reply.text} at {reply.stage} for {recipient}"
                refused_on_working_connection = reply if reply.stage in ("RCPT", "DATA") else None
                continue
            self._deferred_in_a_row = 0
            self._reset(smtp)
            return reply

    def _reset(self, smtp: smtplib.SMTP) -> None:
        """End the refused transaction, so the next message starts a new one (RFC 5321 4.1.1.5).

        smtplib resets after a refused MAIL or RCPT but not after a refused DATA command, and the
        relay would then answer the next MAIL with 503 "nested MAIL command".
        """
        try:
            smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()  # the next message reconnects


def pipelined_sendmail(smtp: smtplib.SMTP, from_addr: str, to_addr: str, msg: bytes, mail_options: list[str]) -> None:
    """``smtp.sendmail(from_addr, [to_addr], msg, mail_options)`` for a relay offering PIPELINING.

    MAIL FROM, RCPT TO and DATA go in one write and their replies are read in order (RFC 2920
    section 3.1); then the message and its final dot, and that reply. Same outcomes as smtplib's
    ``sendmail`` for one recipient, which the tests check against it on the same relay: returns
    on acceptance; raises ``SMTPSenderRefused``, ``SMTPRecipientsRefused`` or ``SMTPDataError``
    with the relay's reply, after closing on a 421 as smtplib does (any other refusal leaves the
    transaction to the caller's RSET, as smtplib does after a refused DATA);
    ``SMTPServerDisconnected`` or ``OSError`` when the connection is lost.
    """
    options = list(mail_options)
    if smtp.has_extn("size"):
        options.insert(0, f"SIZE={len(msg)}")
    # smtplib's own quoting and encoding rules: commands in UTF-8 only under SMTPUTF8 (RFC 6531 3.4).
    smtputf8 = any(option.upper() == "SMTPUTF8" for option in options)
    mail = f"MAIL FROM:{smtplib.quoteaddr(from_addr)}{''.join(' ' + option for option in options)}"
    rcpt = f"RCPT TO:{smtplib.quoteaddr(to_addr)}"
    smtp.send(f"{mail}\r\n{rcpt}\r\nDATA\r\n".encode("utf-8" if smtputf8 else "ascii"))
    replies: list[tuple[int, bytes]] = []
    for _command in ("MAIL", "RCPT", "DATA"):
        replies.append(smtp.getreply())
        if replies[-1][0] == SERVICE_NOT_AVAILABLE:
            break  # the relay has closed the channel: no further reply comes
    refused: smtplib.SMTPResponseException | None = None
    if replies[0][0] != 250:
        refused = smtplib.SMTPSenderRefused(*replies[0], from_addr)
    elif replies[1][0] not in (250, 251):
        refused = smtplib.SMTPRecipientsRefused({to_addr: replies[1]})
    elif replies[2][0] != 354:
        refused = smtplib.SMTPDataError(*replies[2])
    if refused is not None:
        if replies[-1][0] == SERVICE_NOT_AVAILABLE:
            smtp.close()
        elif replies[-1][0] == 354:  # a relay that took DATA anyway waits for a message: an empty one
            smtp.send(b".\r\n")
            smtp.getreply()
        raise refused
    quoted = _LEADING_DOT.sub(b"..", msg)  # RFC 5321 4.5.2 dot-stuffing, as smtplib.SMTP.data does
    if not quoted.endswith(b"\r\n"):
        quoted += b"\r\n"
    smtp.send(quoted + b".\r\n")
    code, text = smtp.getreply()
    if code != 250:
        if code == SERVICE_NOT_AVAILABLE:
            smtp.close()
        raise smtplib.SMTPDataError(code, text)
