"""What comes back after the send: asynchronous bounces (DSNs) and spam complaints (feedback reports).

A 250 from the relay is not a delivery: many mailboxes accept a message and bounce it later by
mail, a delivery status notification (DSN, RFC 3464), and recipients press "report spam", which
mailbox providers forward as feedback reports (RFC 5965). ``process_bounces`` reads them from the
bounce mailbox every ten minutes; this module reads one message (``read_report``), applies it to
the campaign database (``apply_report``) and handles a whole mailbox over an ``imaplib`` client
(``process_mailbox``). No Airflow here: ``campaign.airflow_glue`` opens the mailbox.

Reading one message:

- **Which row.** The address the report came to: our return path (``campaign.return_path``: VERP,
  ``bounces+<delivery>.<profile>.<mac>@…``) in ``Delivered-To``, ``X-Original-To``, ``To`` (a DSN is
  sent to the envelope sender, RFC 3464 2), a feedback report's ``Original-Mail-From`` (RFC 5965
  3.2) or the enclosed original's ``Return-Path``. A return path whose MAC does not match is
  forged: the message is unusable and touches nothing, not even through its Message-ID. Without a
  return path, the enclosed original's Message-ID (``<campaign.{delivery}.{profile}.{mac}@…>``,
  signed like the return path, in the ``message/rfc822`` or ``text/rfc822-headers`` part, RFC
  3462 / RFC 6522) names the row, only when its MAC is right and the row was sent with exactly
  that Message-ID: anyone can mail the bounce mailbox, and a guessable id would let them
  quarantine or blocklist any recipient. And a report mapped by Message-ID that names another
  recipient than the row's is unusable (``_names_another_recipient``).
- **What happened.** ``flufl.bounce`` (GNU Mailman's detector, RFC 3464 and the non-standard
  shapes of many servers) recognises a bounce; the ``message/delivery-status`` part's
  per-recipient fields say how (RFC 3464 2.3.3, 2.3.4): ``Action: failed`` is a hard or soft
  bounce as ``campaign.qualification`` qualifies its Status (and Diagnostic-Code): hard for an
  address that takes no mail (5.1.1, 5.2.1, 5.0.0…), soft for a full mailbox, a refusal by
  policy, a 4.x.x the server gave up on…, and not a bounce at all with a success status 2.x.x;
  ``Action: delayed`` changes nothing and is counted. A bounce without a delivery-status part
  (old text bounces) is qualified the same way when the detector calls it permanent, by the
  reply its text gives for the failed recipient (``550 No such user here``; hard without a
  code). A feedback report (``multipart/report; report-type=feedback-report``) with
  ``Feedback-Type: abuse`` or ``fraud`` (RFC 5965 7.3) is a complaint.
- **Unusable** (kept in the Unusable folder, counted by reason): not a bounce (an auto-reply, a
  person's answer, a success notice, a DSN whose failure has a success status), unknown delivery
  (nothing names a row we sent), truncated (a report cut before its fields), forged return path
  or Message-ID, recipient mismatch, a feedback report of another type, a report for a message
  that never left. Each gets a task-log line (the first ``UNUSABLE_LISTED`` of a run).

Applying: a hard or soft bounce turns the row from ``sent`` into ``bounced`` (only from ``sent``:
a report read twice changes nothing), with the DSN's status and diagnostic; a hard DSN after a
soft one makes the row hard (the later status and diagnostic kept). A hard bounce also
quarantines the profile; a soft one never does. A complaint is one ``complaint`` event per
recipient and delivery (unique index) and blocklists the profile. Then ``stats.compute_kpis``
recomputes the delivery's KPIs from the logs, as aggregation and Compute stats do, so all three
agree (delivered falls, bounces rise, the complaint rate moves).
"""

from __future__ import annotations

import codecs
import email
import imaplib
import logging
import re
import time
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email.header import decode_header
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from email.utils import getaddresses
from typing import NamedTuple

from flufl.bounce import all_failures
from sqlalchemy import Engine

from campaign import stats
from campaign.clock import utcnow
from campaign.db import sql
from campaign.errors import MailboxUnavailable
from campaign.profiles import lookup_form
from campaign.qualification import STATUS, failure_type, reply_status
from campaign.return_path import read_return_path
from campaign.tokens import verify_token

log = logging.getLogger(__name__)
# flufl.bounce logs every detector it tries at INFO (17 lines per message in the task log), and a
# traceback at ERROR for each detector that chokes on mail that is no bounce at all (random
# bytes, an empty message): such mail is counted as unusable in the summary line, and the data
# team must not read a healthy run's log as a broken one.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

HARD, SOFT, DELAYED, COMPLAINT, UNUSABLE = "hard", "soft", "delayed", "complaint", "unusable"

# Why a message cannot be used; the summary line counts each.
NOT_A_BOUNCE = "not a bounce"
UNKNOWN_DELIVERY = "unknown delivery"
TRUNCATED = "truncated"
FORGED_RETURN_PATH = "forged return path"
FORGED_MESSAGE_ID = "forged Message-ID"
NOT_A_COMPLAINT = "feedback not a complaint"
UNREADABLE = "unreadable"
NOT_SENT = "message not sent"  # it names a row whose message the relay never accepted
# Mapped by Message-ID, but about another recipient than the row's: see _names_another_recipient.
RECIPIENT_MISMATCH = "recipient mismatch"
UNUSABLE_REASONS = (
    NOT_A_BOUNCE, UNKNOWN_DELIVERY, TRUNCATED, FORGED_RETURN_PATH, FORGED_MESSAGE_ID, NOT_A_COMPLAINT, UNREADABLE,
    NOT_SENT, RECIPIENT_MISMATCH,
)  # fmt: skip

# RFC 5965 7.3 registers abuse, fraud, other, virus; RFC 6430 adds not-spam, RFC 6591 auth-failure.
# Only the first two are a recipient saying "I did not want this".
COMPLAINT_FEEDBACK_TYPES = ("abuse", "fraud")

# Where the address a report was delivered to appears, most trustworthy first: what the receiving
# server wrote (Delivered-To, X-Original-To, Envelope-To), then what the reporter wrote.
_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
# campaign.rendering.message_id: <campaign.{delivery}.{profile}.{mac}@{domain}>; the MAC is checked.
_CAMPAIGN_MESSAGE_ID = re.compile(r"<campaign\.(\d{1,20}\.\d{1,20}(?:\.[0-9a-f]+)?)@[^<>\s]+>", re.IGNORECASE)
_MESSAGE_ID_LINE = re.compile(rb"^Message-ID:[ \t]*(<campaign\.[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_DIAGNOSTIC_LIMIT = 1000  # characters kept of a remote server's words
# An SMTP reply quoted in a text bounce: a 4xx or 5xx code (RFC 5321 4.2) standing alone, then
# its text ("host mx.example [192.0.2.25]: 550 No such user here").
_QUOTED_REPLY = re.compile(r"(?<![^\s:])[45]\d\d[ -].*")
_TRUNCATION_DEFECTS = (
    email.errors.CloseBoundaryNotFoundDefect,
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.MultipartInvariantViolationDefect,
)


@dataclass(frozen=True)
class Report:
    """What one mailbox message says.

    ``kind``: ``hard``, ``soft``, ``delayed`` (DSNs), ``complaint`` (feedback report) or
    ``unusable`` with ``reason`` one of ``UNUSABLE_REASONS``. ``delivery_id``/``profile_id``: the
    sending-log row it names (None when unusable); ``mapped_by``: ``return_path`` or
    ``message_id``; ``message_id``: the enclosed original's Message-ID (angle brackets kept);
    ``dsn_status`` (``5.1.1``), ``diagnostic`` (the Diagnostic-Code's text), ``recipient`` (the
    DSN's Final-Recipient or the report's Original-Rcpt-To), ``original_recipient`` (the DSN's
    Original-Recipient, RFC 3464 2.3.1: the address as the sender gave it, before forwarding),
    ``feedback_type``, ``user_agent`` (the feedback report's, RFC 5965 3.1).
    """

    kind: str
    reason: str | None = None
    delivery_id: int | None = None
    profile_id: int | None = None
    mapped_by: str | None = None
    message_id: str | None = None
    dsn_status: str | None = None
    diagnostic: str | None = None
    recipient: str | None = None
    original_recipient: str | None = None
    feedback_type: str | None = None
    user_agent: str | None = None

    @property
    def outcome(self) -> str:
        """``hard``…``complaint``, or ``unusable: <reason>``."""
        return f"{UNUSABLE}: {self.reason}" if self.kind == UNUSABLE else self.kind


def _unusable(reason: str, **known: object) -> Report:
    return Report(UNUSABLE, reason, **known)  # type: ignore[arg-type]


def _truncated(msg: Message) -> bool:
    return any(isinstance(defect, _TRUNCATION_DEFECTS) for part in msg.walk() for defect in part.defects)


def _header_text(value: object) -> str:
    """A header's text as the server wrote it: RFC 2047 encoded words decoded, and raw 8-bit bytes
    (servers write their own language into a Diagnostic-Code, RFC 6533 allows UTF-8 there) read
    as UTF-8, else as Latin-1, instead of the replacement characters ``str()`` gives."""
    parts = []
    for chunk, charset in decode_header(value):  # type: ignore[arg-type]
        if isinstance(chunk, str):
            parts.append(chunk)
        elif charset not in (None, "unknown-8bit"):
            parts.append(chunk.decode(charset, "replace") if _known_charset(charset) else chunk.decode("latin-1"))
        else:
            try:
                parts.append(chunk.decode("utf-8"))
            except UnicodeDecodeError:
                parts.append(chunk.decode("latin-1"))
    return "".join(parts)


def _known_charset(charset: str) -> bool:
    try:
        codecs.lookup(charset)
    except LookupError:
        return False
    return True


def _field_value(value: object) -> str | None:
    """A DSN field without its type (``rfc822; a@b`` → ``a@b``, ``smtp; 550 …`` → ``550 …``, RFC
    3464 2.1.2), white space unfolded, 8-bit text decoded (``_header_text``)."""
    if value is None:
        return None
    text = " ".join(_header_text(value).split())
    kind, semicolon, rest = text.partition(";")
    if semicolon and re.fullmatch(r"[A-Za-z0-9-]+", kind.strip()):
        text = rest.strip()
    return text or None


def _enclosed_headers(msg: Message) -> Message | None:
    """The headers of the original message a report encloses: its ``message/rfc822`` part, or its
    ``text/rfc822-headers`` part (RFC 6522 / RFC 3462), parsed; None when it has neither."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822" and part.is_multipart():
            inner = part.get_payload(0)
            if isinstance(inner, Message):
                return inner
        if kind == "text/rfc822-headers":
            payload = part.get_payload(decode=True) or b""
            return HeaderParser().parsestr(payload.decode("utf-8", "replace"))
    return None


def _delivery_status_blocks(msg: Message) -> tuple[list[Message], bool]:
    """The per-recipient blocks of every ``message/delivery-status`` part (RFC 3464 2.3), and
    whether there was such a part. The per-message block comes first and has no Action."""
    blocks: list[Message] = []
    found = False
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        found = True
        payload = part.get_payload()
        if isinstance(payload, list):
            blocks += [block for block in payload if isinstance(block, Message) and block.get("Action")]
    return blocks, found


def _per_message_fields(msg: Message) -> list[Message]:
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status" and isinstance(part.get_payload(), list):
            return [block for block in part.get_payload() if isinstance(block, Message)]
    return []


def _feedback_fields(msg: Message) -> Message | None:
    """The fields of the ``message/feedback-report`` part (RFC 5965 3.1), or None."""
    for part in msg.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        if isinstance(payload, str):
            return HeaderParser().parsestr(payload)
    return None


def _is_feedback_report(msg: Message) -> bool:
    return (
        msg.get_content_type() == "multipart/report" and msg.get_param("report-type", "").lower() == "feedback-report"
    ) or any(part.get_content_type() == "message/feedback-report" for part in msg.walk())


def _return_path_candidates(msg: Message, enclosed: Message | None, extra: list[str]) -> list[str]:
    addresses = [address for name in _ENVELOPE_HEADERS for _, address in getaddresses(msg.get_all(name, []))]
    addresses += extra
    if enclosed is not None:
        addresses += [address for _, address in getaddresses(enclosed.get_all("Return-Path", []))]
    return [address for address in addresses if address]


def _map(
    secret: bytes, msg: Message, enclosed: Message | None, extra: list[str], raw: bytes
) -> tuple[dict[str, object] | None, str | None]:
    """``({delivery_id, profile_id, mapped_by, message_id}, None)`` or ``(None, reason)``."""
    message_id = None
    if enclosed is not None and enclosed.get("Message-ID"):
        message_id = " ".join(str(enclosed["Message-ID"]).split())
    if message_id is None:
        # A text bounce quotes the original in its body; take its Message-ID line.
        line = _MESSAGE_ID_LINE.search(raw)
        message_id = line.group(1).decode("ascii", "replace") if line else None
    forged = False
    for address in _return_path_candidates(msg, enclosed, extra):
        match = read_return_path(secret, address)
        if match is None:
            continue
        if match.ids is None:
            forged = True
            continue
        return {
            "delivery_id": match.ids[0],
            "profile_id": match.ids[1],
            "mapped_by": "return_path",
            "message_id": message_id,
        }, None
    if forged:
        # Never fall back to the (unsigned) Message-ID when someone forged the signed address.
        return None, FORGED_RETURN_PATH
    found = _CAMPAIGN_MESSAGE_ID.fullmatch(message_id or "")
    if found:
        ids = verify_token(secret, "message_id", found.group(1).lower())
        if ids is None:
            # Our shape without a valid MAC: guessed or altered (or sent before Message-IDs were
            # signed, and then indistinguishable from a guess).
            return None, FORGED_MESSAGE_ID
        return {"delivery_id": ids[0], "profile_id": ids[1], "mapped_by": "message_id", "message_id": message_id}, None
    return None, UNKNOWN_DELIVERY


def _bounce_kind(action: str, status: str | None, diagnostic: str | None) -> str | None:
    if action.startswith("delayed"):
        return DELAYED
    if action.startswith(("failed", "error")):  # some servers (OpenSMTPD) write "error"
        # hard or soft by campaign.qualification; None for a success status (2.x.x).
        return failure_type(status, diagnostic)
    return None  # delivered, relayed, expanded: not a failure


def _text_diagnostic(msg: Message, recipient: str) -> str | None:
    """The reply a text bounce (no delivery-status part) quotes for ``recipient``: in the first
    paragraph of its text that names the address, the first 4xx or 5xx reply code and the rest
    of that paragraph, unfolded (Exim: ``550 No such user here``); None when there is none. The
    copy of the original that follows is not read: its paragraphs come later."""
    for part in msg.walk():
        if part.get_content_maintype() != "text" or part.get_content_type() == "text/rfc822-headers":
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        text = payload.decode(charset if _known_charset(charset) else "latin-1", "replace")
        for paragraph in re.split(r"\r?\n[ \t]*\r?\n", text):
            if recipient.lower() not in paragraph.lower():
                continue
            found = _QUOTED_REPLY.search(" ".join(paragraph.split()))
            if found:
                return found.group(0)
    return None


_SEVERITY = {HARD: 3, SOFT: 2, DELAYED: 1}


def read_report(data: bytes, secret: bytes) -> Report:
    """Read one mailbox message (its raw bytes, RFC 5322) as a ``Report``; never raises for bad
    input (unreadable mail is ``unusable``). ``secret``: ``tokens.tracking_secret()``, which
    signs the return path."""
    try:
        return _read_report(data, secret)
    except Exception as exc:  # a parser or detector bug on one odd message must not stop the others
        log.warning("unreadable mailbox message (%s: %s)", type(exc).__name__, exc)
        return _unusable(UNREADABLE)


def _read_report(data: bytes, secret: bytes) -> Report:
    msg = email.message_from_bytes(data)  # compat32: what flufl.bounce's detectors expect
    enclosed = _enclosed_headers(msg)
    truncated = _truncated(msg)

    if _is_feedback_report(msg):
        fields = _feedback_fields(msg)
        if fields is None or not fields.get("Feedback-Type"):
            return _unusable(TRUNCATED if truncated or fields is not None else NOT_A_BOUNCE)
        feedback_type = str(fields["Feedback-Type"]).strip().lower()
        extra = [address for _, address in getaddresses(fields.get_all("Original-Mail-From", []))]
        mapped, reason = _map(secret, msg, enclosed, extra, data)
        recipient = (_field_value(fields.get("Original-Rcpt-To")) or "").strip("<>") or None
        user_agent = _field_value(fields.get("User-Agent"))
        if feedback_type not in COMPLAINT_FEEDBACK_TYPES:
            return _unusable(NOT_A_COMPLAINT, feedback_type=feedback_type, **(mapped or {}))
        if mapped is None:
            return _unusable(reason or UNKNOWN_DELIVERY, feedback_type=feedback_type)
        return Report(COMPLAINT, recipient=recipient, feedback_type=feedback_type, user_agent=user_agent, **mapped)

    blocks, has_status_part = _delivery_status_blocks(msg)
    kind = status = diagnostic = recipient = original_recipient = None
    for block in blocks:
        found = STATUS.search(str(block.get("Status", "")))
        block_status = found.group(0) if found else None
        block_diagnostic = _field_value(block.get("Diagnostic-Code"))
        block_kind = _bounce_kind(str(block["Action"]).strip().lower(), block_status, block_diagnostic)
        if block_kind and _SEVERITY[block_kind] > _SEVERITY.get(kind or "", 0):
            kind, status, diagnostic = block_kind, block_status, block_diagnostic
            recipient = _field_value(block.get("Final-Recipient") or block.get("Original-Recipient"))
            original_recipient = _field_value(block.get("Original-Recipient"))
    if has_status_part and truncated and (not blocks or (kind is not None and status is None)):
        # Cut inside the delivery-status part: no recipient block, or one without its Status
        # (a required field, RFC 3464 2.3.4): what happened cannot be told.
        return _unusable(TRUNCATED)
    if kind is None and has_status_part:
        # No recipient block, or none that failed or was delayed: a success notice (delivered,
        # relayed, expanded) or a failure whose status says success (class 2, RFC 3463 3.1),
        # which contradicts itself. The detector is not asked: it would call any "failed" a
        # permanent failure, whatever the Status.
        return _unusable(TRUNCATED if truncated or not blocks else NOT_A_BOUNCE)
    if kind is None:
        try:
            temporary, permanent = all_failures(msg)
        except Exception:  # a heuristic detector choking on odd mail: take it as no verdict
            temporary, permanent = frozenset(), frozenset()
        if permanent or temporary:
            recipient = (next(iter(permanent or temporary))).decode("ascii", "replace")
            diagnostic = _text_diagnostic(msg, recipient)
            found = STATUS.search(data.decode("utf-8", "replace"))
            status = reply_status(diagnostic) or (found.group(0) if found and found.group(1) in "45" else None)
            # Permanent: hard or soft as a DSN with that status and reply would be.
            kind = failure_type(status, diagnostic) if permanent else DELAYED
    if kind is None:
        return _unusable(TRUNCATED if truncated else NOT_A_BOUNCE)

    extra = [
        address
        for block in _per_message_fields(msg)
        for name in ("X-Postfix-Sender", "Original-Envelope-Id")
        if (address := _field_value(block.get(name)))
    ]
    mapped, reason = _map(secret, msg, enclosed, extra, data)
    if mapped is None:
        return _unusable(reason or UNKNOWN_DELIVERY, dsn_status=status)
    if diagnostic and len(diagnostic) > _DIAGNOSTIC_LIMIT:
        diagnostic = diagnostic[: _DIAGNOSTIC_LIMIT - 1] + "…"
    return Report(
        kind,
        dsn_status=status,
        diagnostic=diagnostic,
        recipient=recipient,
        original_recipient=original_recipient,
        **mapped,
    )


# ---------------------------------------------------------------- applying


class Applied(NamedTuple):
    """What applying one report did: ``report`` (made unusable when no row we sent matches it),
    ``changed`` (the delivery's figures moved), whether this report ``quarantined`` or
    ``blocklisted`` the profile (False when it was already), and whether a hard DSN
    ``upgraded`` a row an earlier DSN had bounced soft (``changed`` too)."""

    report: Report
    changed: bool
    quarantined: bool = False
    blocklisted: bool = False
    upgraded: bool = False


def _bounce_reason(report: Report) -> str:
    """The sending-log row's reason: ``hard bounce reported by DSN 5.1.1``."""
    return f"{report.kind} bounce reported by DSN" + (f" {report.dsn_status}" if report.dsn_status else "")


def _quarantine_reason(report: Report) -> str:
    """The profile's quarantine reason: ``hard bounce (DSN) 5.1.1: 550 5.1.1 …``, without the
    parts the report lacks (a text bounce may give neither status nor reply)."""
    why = " ".join(f"hard bounce (DSN) {report.dsn_status or ''}".split())
    return f"{why}: {' '.join(report.diagnostic.split())}" if report.diagnostic else why


def _names_another_recipient(report: Report, row_email: str) -> bool:
    """Whether a report mapped by the enclosed Message-ID is about another recipient than the row's.

    A Message-ID travels with the message: a DSN or feedback report about recipient B may enclose
    a copy of A's message (A forwarded it, or B was handed a copy), and applying it would
    quarantine or blocklist A for B's mailbox. The signed return path needs no such check: it is
    the envelope sender of A's message alone, so the report came back for A's copy. Forwarded
    mail that bounces names the address after forwarding in Final-Recipient (RFC 3464 2.3.2);
    the address we sent to is then in Original-Recipient (2.3.1, when the forwarder passed it
    on as ORCPT, RFC 3461 4.2), and is accepted; without it, only the return path can tell the
    two apart. A report naming no recipient stays usable: feedback loops often leave
    Original-Rcpt-To out to protect the recipient (RFC 6590). Compared in the stored form
    (``profiles.lookup_form``: case, and the A-label domain a server writes, ``xn--…``, as the
    Unicode one the profile keeps).
    """
    named = [address.strip().strip("<>") for address in (report.recipient, report.original_recipient) if address]
    if report.mapped_by != "message_id" or not named:
        return False
    return lookup_form(row_email or "") not in {lookup_form(address) for address in named}


def apply_report(engine: Engine, report: Report, now: datetime | None = None) -> Applied:
    """Apply one report in one transaction.

    Only a message the relay accepted can bounce later or be complained about: a row ``sent``,
    or ``bounced`` by an earlier DSN (``bounced_at``). A report naming any other row (bounced or
    failed at the send, ignored, cancelled: no message left) changes nothing and is made
    ``unusable: message not sent``; one naming no row we sent is made ``unusable: unknown
    delivery``; one mapped by Message-ID about another recipient ``unusable: recipient
    mismatch``. Hard or soft bounce: a ``sent`` row becomes ``bounced`` with the DSN's status
    and diagnostic; a hard one turns a row an earlier DSN bounced soft into hard, and
    quarantines the profile (soft bounces never do). A row bounced already otherwise stays as
    it is (a report read again, a soft DSN after a hard one). Complaint: one ``complaint``
    event per recipient and delivery, the profile blocklisted. Delayed: nothing.
    Raises SQLAlchemy's errors (the database is down or busy: the caller stops and retries).
    """
    if report.kind == UNUSABLE or report.delivery_id is None:
        return Applied(report, False)
    now = now or utcnow()
    ids = {"delivery_id": report.delivery_id, "profile_id": report.profile_id}
    with engine.begin() as conn:
        row = conn.execute(sql("select_bounce_target"), ids).mappings().first()
        known = row is not None and (
            report.mapped_by != "message_id" or (row["message_id"] or "").lower() == (report.message_id or "").lower()
        )
        if not known:
            # No row, or a Message-ID the row was not sent with (someone guessed the pattern).
            return Applied(_unusable(UNKNOWN_DELIVERY, dsn_status=report.dsn_status), False)
        if _names_another_recipient(report, row["email"]):
            mismatch = _unusable(RECIPIENT_MISMATCH, dsn_status=report.dsn_status, recipient=report.recipient)
            return Applied(mismatch, False)
        if not (row["status"] == "sent" or (row["status"] == "bounced" and row["bounced_at"] is not None)):
            return Applied(_unusable(NOT_SENT, dsn_status=report.dsn_status, **ids), False)
        changed = quarantined = blocklisted = upgraded = False
        if report.kind in (HARD, SOFT):
            bounce = {
                "log_id": row["id"],
                "failure_type": report.kind,
                "reason": _bounce_reason(report),
                "bounced_at": now,
                "dsn_status": report.dsn_status,
                "dsn_diagnostic": report.diagnostic,
            }
            changed = conn.execute(sql("record_async_bounce"), bounce).rowcount == 1
            if report.kind == HARD and not changed:
                # Soft first (a full mailbox), hard later (the account closed): the row is hard
                # now, as the profile is about to be quarantined. Hard already: nothing to do.
                upgraded = changed = conn.execute(sql("upgrade_async_bounce"), bounce).rowcount == 1
            if report.kind == HARD:
                # Every hard DSN quarantines, even for a row that had bounced already: the
                # address does not take mail. quarantine_profile.sql keeps the first reason.
                quarantined = (
                    conn.execute(
                        sql("quarantine_profile"), {**ids, "reason": _quarantine_reason(report), "now": now}
                    ).rowcount
                    == 1
                )
        elif report.kind == COMPLAINT:
            changed = (
                conn.execute(
                    sql("insert_complaint_event"), {**ids, "user_agent": report.user_agent, "event_at": now}
                ).rowcount
                == 1
            )
            blocklisted = conn.execute(sql("blocklist_profile"), ids).rowcount == 1
    return Applied(report, changed, quarantined, blocklisted, upgraded)


# ---------------------------------------------------------------- the mailbox

PROCESSED_FOLDER = "Processed"
UNUSABLE_FOLDER = "Unusable"
DEFAULT_MAX_MESSAGES = 2000  # per run; the rest waits ten minutes, so a flood cannot stall a run
MOVE_BATCH = 100
DELIVERIES_NAMED = 10  # delivery ids the summary line names before "and N more"
# Unusable messages given a task-log line each per run; a flood of junk mail must not fill the log.
UNUSABLE_LISTED = 20
# Someone mailing reports about rows they have no right to name: a WARNING, the others INFO.
_SUSPICIOUS = (FORGED_RETURN_PATH, FORGED_MESSAGE_ID, RECIPIENT_MISMATCH)
_LOGGED_CHARACTERS = 80  # of a Message-ID, Subject or From address in that line


@dataclass
class MailboxSummary:
    """What one run did: messages read, outcomes, profiles quarantined and blocklisted,
    deliveries whose KPIs were recomputed, messages filed."""

    read: int = 0
    outcomes: Counter = field(default_factory=Counter)
    unchanged: int = 0  # bounces and complaints already applied (mail read again), not in outcomes
    # Hard DSNs (in outcomes) that turned a row bounced soft into hard: that row was counted once
    # already, as soft, when its soft DSN was read (this run or an earlier one).
    upgraded: int = 0
    quarantined: int = 0  # profiles this run quarantined (not those quarantined before)
    blocklisted: int = 0  # profiles this run blocklisted
    deliveries: set[int] = field(default_factory=set)
    moved: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def count(self, kind: str) -> int:
        return self.outcomes[kind]

    def unusable(self) -> dict[str, int]:
        return {reason: self.outcomes[f"{UNUSABLE}: {reason}"] for reason in UNUSABLE_REASONS}

    def summary_line(self) -> str:
        """The task log's one line for the data team."""
        unusable = self.unusable()
        reasons = ", ".join(f"{reason} {count}" for reason, count in unusable.items() if count) or "none"
        dsns = self.count(HARD) + self.count(SOFT) + self.count(DELAYED)
        upgraded = f" ({self.upgraded} upgraded from soft)" if self.upgraded else ""
        return (
            f"process_bounces: {self.read} messages read, {dsns} DSNs (hard {self.count(HARD)}{upgraded}, "
            f"soft {self.count(SOFT)}, delayed {self.count(DELAYED)}), {self.count(COMPLAINT)} complaints, "
            f"{sum(unusable.values())} unusable ({reasons}), {self.unchanged} already applied, "
            f"profiles quarantined {self.quarantined} and blocklisted {self.blocklisted}, "
            f"KPIs recomputed for {self.deliveries_named()}, moved {self.moved[PROCESSED_FOLDER]} to "
            f"{PROCESSED_FOLDER} and {self.moved[UNUSABLE_FOLDER]} to {UNUSABLE_FOLDER} ({self.seconds:.2f}s)"
        )

    def deliveries_named(self) -> str:
        """``no delivery``, ``delivery 12``, ``deliveries 3, 5, 7``, or the first
        ``DELIVERIES_NAMED`` ids and ``and 4 more``: the line stays one line."""
        ids = sorted(self.deliveries)
        if not ids:
            return "no delivery"
        if len(ids) == 1:
            return f"delivery {ids[0]}"
        named = ", ".join(str(delivery_id) for delivery_id in ids[:DELIVERIES_NAMED])
        more = len(ids) - DELIVERIES_NAMED
        return f"deliveries {named}" + (f" and {more} more" if more > 0 else "")

    def as_dict(self) -> dict[str, object]:
        return {
            "read": self.read,
            "hard": self.count(HARD),
            "upgraded_from_soft": self.upgraded,
            "soft": self.count(SOFT),
            "delayed": self.count(DELAYED),
            "complaints": self.count(COMPLAINT),
            "unusable": {reason: count for reason, count in self.unusable().items() if count},
            "unchanged": self.unchanged,
            "quarantined": self.quarantined,
            "blocklisted": self.blocklisted,
            "deliveries": sorted(self.deliveries),
        }


def _short(text: str) -> str:
    """Header text fit for one log line: white space collapsed, control characters (a forged
    header may carry them to fake log lines) as ``?``, cut at ``_LOGGED_CHARACTERS``."""
    text = "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
    return text if len(text) <= _LOGGED_CHARACTERS else text[: _LOGGED_CHARACTERS - 1] + "…"


def _log_unusable(uid: bytes, data: bytes, reason: str) -> None:
    """One task-log line saying why this message goes to Unusable, and which message it is (its
    UID in the inbox, its Message-ID, else its Subject, its From address): the summary line
    only counts them, and whoever looks into the Unusable folder needs to find it."""
    try:
        headers = BytesHeaderParser().parsebytes(data)
        message_id = _header_text(headers.get("Message-ID", ""))
        subject = _header_text(headers.get("Subject", ""))
        sender = _header_text(headers.get("From", ""))
    except Exception:  # headers no parser makes sense of: say so, the line is logged all the same
        message_id = subject = sender = ""
    sender = next((address for _, address in getaddresses([sender]) if address), sender)
    which = f"Message-ID {_short(message_id)}" if message_id.strip() else f"Subject {_short(subject) or '(none)'!r}"
    log.log(
        logging.WARNING if reason in _SUSPICIOUS else logging.INFO,
        "unusable message UID %s, %s, From %s: %s",
        uid.decode("ascii", "replace"),
        which,
        _short(sender) or "(none)",
        reason,
    )


def _ok(reply: tuple[str, list], what: str) -> list:
    status, data = reply
    if status != "OK":
        raise MailboxUnavailable(f"The IMAP server refused {what}: {status} {data!r}")
    return data


@contextmanager
def _imap_errors(what: str) -> Iterator[None]:
    """Turn imaplib's and the socket's errors into ``MailboxUnavailable`` (the task retries)."""
    try:
        yield
    except (imaplib.IMAP4.error, OSError) as exc:
        raise MailboxUnavailable(f"IMAP {what} failed: {type(exc).__name__}: {exc}") from exc


@contextmanager
def logged_in(client: imaplib.IMAP4) -> Iterator[imaplib.IMAP4]:
    """``client`` (logged in) for the ``with`` block, then logged out; a server already gone at
    the end changes nothing (the work is done, or its own error is on its way)."""
    try:
        yield client
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def ensure_folders(client: imaplib.IMAP4, folders: tuple[str, ...] = (PROCESSED_FOLDER, UNUSABLE_FOLDER)) -> None:
    """Create and subscribe the folders handled mail goes to (RFC 3501 6.3.3); ones that exist stay."""
    with _imap_errors("LIST"):
        listing = _ok(client.list(), "LIST")
    present = {line.decode("utf-8", "replace").rsplit(" ", 1)[-1].strip('"') for line in listing if line}
    for folder in folders:
        if folder not in present:
            with _imap_errors(f"CREATE {folder}"):
                _ok(client.create(folder), f"CREATE {folder}")
                client.subscribe(folder)


def server_capabilities(client: imaplib.IMAP4) -> frozenset[str]:
    """What the server offers the logged-in client, asked now (CAPABILITY, RFC 3501 6.1.1), upper
    case. Not imaplib's ``client.capabilities``: imaplib fills it from the greeting, before the
    login, and never again, while a server may offer more once logged in (RFC 3501 7.2.1: the
    list can change after authentication). Dovecot offers MOVE and UIDPLUS only then."""
    with _imap_errors("CAPABILITY"):
        data = _ok(client.capability(), "CAPABILITY")
    # imaplib hands back every untagged CAPABILITY it kept (the one in LOGIN's answer too, RFC
    # 3501 7.1 response code): the last is the answer to this command.
    last = next((line for line in reversed(data) if line), b"")
    text = last.decode("ascii", "replace") if isinstance(last, bytes) else str(last)
    return frozenset(text.upper().split())


def move_messages(client: imaplib.IMAP4, uids: list[bytes], folder: str, capabilities: Collection[str]) -> None:
    """Move messages of the selected folder to ``folder``, never deleting one: IMAP MOVE (RFC 6851)
    when the server offers it, else COPY, flag ``\\Deleted`` and expunge those UIDs only
    (UID EXPUNGE, RFC 4315); without UIDPLUS they stay flagged (a later EXPUNGE removes them,
    and the next run skips flagged mail). ``capabilities``: ``server_capabilities(client)``,
    asked after the login."""
    capabilities = {c.upper() for c in capabilities}
    for start in range(0, len(uids), MOVE_BATCH):
        batch = b",".join(uids[start : start + MOVE_BATCH]).decode("ascii")
        with _imap_errors(f"MOVE to {folder}"):
            if "MOVE" in capabilities:
                _ok(client.uid("MOVE", batch, folder), f"MOVE to {folder}")
                continue
            _ok(client.uid("COPY", batch, folder), f"COPY to {folder}")
            _ok(client.uid("STORE", batch, "+FLAGS.SILENT", r"(\Deleted)"), "STORE \\Deleted")
            if "UIDPLUS" in capabilities:
                _ok(client.uid("EXPUNGE", batch), "UID EXPUNGE")


def process_mailbox(
    client: imaplib.IMAP4,
    engine: Engine,
    secret: bytes,
    *,
    inbox: str = "INBOX",
    max_messages: int = DEFAULT_MAX_MESSAGES,
) -> MailboxSummary:
    """Read, apply and file every message of ``inbox`` (a logged-in client), oldest first.

    Each message is applied in its own transaction, and moved (to ``Processed`` or ``Unusable``)
    only after its transaction committed: a crash in between leaves it in the inbox, and the next
    run applies it again without changing anything. Then the KPIs of every delivery that changed
    are recomputed from the logs (``stats.compute_kpis``). One bad message never stops the others.

    Raises ``MailboxUnavailable`` for IMAP trouble and SQLAlchemy's errors for the database's
    (both transient); messages applied before are filed first when the mailbox still answers.
    """
    started = time.monotonic()
    summary = MailboxSummary()
    capabilities = server_capabilities(client)  # once a run, after the login: MOVE, UIDPLUS
    ensure_folders(client)
    with _imap_errors(f"SELECT {inbox}"):
        _ok(client.select(inbox), f"SELECT {inbox}")
        uids = _ok(client.uid("SEARCH", None, "UNDELETED"), "SEARCH")[0].split()[:max_messages]
    destinations: dict[str, list[bytes]] = {PROCESSED_FOLDER: [], UNUSABLE_FOLDER: []}
    unlisted: Counter = Counter()  # unusable messages past UNUSABLE_LISTED, by log level
    try:
        for uid in uids:
            with _imap_errors("FETCH"):
                parts = _ok(client.uid("FETCH", uid, "(BODY.PEEK[])"), "FETCH")
            data = next((part[1] for part in parts if isinstance(part, tuple)), None)
            if data is None:  # expunged meanwhile by someone else
                continue
            summary.read += 1
            report, changed, quarantined, blocklisted, upgraded = apply_report(engine, read_report(data, secret))
            summary.quarantined += quarantined
            summary.blocklisted += blocklisted
            summary.upgraded += upgraded
            if changed:
                summary.deliveries.add(report.delivery_id)
            if changed or report.kind not in (HARD, SOFT, COMPLAINT):
                summary.outcomes[report.outcome] += 1
            else:  # each message is counted once: a report read again is not a new bounce
                summary.unchanged += 1
            if report.kind == UNUSABLE:
                if len(destinations[UNUSABLE_FOLDER]) < UNUSABLE_LISTED:
                    _log_unusable(uid, data, report.reason or UNREADABLE)
                else:
                    unlisted[logging.WARNING if report.reason in _SUSPICIOUS else logging.INFO] += 1
            destinations[UNUSABLE_FOLDER if report.kind == UNUSABLE else PROCESSED_FOLDER].append(uid)
    finally:
        if unlisted:
            # At WARNING when a forged one is among them: the level must not hide it.
            log.log(max(unlisted), "and %d more unusable messages not listed", sum(unlisted.values()))
        # File what was committed, also when a later message hit a database error; and bring
        # the KPIs of what changed up to date then too: the next run finds those messages filed
        # and would not recompute them.
        for folder, moved in destinations.items():
            if moved:
                move_messages(client, moved, folder, capabilities)
                summary.moved[folder] += len(moved)
        for delivery_id in sorted(summary.deliveries):
            stats.compute_kpis(engine, delivery_id)
    summary.seconds = time.monotonic() - started
    return summary
