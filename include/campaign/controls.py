"""Send controls: pause, resume and stop a delivery that is sending, and the automatic brake.

The delivery's ``status`` is the switch every ``send_chunk`` reads between two batches of its
send (``send_state``), so a control takes effect within about a second whatever the number of
chunks and workers:

- ``sending → paused`` (``pause``, or the automatic brake): each chunk commits its sending-log
  rows, leaves the message in flight finished, and gives its worker and pool slot back (the
  Airflow glue reschedules it); chunks not started yet do the same as soon as they start.
- ``paused → sending`` (``resume``): the rescheduled chunks go on from the first recipient
  without a sending-log row, so nobody gets a message twice.
- ``sending | paused → stopping`` (``stop``): the chunks end without sending more; the run's
  ``aggregate_kpis`` gives every recipient still without a row a ``cancelled`` row
  (``cancel_unprocessed``) and closes the delivery ``stopped``.

Every change is one compare-and-set ``UPDATE`` plus one ``delivery_audit`` row in the same
transaction: of two operators pausing at once, or a person and the brake, exactly one is
recorded, and the other is told the delivery's state in a sentence.

The automatic brake (``check_brake``), after Adobe Campaign's and every MTA's: when the bounce +
error rate of the last ``brake_window`` processed messages of the delivery (default 500, or all
since the send started or was last resumed while fewer) is above ``brake_threshold`` percent
(default 30), the delivery pauses itself. The window restarts at each resume, so that an
operator who resumes after fixing the relay is not braked again by the old failures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine

from campaign.audit import record_action
from campaign.clock import as_datetime, utcnow
from campaign.db import sql
from campaign.errors import ConfigurationError, DeliveryNotFound, DeliveryStateError, InvalidInput, RoleDenied
from campaign.operators import has_role
from campaign.schema import ROLE_START_DELIVERIES, check_delivery_id
from campaign.settings import seconds_list

DEFAULT_BRAKE_THRESHOLD = 30.0  # percent of processed messages that bounced or failed
DEFAULT_BRAKE_WINDOW = 500  # the last so many processed messages of the delivery
MAX_BRAKE_WINDOW = 1_000_000  # a window read after every failing commit must stay a short read
# A rate over fewer messages says nothing about the relay: 1 bounce among the first 2 messages
# is not a 50 % failure rate. The brake waits for this many (or the whole window, if smaller).
BRAKE_MIN_SAMPLE = 20

PAUSE_RECHECK_ENV = "CAMPAIGN_PAUSE_RECHECK_SECONDS"
# At least 30 s: Airflow 3.3.2's scheduler can take the previous exit of a rescheduled task for
# the end of its next start when it handles that exit late (a busy machine, seconds), and then
# marks the task up_for_retry ("finished with state success, but the task instance's state
# attribute is queued"): each such lost try costs a retry, and four of them failed a paused send
# in a fresh user's test with 5 s. At most 120 s: the longest wait for a resume.
DEFAULT_PAUSE_RECHECK = (30.0, 120.0)

# Which control may act on which status, and the sentence for any other status.
_ACCEPTS = {
    "paused": ("sending",),
    "resumed": ("paused",),
    "stopped": ("sending", "paused"),
}
_VERB = {"paused": "pause", "resumed": "resume", "stopped": "stop"}
_WHY_NOT = {
    "paused": "only a delivery that is sending can be paused",
    "resumed": "only a paused delivery can be resumed",
    "stopped": "only a delivery that is sending or paused can be stopped",
}


@dataclass(frozen=True)
class SendState:
    """What a chunk needs between two batches: the delivery's status and its brake settings."""

    status: str
    run_id: str | None
    brake_threshold: float
    brake_window: int
    brake_after_log_id: int
    paused_at: datetime | None  # the latest pause (UTC), None when never paused


@dataclass(frozen=True)
class BrakeReading:
    """The automatic brake's window: ``processed`` messages (sent, bounced, failed), of which
    ``bounces_errors`` bounced or failed; ``threshold`` in percent, ``window`` in messages."""

    processed: int
    bounces_errors: int
    threshold: float
    window: int

    @property
    def rate(self) -> float:
        """Percent of the window's messages that bounced or failed (0 when it is empty)."""
        return 100.0 * self.bounces_errors / self.processed if self.processed else 0.0

    @property
    def tripped(self) -> bool:
        """Above the threshold, over enough messages to mean something (``BRAKE_MIN_SAMPLE``)."""
        return self.processed >= min(BRAKE_MIN_SAMPLE, self.window) and self.rate > self.threshold

    def sentence(self) -> str:
        return (
            f"automatic brake: {self.bounces_errors:,} of the last {self.processed:,} processed messages "
            f"bounced or failed ({self.rate:.1f} % > {self.threshold:g} %, window {self.window:,})"
        )


def check_brake_threshold(value: Any) -> float | None:
    """``brake_threshold`` as given in a spec: None (the default, 30) or a percentage from 0 to
    100 (0: any bounce or error pauses; 100: the brake never acts); raises ``InvalidInput``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 <= value <= 100):
        raise InvalidInput(
            f"brake_threshold must be a percentage from 0 to 100 (or empty for {DEFAULT_BRAKE_THRESHOLD:g}), "
            f"got {value!r}."
        )
    if isinstance(value, float) and math.isnan(value):
        raise InvalidInput("brake_threshold must be a percentage from 0 to 100, got NaN.")
    return float(value)


def check_brake_window(value: Any) -> int | None:
    """``brake_window`` as given in a spec: None (the default, 500) or a whole number ≥ 1 of
    processed messages; raises ``InvalidInput`` naming the value otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BRAKE_WINDOW:
        raise InvalidInput(
            f"brake_window must be a whole number of messages from 1 to {MAX_BRAKE_WINDOW:,} "
            f"(or empty for {DEFAULT_BRAKE_WINDOW}), got {value!r}."
        )
    return value


def pause_recheck_delay(state: SendState) -> float:
    """Seconds a chunk of a paused delivery sleeps, out of its worker and pool slots, before it
    looks again: a quarter of the time the delivery has been paused, within
    ``CAMPAIGN_PAUSE_RECHECK_SECONDS`` ("min,max", default 30,120). A short pause resumes within
    half a minute; a long one costs each chunk one task start every two minutes.
    Raises ``ConfigurationError`` for a wrong setting."""
    bounds = seconds_list(PAUSE_RECHECK_ENV, DEFAULT_PAUSE_RECHECK, example="30,120")
    if len(bounds) != 2 or bounds[0] > bounds[1] or bounds[0] <= 0:
        raise ConfigurationError(
            f"{PAUSE_RECHECK_ENV} must be two seconds, the shortest and the longest sleep, such as 30,120; "
            f"got {','.join(f'{b:g}' for b in bounds)}."
        )
    paused_for = 0.0 if state.paused_at is None else (utcnow() - state.paused_at).total_seconds()
    return min(bounds[1], max(bounds[0], paused_for / 4))


def send_state(conn: Connection, delivery_id: int) -> SendState:
    """The delivery's status and brake settings (defaults filled in); ``DeliveryNotFound``."""
    row = conn.execute(sql("select_delivery_send_state"), {"delivery_id": delivery_id}).mappings().first()
    if row is None:
        raise DeliveryNotFound(f"Delivery {delivery_id} does not exist.")
    return SendState(
        status=row["status"],
        run_id=row["run_id"],
        brake_threshold=DEFAULT_BRAKE_THRESHOLD if row["brake_threshold"] is None else float(row["brake_threshold"]),
        brake_window=row["brake_window"] or DEFAULT_BRAKE_WINDOW,
        brake_after_log_id=row["brake_after_log_id"] or 0,
        paused_at=as_datetime(row["paused_at"]),
    )


def brake_reading(conn: Connection, delivery_id: int, state: SendState) -> BrakeReading:
    """The brake's window of the delivery now (see the module docstring)."""
    row = (
        conn.execute(
            sql("select_brake_window"),
            {"delivery_id": delivery_id, "after_id": state.brake_after_log_id, "window": state.brake_window},
        )
        .mappings()
        .one()
    )
    return BrakeReading(row["processed"], row["bounces_errors"] or 0, state.brake_threshold, state.brake_window)


def check_brake(engine: Engine, delivery_id: int, run_id: str) -> BrakeReading | None:
    """Pause the delivery when its brake trips; the reading when this call paused it, else None.

    Called by a chunk after it committed rows that include a bounce or an error: a window above
    the threshold always ends with such a commit, so a chunk with only successes never pays for
    the query. Only the run that owns the send, while it is ``sending``, can be braked; of
    several chunks tripping at once exactly one records the ``auto_paused`` entry.
    """
    with engine.begin() as conn:
        state = send_state(conn, delivery_id)
        if state.status != "sending" or state.run_id != run_id:
            return None
        reading = brake_reading(conn, delivery_id, state)
        if not reading.tripped:
            return None
        if not _change(conn, delivery_id, "auto_paused", None, reading.sentence(), run_id):
            return None
    return reading


def pause(engine: Engine, delivery_id: int, by: str | None, reason: str | None = None) -> str:
    """Pause a sending delivery for operator ``by`` (who must hold Start deliveries).

    Returns the sentence recorded; raises ``RoleDenied``, ``DeliveryNotFound``, or
    ``DeliveryStateError`` (not sending), changing nothing.
    """
    return _control(engine, delivery_id, "paused", by, reason)


def resume(engine: Engine, delivery_id: int, by: str | None, reason: str | None = None) -> str:
    """Resume a paused delivery (see ``pause`` for the errors); the brake's window restarts."""
    return _control(engine, delivery_id, "resumed", by, reason)


def stop(engine: Engine, delivery_id: int, by: str | None, reason: str | None = None) -> str:
    """Stop a sending or paused delivery: no more messages; its run cancels the rest (see the
    module docstring). Errors as ``pause``."""
    return _control(engine, delivery_id, "stopped", by, reason)


MAX_REASON_LENGTH = 500


def _control(engine: Engine, delivery_id: Any, action: str, by: str | None, reason: str | None) -> str:
    verb = _VERB[action]
    delivery_id = check_delivery_id(delivery_id)
    reason = (reason or "").strip() or None
    if reason is not None and len(reason) > MAX_REASON_LENGTH:
        raise InvalidInput(f"The reason is {len(reason):,} characters long; at most {MAX_REASON_LENGTH} are kept.")
    if not by:
        raise RoleDenied(f"Nobody to {verb} delivery {delivery_id} as: give the operator's login.")
    if not has_role(engine, by, ROLE_START_DELIVERIES):
        raise RoleDenied(
            f"User {by!r} may not {verb} delivery {delivery_id}: only operators with the Start deliveries role "
            "can control a send."
        )
    detail = f"{action} by {by}" + (f": {reason}" if reason else "")
    with engine.begin() as conn:
        state = send_state(conn, delivery_id)
        if state.status not in _ACCEPTS[action] or not _change(conn, delivery_id, action, by, detail, state.run_id):
            current = send_state(conn, delivery_id).status
            # Of two controls at once the loser learns who won, not only the state it left.
            last = conn.execute(sql("select_last_control"), {"delivery_id": delivery_id}).scalar()
            since = f" ({last})" if last and current in ("paused", "stopping", "stopped") else ""
            raise DeliveryStateError(
                f"Delivery {delivery_id} is {current}{since}: {_WHY_NOT[action]}. Nothing was changed."
            )
    return f"Delivery {delivery_id} {detail}."


def _change(
    conn: Connection, delivery_id: int, action: str, actor: str | None, detail: str, run_id: str | None
) -> bool:
    """Compare-and-set the status for ``action`` and record it; False when another change won."""
    statement = {"paused": "pause_delivery", "auto_paused": "pause_delivery", "resumed": "resume_delivery"}.get(
        action, "stop_delivery"
    )
    if conn.execute(sql(statement), {"delivery_id": delivery_id}).rowcount != 1:
        return False
    record_action(conn, delivery_id, run_id, action, actor, detail)
    return True


def reopen_failed_send(engine: Engine, delivery_id: int, run_id: str) -> bool:
    """A ``failed`` send whose run runs a chunk again (an operator cleared the failed tasks, as
    the failure's sentence says to) is ``sending`` again: else it could not be paused or
    stopped while it sends. Recorded once as ``resumed`` with no actor; True when this call
    reopened it."""
    with engine.begin() as conn:
        if conn.execute(sql("reopen_failed_send"), {"delivery_id": delivery_id, "run_id": run_id}).rowcount != 1:
            return False
        detail = "resumed: a send_chunk task of the failed run runs again (cleared in Airflow)"
        record_action(conn, delivery_id, run_id, "resumed", None, detail)
    return True


def last_control(engine: Engine, delivery_id: int) -> str | None:
    """The sentence of the delivery's latest pause, automatic pause or stop, None if none."""
    with engine.begin() as conn:
        return conn.execute(sql("select_last_control"), {"delivery_id": delivery_id}).scalar()


def cancel_unprocessed(conn: Connection, delivery_id: int, run_id: str) -> int:
    """Give every target still without a sending-log row a ``cancelled`` row (the send was
    stopped); returns how many. Set-based, and a no-op for targets that have a row."""
    return conn.execute(
        sql("insert_cancelled_logs"), {"delivery_id": delivery_id, "run_id": run_id, "now": utcnow()}
    ).rowcount
