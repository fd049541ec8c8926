"""Sending one chunk of a delivery over one SMTP connection, exactly once per recipient.

Exactly-once, and its bound: a recipient is skipped when it already has a sending-log row, and
rows are committed every ``commit_every`` accepted messages, at least once a second
(``CONTROL_CHECK_SECONDS``), and before any error leaves the chunk. Only a process killed outright
(SIGKILL, machine loss) can lose the rows of messages accepted since the last commit, so a
retried chunk re-sends **at most ``commit_every`` messages per killed attempt** (fewer at a
rate under ``commit_every`` a second); those copies carry the same Message-ID as the first ones.

Visible within a second: the machine rules judge an open or click by the time since the
recipient's row was written (``campaign.machine``), so a row must not wait for the 100th message,
which at a low rate limit is minutes away. The chunk commits its pending rows each time it looks
at the controls (once a second, the same monotonic-clock comparison between messages as before),
and before any wait that would hold them past that look: the rate limit's slots, the relay's
reconnection backoff. A row can wait longer only while the relay itself takes longer than that to
answer the message in flight.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import controls, qualification
from campaign.clock import utcnow
from campaign.db import sql
from campaign.deliveries import Delivery, load_delivery
from campaign.errors import (
    AddressNeedsSmtpUtf8,
    InvalidAddress,
    PermanentError,
    SendConflict,
    SmtpUnavailable,
    TemplateProblem,
)
from campaign.message import BuiltMessage, MessageSkeleton
from campaign.pacing import Pacer
from campaign.profiles import is_valid_email
from campaign.relay import DEFAULT_RECONNECT_DELAYS, MessageNotSendable, RelaySession, SmtpFactory
from campaign.rendering import RenderedMessage, compile_templates, recipient_context, render, tracking_base_url
from campaign.return_path import return_path_setting
from campaign.settings import seconds_list, whole_number
from campaign.tokens import tracking_secret
from campaign.tracking import Tracker, load_links

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 500
DEFAULT_COMMIT_EVERY = 100
DEFAULT_SOFT_RETRY_DELAYS = (2.0, 5.0)
# So many permanent refusals of the message itself in a row mean the relay rejects the delivery
# (content, policy, server fault), not the recipients: stop before quarantining the whole audience.
MAX_CONSECUTIVE_MESSAGE_REFUSALS = 20
# How often a chunk looks at the delivery's controls (pause, stop, the automatic brake): the
# delay before a pause or a stop takes effect, for one primary-key read a second. Each look also
# commits the pending sending-log rows in the same transaction, so a row is visible within about
# this long of the relay's acceptance (the machine rules measure from it, and judge an open or
# click of a target without a row yet by rule before_send_logged: campaign.machine).
CONTROL_CHECK_SECONDS = 1.0
# A chunk started (or retried) while its delivery is in one of these checks the controls first
# and sends nothing.
HELD_STATUSES = ("paused", "stopping", "stopped")


@dataclass
class ChunkResult:
    first_seq: int
    last_seq: int
    counts: Counter = field(default_factory=Counter)
    already_logged: int = 0
    seconds: float = 0.0
    reconnects: int = 0
    peak_rss_mib: float | None = None
    max_rate: int | None = None  # the delivery's rate limit, messages an hour
    paced_seconds: float = 0.0  # seconds this chunk waited for the rate limit
    held: str | None = None  # why the chunk ended early: the delivery was paused or stopped

    def summary(self) -> dict[str, Any]:
        return {
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "sent": self.counts["sent"],
            "bounced": self.counts["bounced"],
            "failed": self.counts["failed"],
            "ignored": self.counts["ignored"],
            "seconds": round(self.seconds, 3),
            "reconnects": self.reconnects,
            "peak_rss_mib": self.peak_rss_mib,
            "paced_seconds": round(self.paced_seconds, 3),
            "held": self.held,
        }

    def summary_line(self) -> str:
        """The task log's one line for the data team: counts, time, rate, reconnections, memory.
        The counts are this attempt's (a retried or resumed chunk skips the recipients its earlier
        attempts logged): the delivery's totals are aggregate_kpis' table."""
        processed = sum(self.counts.values())
        rate = processed / self.seconds if self.seconds else 0.0
        memory = "unknown" if self.peak_rss_mib is None else f"{self.peak_rss_mib} MiB"
        paced = (
            f", rate limit {self.max_rate:,}/h for the delivery ({self.paced_seconds:.1f}s waited)"
            if self.max_rate
            else ""
        )
        return (
            f"send_chunk: seq {self.first_seq}-{self.last_seq}, this attempt: sent={self.counts['sent']} "
            f"bounced={self.counts['bounced']} failed={self.counts['failed']} ignored={self.counts['ignored']} "
            f"in {self.seconds:.2f}s ({rate:.0f} recipients/s), {self.reconnects} reconnections, "
            f"peak memory {memory}{paced}" + (f"; ended early: {self.held}" if self.held else "")
        )


def peak_rss_mib() -> float | None:
    """This process's peak resident memory in MiB (Linux ``VmHWM``), None elsewhere: a chunk's
    must not grow with the chunk's size."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return None if kib is None else round(kib / 1024, 1)


RECONNECT_DELAYS_ENV = "CAMPAIGN_SMTP_RECONNECT_DELAYS"
MESSAGES_PER_CONNECTION_ENV = "CAMPAIGN_SMTP_MESSAGES_PER_CONNECTION"


def reconnect_delays_setting() -> tuple[float, ...]:
    """``CAMPAIGN_SMTP_RECONNECT_DELAYS``: comma-separated seconds (default ``0.5,1,2,4,8``), each
    under an hour; raises ``ConfigurationError`` otherwise."""
    return seconds_list(RECONNECT_DELAYS_ENV, DEFAULT_RECONNECT_DELAYS, example="0.5,1,2,4,8")


def messages_per_connection_setting() -> int:
    """``CAMPAIGN_SMTP_MESSAGES_PER_CONNECTION``: a new SMTP session after so many messages, for
    relays that cap sessions (default 0: as many as the relay takes; a 421 reconnects anyway)."""
    return whole_number(MESSAGES_PER_CONNECTION_ENV, 0, minimum=0, what="a whole number >= 0")


class ChunkHeld(Exception):
    """The delivery was paused (by an operator or the automatic brake) or stopped while this
    chunk sent: its rows are committed, and ``result`` says what it did before. ``paused`` tells
    whether it should come back (paused) or end for good (stopped)."""

    def __init__(self, result: ChunkResult, reason: str, paused: bool, state: controls.SendState) -> None:
        super().__init__(reason)
        self.result, self.reason, self.paused, self.state = result, reason, paused, state


@dataclass
class _Pending:
    """A recipient whose message got a 4xx and waits for another attempt."""

    recipient: dict[str, Any]
    message: BuiltMessage
    attempts: int
    code: int
    reply: str


WORKER_NAME_ENV = "CAMPAIGN_WORKER_NAME"


def worker_identity() -> str:
    """Who wrote a sending-log row: the worker's name (or host) and the task process id."""
    return f"{os.environ.get(WORKER_NAME_ENV) or socket.gethostname()}:{os.getpid()}"


class _ChunkSender:
    def __init__(
        self,
        engine: Engine,
        delivery: Delivery,
        run_id: str,
        result: ChunkResult,
        commit_every: int,
    ) -> None:
        self.engine = engine
        self.delivery = delivery
        self.run_id = run_id
        self.result = result
        self.commit_every = commit_every
        self.templates = compile_templates(delivery.content)
        self.secret = tracking_secret()
        self.base_url = tracking_base_url()
        self.return_path = return_path_setting()
        self.tracker = (
            Tracker(self.secret, self.base_url, delivery.id, load_links(engine, delivery.id))
            if delivery.tracking
            else None
        )
        self.pacer = Pacer(engine, delivery.id, delivery.max_rate, sleep=self.sleep) if delivery.max_rate else None
        self.use_relay(None)
        self.worker = worker_identity()
        self.consecutive_message_refusals = 0
        self.buffer: list[dict[str, Any]] = []
        self.to_quarantine: list[dict[str, Any]] = []
        self.controls_checked = time.monotonic()
        self.unbraked_failures = 0  # bounces and errors recorded since the last brake check

    def use_relay(self, relay: RelaySession | None) -> None:
        """Build messages for this relay session.

        Every message that can be written in ASCII is (encoded-words, quoted-printable, A-labels),
        whatever the relay offers: a message flagged SMTPUTF8 bounces at any later hop without
        SMTPUTF8 (RFC 6531 3.2). Only a message that cannot be ASCII (a non-ASCII local part) is
        built for SMTPUTF8, and only while the relay of the moment offers it.
        """
        self.relay = relay
        content = self.delivery.content
        try:
            self.skeleton: MessageSkeleton | None = MessageSkeleton.for_delivery(
                content, self.base_url, self.secret, return_path=self.return_path
            )
        except AddressNeedsSmtpUtf8:  # the sender itself needs SMTPUTF8
            self.skeleton = None
        self.utf8_skeleton: MessageSkeleton | None = None

    def build(self, rendered: RenderedMessage, recipient: dict[str, Any]) -> BuiltMessage:
        """The recipient's message, in ASCII when it can be (see ``use_relay``); raises
        ``AddressNeedsSmtpUtf8`` when it cannot and the relay does not offer SMTPUTF8."""
        if self.skeleton is not None:
            try:
                return self.skeleton.build(rendered, recipient["email"], recipient["profile_id"])
            except AddressNeedsSmtpUtf8:
                pass
        if self.relay is None or not self.relay.smtputf8:
            whose = "the delivery's sender" if self.skeleton is None else f"the address {recipient['email']!r}"
            raise AddressNeedsSmtpUtf8(
                f"{whose} has a non-ASCII local part and the relay does not offer SMTPUTF8 (RFC 6531)"
            )
        if self.utf8_skeleton is None:
            self.utf8_skeleton = MessageSkeleton.for_delivery(
                self.delivery.content, self.base_url, self.secret, smtputf8=True, return_path=self.return_path
            )
        return self.utf8_skeleton.build(rendered, recipient["email"], recipient["profile_id"])

    def record(
        self,
        recipient: dict[str, Any],
        status: str,
        *,
        failure_type: str | None = None,
        reason: str | None = None,
        code: int | None = None,
        reply: str | None = None,
        message_id: str | None = None,
        attempts: int = 1,
    ) -> None:
        now = utcnow()
        self.buffer.append(
            {
                "delivery_id": self.delivery.id,
                "profile_id": recipient["profile_id"],
                "seq": recipient["seq"],
                "email": recipient["email"],
                "status": status,
                "failure_type": failure_type,
                "reason": reason,
                "smtp_code": code,
                "smtp_reply": reply,
                "message_id": message_id,
                "attempts": attempts,
                "worker": self.worker,
                "run_id": self.run_id,
                "logged_at": now,
            }
        )
        if status == "bounced" and failure_type == "hard":
            self.to_quarantine.append(
                {"profile_id": recipient["profile_id"], "reason": f"hard bounce {code}: {reply}", "now": now}
            )
        self.result.counts[status] += 1
        if status in ("bounced", "failed"):
            self.unbraked_failures += 1
        if len(self.buffer) >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        with self.engine.begin() as conn:
            self._write(conn)
        self._written()

    def _write(self, conn: Connection) -> None:
        """Insert the pending rows (and quarantines) in ``conn``'s transaction; ``_written`` once
        it committed, so a failed commit keeps them for the next attempt."""
        if self.buffer:
            conn.execute(sql("insert_broad_log"), self.buffer)
            if self.to_quarantine:
                conn.execute(sql("quarantine_profile"), self.to_quarantine)

    def _written(self) -> None:
        self.buffer.clear()
        self.to_quarantine.clear()

    def sleep(self, seconds: float) -> None:
        """``time.sleep`` for the send's waits (the rate limit's slots, the relay's reconnection
        backoff): the pending rows are committed first when the wait would hold them past the next
        look at the controls, so a slow or paced send keeps each row within about a second of its
        acceptance too. A short wait of a fast paced send commits nothing: the look does."""
        if self.buffer and time.monotonic() + seconds >= self.controls_checked + CONTROL_CHECK_SECONDS:
            self.flush()
        time.sleep(seconds)

    def between_messages(self) -> None:
        """Look at the delivery's controls once every ``CONTROL_CHECK_SECONDS``, committing the
        pending rows with it, and after each commit that wrote a bounce or an error: a fast relay
        refusing most recipients would otherwise get a second of messages per chunk past the
        brake's threshold. One monotonic-clock comparison a message."""
        if (
            self.unbraked_failures and not self.buffer
        ) or time.monotonic() - self.controls_checked >= CONTROL_CHECK_SECONDS:
            self.check_controls()

    def check_controls(self) -> None:
        """Commit this chunk's pending rows and read the delivery's controls, in one transaction;
        raise ``ChunkHeld`` once the delivery is paused or stopped. First let the automatic brake
        read the rows when they include a failure."""
        self.controls_checked = time.monotonic()
        if self.unbraked_failures:
            self.flush()
            self.unbraked_failures = 0
            reading = controls.check_brake(self.engine, self.delivery.id, self.run_id)
            if reading is not None:
                log.warning("send_chunk: delivery %s paused itself: %s", self.delivery.id, reading.sentence())
        with self.engine.begin() as conn:
            self._write(conn)
            state = controls.send_state(conn, self.delivery.id)
        self._written()
        if state.status in ("paused", "stopping", "stopped"):
            why = controls.last_control(self.engine, self.delivery.id) or f"the delivery is {state.status}"
            raise ChunkHeld(self.result, why, state.status == "paused", state)

    def prepare(self, recipient: dict[str, Any]) -> BuiltMessage | None:
        """The message for a recipient, or None when the recipient was recorded without sending."""
        if recipient["blocklisted"] or recipient["quarantine_reason"]:
            why = "blocklisted" if recipient["blocklisted"] else "quarantined"
            self.record(recipient, "ignored", reason=f"profile {why} after preparation")
            return None
        if not is_valid_email(recipient["email"]):
            self.record(recipient, "failed", failure_type="hard", reason="malformed address")
            return None
        try:
            rendered = render(self.templates, recipient_context(recipient, self.delivery.content), self.delivery.id)
        except TemplateProblem as exc:
            self.record(recipient, "failed", reason=f"personalisation failed: {exc}")
            return None
        if self.tracker is not None:
            rendered = replace(rendered, html=self.tracker.rewrite(rendered.html, recipient["profile_id"]))
        try:
            return self.build(rendered, recipient)
        except AddressNeedsSmtpUtf8 as exc:
            self.record(recipient, "failed", failure_type="hard", reason=f"address needs SMTPUTF8: {exc}")
        except InvalidAddress as exc:
            self.record(recipient, "failed", failure_type="hard", reason=f"malformed address: {exc}")
        except Exception as exc:  # one recipient's data must never stop the others
            log.warning("send_chunk: the message to profile %s cannot be built: %r", recipient["profile_id"], exc)
            self.record(recipient, "failed", reason=f"message cannot be built: {type(exc).__name__}: {exc}")
        return None

    def attempt(
        self, relay: RelaySession, recipient: dict[str, Any], message: BuiltMessage, attempts: int, left: int
    ) -> _Pending | None:
        """Send once; record the final outcome, or return the 4xx to retry later. ``left``: at
        most so many messages remain to send in this pass, this one included (for the pacer).

        Replies about the connection never reach here: the relay session reconnects and sends
        again, or raises ``SmtpUnavailable`` when the relay stays unreachable.
        """
        if self.pacer is not None:
            self.pacer.wait(left, meanwhile=self.check_controls, every=CONTROL_CHECK_SECONDS)
        try:
            reply = relay.send(message.envelope_from, message.envelope_to, message.data, message.mail_options)
        except MessageNotSendable as exc:
            self.record(recipient, "failed", failure_type="hard", reason=str(exc), message_id=message.message_id)
            return None
        if reply.accepted:
            self.consecutive_message_refusals = 0
            self.record(recipient, "sent", code=reply.code, message_id=message.message_id, attempts=attempts)
            return None
        if reply.stage == "MAIL":
            if reply.code >= 500:
                raise PermanentError(
                    f"The SMTP server refuses the sender {message.envelope_from!r}: {reply.code} {reply.text}. "
                    "Fix the delivery's sender or the relay's settings."
                )
            return self._refused(recipient, message, attempts, reply.code, reply.text, "sender deferred")
        if reply.stage == "DATA":
            if reply.code >= 500:
                self.consecutive_message_refusals += 1
                if self.consecutive_message_refusals > MAX_CONSECUTIVE_MESSAGE_REFUSALS:
                    raise PermanentError(
                        f"The SMTP server refused {self.consecutive_message_refusals} messages in a row after "
                        f"accepting their recipients (last: {reply.code} {reply.text}). "
                        "It rejects the message itself, not the addresses: check the relay and the content, "
                        "then clear the failed send_chunk tasks to resume."
                    )
            return self._refused(recipient, message, attempts, reply.code, reply.text, "message refused")
        return self._refused(recipient, message, attempts, reply.code, reply.text, "recipient refused")

    def _refused(
        self, recipient: dict[str, Any], message: BuiltMessage, attempts: int, code: int, reply: str, what: str
    ) -> _Pending | None:
        if 400 <= code < 500:
            return _Pending(recipient, message, attempts, code, reply)
        # A permanent refusal is hard only when it is about the address (campaign.qualification,
        # the rule DSNs follow too): "550 5.7.1 refused as spam" must not quarantine anyone.
        full_reply = f"{code} {reply}"
        status = qualification.reply_status(full_reply)
        self.record(
            recipient,
            "bounced",
            failure_type=qualification.failure_type(status, full_reply) if status and status[0] == "5" else "hard",
            reason=_with_status(what, status),
            code=code,
            reply=reply,
            message_id=message.message_id,
            attempts=attempts,
        )
        return None

    def soft_bounce(self, pending: _Pending) -> None:
        self.record(
            pending.recipient,
            "bounced",
            failure_type="soft",
            reason=_with_status(
                "temporary failure, retries exhausted", qualification.reply_status(f"{pending.code} {pending.reply}")
            ),
            code=pending.code,
            reply=pending.reply,
            message_id=pending.message.message_id,
            attempts=pending.attempts,
        )


def _with_status(reason: str, status: str | None) -> str:
    """The row's reason with the reply's enhanced status code when it has one ("recipient refused
    5.7.1"): the Deployment view's bounces table then says why a refusal was soft or hard."""
    return f"{reason} {status}" if status else reason


def _target_pages(
    engine: Engine, delivery_id: int, first_seq: int, last_seq: int, page_size: int
) -> Iterator[list[dict[str, Any]]]:
    """Stream the not-yet-logged targets of a chunk, one short read per page."""
    after_seq = first_seq - 1
    while True:
        with engine.begin() as conn:
            page = [
                dict(row)
                for row in conn.execute(
                    sql("select_unlogged_targets"),
                    {
                        "delivery_id": delivery_id,
                        "after_seq": after_seq,
                        "last_seq": last_seq,
                        "page_size": page_size,
                    },
                ).mappings()
            ]
        if not page:
            return
        yield page
        after_seq = page[-1]["seq"]


def send_chunk(
    engine: Engine,
    delivery_id: int,
    run_id: str,
    first_seq: int,
    last_seq: int,
    smtp_factory: SmtpFactory,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    commit_every: int = DEFAULT_COMMIT_EVERY,
    soft_retry_delays: tuple[float, ...] = DEFAULT_SOFT_RETRY_DELAYS,
    reconnect_delays: tuple[float, ...] | None = None,
) -> ChunkResult:
    """Send targets ``first_seq..last_seq`` that have no sending-log row yet.

    One relay session for the chunk (see ``campaign.relay``): it reconnects by itself, with
    ``reconnect_delays`` (seconds; default ``CAMPAIGN_SMTP_RECONNECT_DELAYS``) between attempts.
    A recipient that gets a 4xx is tried again after each of ``soft_retry_delays`` (seconds),
    then recorded as a soft bounce. Raises ``SmtpUnavailable`` when the relay stays
    unreachable (what was sent is recorded), ``PermanentError`` when the relay refuses the
    sender or the message itself again and again, ``SendConflict`` when the run does not own
    the delivery.

    Between messages, once a second (``CONTROL_CHECK_SECONDS``), the chunk reads the delivery's
    controls (``campaign.controls``). Paused: it commits its rows and raises ``ChunkHeld``
    (``paused`` true) for the caller to give its slots back and come again. Stopped: it commits
    and returns, ``held`` saying why. A chunk that starts while its delivery is held sends nothing.
    """
    started = time.monotonic()
    delivery = load_delivery(engine, delivery_id)
    if delivery.run_id != run_id or delivery.status not in ("sending", "failed", *HELD_STATUSES):
        raise SendConflict(
            f"Delivery {delivery_id} is {delivery.status} and owned by run {delivery.run_id!r}, "
            f"not by this run ({run_id!r}); this chunk sends nothing."
        )
    if delivery.status == "failed" and controls.reopen_failed_send(engine, delivery_id, run_id):
        log.info("send_chunk: delivery %s was failed; this run sends again, so it is sending again", delivery_id)
    result = ChunkResult(first_seq, last_seq)
    sender = _ChunkSender(engine, delivery, run_id, result, commit_every)
    try:
        sender.check_controls()  # a chunk of a paused or stopped send does not start
        _send_targets(sender, first_seq, last_seq, smtp_factory, page_size, soft_retry_delays, reconnect_delays)
    except ChunkHeld as held:
        result.held = held.reason
        _finish_result(result, sender, delivery, started)
        if held.paused:
            raise
        return result  # stopped: the run's aggregate_kpis cancels the rest
    _finish_result(result, sender, delivery, started)
    return result


def _finish_result(result: ChunkResult, sender: _ChunkSender, delivery: Delivery, started: float) -> None:
    if sender.pacer is not None:
        result.max_rate, result.paced_seconds = delivery.max_rate, sender.pacer.waited
    result.peak_rss_mib = peak_rss_mib()
    result.seconds = time.monotonic() - started


def _send_targets(
    sender: _ChunkSender,
    first_seq: int,
    last_seq: int,
    smtp_factory: SmtpFactory,
    page_size: int,
    soft_retry_delays: tuple[float, ...],
    reconnect_delays: tuple[float, ...] | None,
) -> None:
    engine, delivery_id = sender.engine, sender.delivery.id
    result = sender.result
    pending: list[_Pending] = []
    relay = RelaySession(
        smtp_factory,
        reconnect_delays=reconnect_delays_setting() if reconnect_delays is None else reconnect_delays,
        messages_per_connection=messages_per_connection_setting(),
        sleep=sender.sleep,  # the rows wait no backoff out uncommitted
    )
    try:
        with relay:
            sender.use_relay(relay)
            for page in _target_pages(engine, delivery_id, first_seq, last_seq, page_size):
                for recipient in page:
                    sender.between_messages()
                    message = sender.prepare(recipient)
                    if message is not None:
                        left = last_seq - recipient["seq"] + 1
                        deferred = sender.attempt(relay, recipient, message, attempts=1, left=left)
                        if deferred is not None:
                            pending.append(deferred)
            sender.flush()
            for delay in soft_retry_delays:
                if not pending:
                    break
                sender.check_controls()  # paused: the pending recipients have no row, the resumed chunk sends them
                time.sleep(delay)
                sender.check_controls()
                still_pending = []
                for index, item in enumerate(pending):
                    sender.between_messages()  # the rows of a long retry pass are committed as they go too
                    left = len(pending) - index
                    deferred = sender.attempt(relay, item.recipient, item.message, item.attempts + 1, left=left)
                    if deferred is not None:
                        still_pending.append(deferred)
                pending = still_pending
            for item in pending:
                sender.soft_bounce(item)
            sender.flush()
    except SmtpUnavailable as exc:
        # What was accepted so far is recorded, so the retry resumes after it; the recipients
        # still waiting for a 4xx retry have no row and are sent again by the retry.
        sender.flush()
        raise SmtpUnavailable(
            f"Lost the SMTP server while sending delivery {delivery_id} (seq {first_seq}-{last_seq}): {exc} "
            f"{sum(result.counts.values())} recipients were recorded; the retry resumes after them."
        ) from exc
    except BaseException:
        sender.flush()
        raise
    finally:
        result.reconnects = relay.reconnects
