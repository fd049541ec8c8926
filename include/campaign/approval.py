"""The operator's "OK, send definitively": what the approval shows, and what an answer may do.

Source: Adobe Campaign Standard, "Confirming send" (../shared/seed/confirming-send.md): after
**Confirm send**, "you will be asked to finalize the send definitively by clicking the OK button".
In confirm_send that dialog is an Airflow human-in-the-loop task (the Airflow side lives in
``campaign.airflow_glue``); this module decides what it shows and what each answer does, and
keeps the delivery's audit trail (table ``delivery_audit``).

Rules of an answer (``answer_approval``):

- **Cancel**, or no answer within the timeout: nothing is sent, the delivery stays ``ready`` and
  can be confirmed again by a new run.
- **OK, send definitively** counts only when it comes from the operator who triggered the run,
  who still holds Start deliveries, while the delivery is still ``ready``. Airflow is told to
  accept answers from that operator only; this check runs again on the responder Airflow
  recorded, and fails closed: anything else is refused and nothing is sent.
- ``start_send`` (``campaign.confirm``) claims the delivery only for a run with a recorded OK, so
  a task marked "success" by hand in Airflow sends nothing either.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from campaign.audit import record_action
from campaign.clock import as_datetime, utcnow
from campaign.confirm import Chunk, first_target
from campaign.db import sql
from campaign.deliveries import get_delivery
from campaign.errors import InvalidInput, RoleDenied, SendRefused
from campaign.operators import has_role, require_start_deliveries
from campaign.rendering import compile_templates, recipient_context, render
from campaign.schema import MAX_ID, ROLE_START_DELIVERIES
from campaign.tracking import extract_links

log = logging.getLogger(__name__)

OK = "OK, send definitively"
CANCEL = "Cancel"
OPTIONS = (OK, CANCEL)
# Audit actions that answer a question (the others ask it).
ANSWERS = ("confirmed", "cancelled", "timed_out", "answer_refused")
DEFAULT_CONFIRM_TIMEOUT_SECONDS = 3600
# How many of the last finished sends the duration estimate is measured on.
ESTIMATE_FROM_SENDS = 5


@dataclass(frozen=True)
class Estimate:
    """How long the send should take, from the rate of the last sends of this deployment."""

    seconds: float | None
    rate: float | None  # recipients per second
    sends: int  # how many earlier sends the rate was measured on; 0 when the rate limit sets it

    def sentence(self) -> str:
        if self.seconds is None:
            return "unknown: no earlier send on this deployment to measure a rate from"
        if self.sends == 0:
            return f"about {duration_text(self.seconds)} (at the rate limit)"
        return (
            f"about {duration_text(self.seconds)} (at {self.rate:,.0f} recipients/s, "
            f"the rate of the last {self.sends} send{'s' if self.sends > 1 else ''})"
        )


@dataclass(frozen=True)
class ApprovalRequest:
    """What the operator sees before answering: enough to decide, nothing to look up elsewhere."""

    delivery_id: int
    label: str
    sender: str
    subject: str  # rendered for the first recipient of the target
    target_count: int
    blocklisted: int  # targets blocklisted since preparation: skipped (sending-log status ignored)
    quarantined: int  # targets quarantined since preparation: skipped likewise
    tracking: bool
    tracked_links: int
    chunks: int
    chunk_size: int
    max_rate: int | None  # messages an hour for the whole send; None = no limit
    estimate: Estimate
    deployment_url: str

    @property
    def to_send(self) -> int:
        return self.target_count - self.blocklisted - self.quarantined

    def headline(self) -> str:
        """The subject of the approval: one line that names the delivery and the audience."""
        return f"Send delivery {self.delivery_id} {self.label!r} to {self.to_send:,} recipients?"

    def body(self, operator: str, timeout: timedelta) -> str:
        """The approval's Markdown: a table of what is about to go out. Values that come from the
        delivery (label, sender, subject) are escaped, so they cannot add links or markup."""
        tracking = f"on, {self.tracked_links} tracked link{'s' if self.tracked_links != 1 else ''}"
        rows = [
            ("Delivery", f"{self.delivery_id} · {_md(self.label)} ([Deployment page]({self.deployment_url}))"),
            ("Sender", _md(self.sender)),
            ("Subject (first recipient)", _md(self.subject)),
            ("Target", f"{self.target_count:,} recipients"),
            (
                "Skipped since preparation",
                f"{self.blocklisted:,} blocklisted, {self.quarantined:,} quarantined",
            ),
            ("Will be sent to", f"**{self.to_send:,} recipients**"),
            ("Tracking", tracking if self.tracking else "off"),
            ("Chunks", f"{self.chunks:,} of up to {self.chunk_size:,} recipients"),
            ("Rate limit", f"{self.max_rate:,} messages an hour" if self.max_rate else "none"),
            ("Estimated duration", self.estimate.sentence()),
        ]
        table = "\n".join(["| | |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)])
        return (
            f"{table}\n\n**{OK}** sends to every recipient above; a sent mail cannot be recalled. "
            f"**{CANCEL}** sends nothing and leaves the delivery ready.\n\n"
            f"Only {_md(operator)}, who started this run, can answer. Without an answer within "
            f"{duration_text(timeout.total_seconds())} the send is cancelled."
        )

    def audit_detail(self) -> str:
        return (
            f"asked to confirm the send to {self.to_send:,} recipients ({self.target_count:,} targets, "
            f"{self.blocklisted:,} blocklisted and {self.quarantined:,} quarantined since preparation) "
            f"in {self.chunks:,} chunk{'s' if self.chunks != 1 else ''}"
        )


def approval_request(
    engine: Engine, delivery_id: int, chunks: list[Chunk], deployment_url: str, max_rate: int | None = None
) -> ApprovalRequest:
    """Gather what the approval shows for ``delivery_id``, to be sent in ``chunks`` (as
    ``campaign.confirm.plan_chunks`` plans them), under ``max_rate`` (the trigger form's) or else
    the delivery's own rate limit. Raises ``DeliveryNotFound``, and ``TemplateProblem`` if the
    subject does not render for the first recipient (``validate`` has checked both just before)."""
    with engine.begin() as conn:
        delivery = get_delivery(conn, delivery_id)
        sample = first_target(conn, delivery_id)
        excluded = conn.execute(sql("count_targets_excluded_since_preparation"), {"delivery_id": delivery_id}).one()
        target_count = conn.execute(sql("count_delivery_targets"), {"delivery_id": delivery_id}).scalar_one()
        rate_limit = max_rate or delivery.max_rate
        estimate = _estimate(conn, target_count - int(excluded.blocklisted) - int(excluded.quarantined), rate_limit)
    content = delivery.content
    subject = (
        render(compile_templates(content), recipient_context(sample, content), delivery_id).subject if sample else ""
    )
    return ApprovalRequest(
        delivery_id=delivery_id,
        label=delivery.label,
        sender=delivery.sender,
        subject=subject,
        target_count=target_count,
        blocklisted=int(excluded.blocklisted),
        quarantined=int(excluded.quarantined),
        tracking=delivery.tracking,
        tracked_links=len(extract_links(delivery.html_template)) if delivery.tracking else 0,
        chunks=len(chunks),
        chunk_size=max((c.last_seq - c.first_seq + 1 for c in chunks), default=0),
        max_rate=rate_limit,
        estimate=estimate,
        deployment_url=deployment_url,
    )


def _estimate(conn: Connection, to_send: int, max_rate: int | None) -> Estimate:
    """From the rate of the last sends; a rate limit below that rate is the rate."""
    rows = conn.execute(sql("recent_send_durations"), {"limit": ESTIMATE_FROM_SENDS}).all()
    served = sum(row.served for row in rows)
    seconds = sum(
        max((as_datetime(row.finished_at) - as_datetime(row.confirmed_at)).total_seconds(), 0.0) for row in rows
    )
    measured = served / seconds if rows and seconds > 0 else None
    limit = max_rate / 3600 if max_rate else None
    if limit is not None and (measured is None or limit < measured):
        return Estimate(to_send / limit, limit, 0)
    if measured is None:
        return Estimate(None, None, 0)
    return Estimate(to_send / measured, measured, len(rows))


def record(
    engine: Engine, delivery_id: int, run_id: str | None, action: str, actor: str | None, detail: str
) -> datetime:
    """Append one row to the delivery's audit trail in its own transaction; returns its time (UTC)."""
    with engine.begin() as conn:
        return record_action(conn, delivery_id, run_id, action, actor, detail)


@dataclass(frozen=True)
class Answer:
    """What an accepted answer does: ``send`` is False for Cancel and for the timeout."""

    send: bool
    line: str  # the one line the approval task logs


def answer_approval(
    engine: Engine,
    delivery_id: int,
    run_id: str,
    operator: str | None,
    chosen: list[str],
    responder: str | None,
    responded_at: datetime | None,
    timed_out: bool,
    timeout: timedelta,
) -> Answer:
    """Check and record the answer Airflow recorded for the approval of ``run_id``.

    ``operator`` is the user who triggered the run, ``responder`` the user name Airflow recorded
    for the answer (None for the timeout), ``chosen`` the options chosen. Returns an ``Answer``;
    raises ``SendRefused`` (after recording ``answer_refused``) for an OK that must not send:
    from anyone but ``operator``, from an operator who no longer holds Start deliveries, or for a
    delivery that is no longer ``ready`` (the message names the run that has it).

    Idempotent for one question: when the run's latest audit entry already answers it (the task
    was retried after it had recorded the answer), the recorded outcome is given again and
    nothing new is recorded.
    """
    last = last_action(engine, delivery_id, run_id)
    if last and last["action"] in ANSWERS:
        if last["action"] == "answer_refused":
            raise SendRefused(last["detail"])
        return Answer(last["action"] == "confirmed", last["detail"])
    when = _when(responded_at or utcnow())
    if timed_out:
        line = (
            f"No answer within {duration_text(timeout.total_seconds())} (timed out at {when}): the send is cancelled. "
            f"Nothing was sent; delivery {delivery_id} stays ready and can be confirmed again."
        )
        record(engine, delivery_id, run_id, "timed_out", None, line)
        return Answer(False, line)
    if chosen != [OK]:
        line = (
            f"Cancelled by {responder or 'an unknown user'} at {when}. Nothing was sent; delivery {delivery_id} "
            "stays ready and can be confirmed again."
        )
        record(engine, delivery_id, run_id, "cancelled", responder, line)
        return Answer(False, line)

    problem = None
    if not operator:
        problem = "this run has no triggering user, so nobody may confirm it"
    elif responder != operator:
        problem = f"the answer came from {responder or 'an unknown user'}, not from {operator} who started this run"
    elif not has_role(engine, responder, ROLE_START_DELIVERIES):
        problem = f"{responder} no longer holds the Start deliveries role"
    else:
        with engine.begin() as conn:
            delivery = get_delivery(conn, delivery_id)
        if delivery.status != "ready":
            owner = f"run {delivery.run_id!r}" if delivery.run_id else "no run"
            by = f", confirmed by {delivery.confirmed_by}" if delivery.confirmed_by else ""
            problem = f"delivery {delivery_id} is {delivery.status} by {owner}{by}, not ready any more"
    if problem:
        message = f"'{OK}' at {when} is refused: {problem}. This run sends nothing."
        record(engine, delivery_id, run_id, "answer_refused", responder, message)
        raise SendRefused(message)
    line = f"Confirmed by {responder} at {when}: '{OK}'."
    record(engine, delivery_id, run_id, "confirmed", responder, line)
    return Answer(True, line)


def require_sender(engine: Engine, login: str | None, delivery_id: Any, run_id: str) -> str:
    """``check_role``: the run's triggering user must hold Start deliveries
    (``operators.require_start_deliveries``); a refusal is also put on the audit trail of the
    delivery the run named, when it exists, so the data team sees who tried to send what.
    Returns the login; raises ``RoleDenied``."""
    try:
        return require_start_deliveries(engine, login)
    except RoleDenied as exc:
        if isinstance(delivery_id, int) and not isinstance(delivery_id, bool) and 1 <= delivery_id <= MAX_ID:
            with engine.begin() as conn:
                exists = conn.execute(sql("select_delivery_exists"), {"delivery_id": delivery_id}).first()
            if exists:
                record(engine, delivery_id, run_id, "role_refused", login, str(exc))
        raise


def last_action(engine: Engine, delivery_id: int, run_id: str) -> dict[str, Any] | None:
    """The latest audit entry of ``run_id`` for the delivery (action, actor, at, detail), or None."""
    with engine.begin() as conn:
        row = conn.execute(sql("select_run_last_action"), {"delivery_id": delivery_id, "run_id": run_id}).first()
    return dict(row._mapping) if row else None


def run_confirmation(engine: Engine, delivery_id: int, run_id: str) -> str | None:
    """The operator whose OK stands in ``run_id`` (its latest audit entry), or None."""
    last = last_action(engine, delivery_id, run_id)
    return last["actor"] if last and last["action"] == "confirmed" else None


def audit_trail(engine: Engine, delivery_id: int) -> list[dict[str, Any]]:
    """The delivery's audit rows, oldest first: id, run_id, action, actor, at (ISO text), detail."""
    with engine.begin() as conn:
        rows = conn.execute(sql("delivery_audit_trail"), {"delivery_id": delivery_id}).mappings().all()
    return [{**row, "at": as_datetime(row["at"]).isoformat()} for row in rows]


def confirm_timeout(seconds: Any) -> timedelta:
    """The ``confirm_timeout`` param (seconds, a whole number ≥ 1) as a timedelta."""
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 1:
        raise InvalidInput(f"confirm_timeout must be a whole number of seconds, at least 1, got {seconds!r}.")
    return timedelta(seconds=seconds)


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&])")


def _md(value: str) -> str:
    """A delivery's text as literal Markdown: one line, every special character escaped."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", " ".join(str(value).split()))


def _when(moment: datetime) -> str:
    return as_datetime(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration_text(seconds: float) -> str:
    """A duration as an operator says it: "45 s", "12 min", "1 h 30 min"."""
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 3600:
        return f"{math.ceil(seconds / 60)} min"
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"
