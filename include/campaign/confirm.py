"""The steps of ``confirm_send`` after the role check: validate, claim, plan, aggregate."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select

from campaign import controls
from campaign.clock import utcnow
from campaign.db import sql
from campaign.deliveries import Delivery, get_delivery, load_delivery
from campaign.errors import (
    DeliveryNotFound,
    DeliveryStateError,
    IncompleteSend,
    InvalidInput,
    SendConflict,
    SendRefused,
)
from campaign.pacing import check_max_rate
from campaign.rendering import compile_templates, recipient_context, render
from campaign.schema import delivery_targets, profiles
from campaign.settings import whole_number
from campaign.tracking import register_links

log = logging.getLogger(__name__)

# Chunk sizing when the operator gives no chunk_size (see plan_chunks).
MIN_CHUNK_SIZE = 5_000
CHUNKS_PER_SLOT = 2
# Slots of the pool campaign_smtp, as the deployment declares them (a task cannot read the pool).
POOL_SLOTS_ENV = "CAMPAIGN_SMTP_POOL_SLOTS"
DEFAULT_POOL_SLOTS = 4


def validate_delivery(engine: Engine, delivery_id: Any) -> Delivery:
    """Refuse anything that must not be sent, with a message an operator can act on: an unknown
    delivery, one not ``ready``, an empty target, a template that does not render for the first
    recipient. Raises ``InvalidInput``, ``DeliveryNotFound``, ``DeliveryStateError`` or
    ``TemplateProblem`` (all permanent)."""
    if not isinstance(delivery_id, int) or isinstance(delivery_id, bool) or delivery_id < 1:
        raise InvalidInput(f"delivery_id must be a positive integer, got {delivery_id!r}.")
    delivery = load_delivery(engine, delivery_id)
    if delivery.status != "ready":
        hint = {
            "draft": "it must be prepared and approved first",
            "sending": f"it is being sent by run {delivery.run_id!r}",
            "sent": f"it was already sent by run {delivery.run_id!r} (confirmed by {delivery.confirmed_by})",
            "failed": f"its send by run {delivery.run_id!r} failed; clear the failed tasks of that run to resume",
        }.get(delivery.status, "")
        raise DeliveryStateError(
            f"Delivery {delivery_id} ({delivery.label!r}) cannot be sent: its status is {delivery.status}, "
            f"not ready; {hint}."
        )
    with engine.begin() as conn:
        sample = first_target(conn, delivery_id)
    if sample is None:
        raise DeliveryStateError(
            f"Delivery {delivery_id} ({delivery.label!r}) has an empty target: no eligible recipient. "
            "Import profiles and prepare it again."
        )
    content = delivery.content
    render(compile_templates(content), recipient_context(sample, content), delivery_id)
    return delivery


def first_target(conn: Connection, delivery_id: int) -> dict[str, Any] | None:
    """The first recipient of the prepared target with the profile fields templates may use, or
    None for an empty target."""
    row = (
        conn.execute(
            select(
                delivery_targets.c.seq,
                delivery_targets.c.profile_id,
                delivery_targets.c.email,
                profiles.c.first_name,
                profiles.c.last_name,
                profiles.c.locale,
                profiles.c.mobile,
            )
            .join(profiles, profiles.c.id == delivery_targets.c.profile_id)
            .where(delivery_targets.c.delivery_id == delivery_id)
            .order_by(delivery_targets.c.seq)
            .limit(1)
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def start_send(engine: Engine, delivery_id: int, run_id: str, max_rate: int | None = None) -> tuple[str, int]:
    """Atomically move the delivery from ready to sending for this run, or name the run that owns it.

    Only for a run whose latest approval entry is "OK, send definitively" (``campaign.approval``):
    a run without one (its approval task marked success by hand, say), or whose OK was followed
    by a Cancel, a timeout or a new question, is refused with ``SendRefused`` and sends nothing.
    ``max_rate`` (messages an hour, from the trigger form) replaces the delivery's own rate limit
    for this send. Registers the delivery's tracked links. Returns (the operator who confirmed, how
    many tracked links). Raises ``SendConflict`` naming the run that won.
    """
    with engine.begin() as conn:
        last = conn.execute(sql("select_run_last_action"), {"delivery_id": delivery_id, "run_id": run_id}).first()
        if last is None or last.action != "confirmed":
            latest = "nothing" if last is None else f"{last.action.replace('_', ' ')} ({last.actor or 'no user'})"
            raise SendRefused(
                f"No 'OK, send definitively' stands for delivery {delivery_id} in run {run_id!r} (latest on "
                f"its audit: {latest}): the approval task was not answered OK by the operator (was it marked "
                "success by hand?). This run sends nothing."
            )
        operator = last.actor
        claimed = conn.execute(
            sql("claim_delivery_for_send"),
            {
                "delivery_id": delivery_id,
                "operator": operator,
                "now": utcnow(),
                "run_id": run_id,
                "max_rate": check_max_rate(max_rate),
            },
        ).rowcount
        delivery = get_delivery(conn, delivery_id)
    # A re-run of this task inside the run that already owns the send carries on.
    if claimed == 1 or (delivery.run_id == run_id and delivery.status in ("sending", "failed")):
        links = register_links(engine, delivery_id, delivery.html_template) if delivery.tracking else 0
        return operator, links
    raise SendConflict(
        f"Delivery {delivery_id} was claimed by another run: {delivery.run_id!r} "
        f"(status {delivery.status}, confirmed by {delivery.confirmed_by}). This run sends nothing."
    )


@dataclass(frozen=True)
class Chunk:
    index: int
    first_seq: int
    last_seq: int

    def as_xcom(self) -> dict[str, int]:
        return {"index": self.index, "first_seq": self.first_seq, "last_seq": self.last_seq}


def plan_chunks(
    target_count: int, chunk_size: int | None, max_map_length: int, pool_slots: int = DEFAULT_POOL_SLOTS
) -> list[Chunk]:
    """Contiguous seq ranges of ``chunk_size`` recipients, or of ``auto_chunk_size`` when it is
    None; the chunk size grows so the map never exceeds ``max_map_length``."""
    size = auto_chunk_size(target_count, pool_slots) if chunk_size is None else chunk_size
    if size < 1:
        raise InvalidInput(f"chunk_size must be at least 1, got {chunk_size}.")
    size = max(size, math.ceil(target_count / max_map_length))
    return [
        Chunk(index, first, min(first + size - 1, target_count))
        for index, first in enumerate(range(1, target_count + 1, size))
    ]


@dataclass(frozen=True)
class ChunkPlan:
    """How a delivery's prepared target is cut into chunks: what plan_chunks returns and the
    approval shows."""

    target_count: int
    chunk_size: int | None  # from the trigger form; None: sized from the pool
    pool_slots: int
    chunks: list[Chunk]

    @property
    def largest(self) -> int:
        return max((c.last_seq - c.first_seq + 1 for c in self.chunks), default=0)

    def summary_line(self) -> str:
        """plan_chunks' log line: recipients, chunks, their size and where the size came from."""
        origin = (
            f"chunk_size {self.chunk_size} from the trigger form"
            if self.chunk_size is not None
            else f"sized for {self.pool_slots} slots of pool campaign_smtp"
        )
        return (
            f"plan_chunks: {self.target_count} recipients in {len(self.chunks)} "
            f"chunk{'s' if len(self.chunks) != 1 else ''} of up to "
            f"{self.largest} ({origin})"
        )


def plan_delivery(engine: Engine, delivery_id: int, chunk_size: int | None, max_map_length: int) -> ChunkPlan:
    """``plan_chunks`` for the delivery's prepared target, with the pool's slots as the
    deployment declares them (``pool_slots_setting``)."""
    count, slots = target_count(engine, delivery_id), pool_slots_setting()
    return ChunkPlan(count, chunk_size, slots, plan_chunks(count, chunk_size, max_map_length, slots))


def auto_chunk_size(target_count: int, pool_slots: int) -> int:
    """Recipients per chunk when the operator gives none: from the target size and the slots of
    the pool ``campaign_smtp`` (how many chunks send at once).

    Two forces. Airflow spends 1–2 s of CPU starting each task (a fresh task process, the DAG file
    parsed): that must stay small against the chunk's sending, so no chunk is planned below
    MIN_CHUNK_SIZE (5,000) recipients, which is seconds to minutes of sending, against one start-up.
    And the send ends when its last chunk ends: with a few chunks per slot, a slot that finishes
    early takes the next chunk instead of idling while one slow chunk ends the send; with whole
    rounds of the pool (a multiple of the slots), no slot is left alone on a last chunk.

    Rule: CHUNKS_PER_SLOT (2) chunks per slot, in whole rounds of the pool, as long as each keeps
    at least MIN_CHUNK_SIZE recipients; a target too small for one round gets fewer, larger chunks
    (one chunk below 2 × MIN_CHUNK_SIZE). The chunks are of equal size (the last one smaller by
    the rounding). Examples with 4 slots: 100,000 recipients → 8 chunks of 12,500; 1,000,000 → 8
    of 125,000; 30,000 → 4 of 7,500; 12,000 → 2 of 6,000; 2,000 → 1.
    """
    if pool_slots < 1:
        raise InvalidInput(f"the pool campaign_smtp must have at least 1 slot, got {pool_slots}.")
    fitting = target_count // MIN_CHUNK_SIZE  # how many chunks keep the minimum size
    if fitting >= pool_slots:
        count = min(pool_slots * CHUNKS_PER_SLOT, fitting - fitting % pool_slots)
    else:
        count = max(1, fitting)
    return max(1, math.ceil(target_count / count))


def pool_slots_setting() -> int:
    """The slots of pool ``campaign_smtp``, as the deployment declares them in the environment
    variable CAMPAIGN_SMTP_POOL_SLOTS (default 4); raises ``ConfigurationError`` for anything but
    a positive count.

    A task cannot read the pool itself: in Airflow 3 a task reaches the metadata database only
    through the Execution API, which serves connections, variables, XComs and task states, not
    pools. So the deployment sets the variable where it creates the pool (docker-compose.yaml's
    airflow-init, scripts/run-embedded.sh, the standalone harness). A count that differs from the
    pool's only changes how a send is cut into chunks, never what is sent.
    """
    return whole_number(POOL_SLOTS_ENV, DEFAULT_POOL_SLOTS, minimum=1, what="a positive number of slots")


def target_count(engine: Engine, delivery_id: int) -> int:
    with engine.begin() as conn:
        return conn.execute(sql("count_delivery_targets"), {"delivery_id": delivery_id}).scalar_one()


def cancel_if_stopped(engine: Engine, delivery_id: int, run_id: str) -> int:
    """When an operator stopped the send (status ``stopping``), give every recipient still
    without a sending-log row a ``cancelled`` row; returns how many (0 when not stopped)."""
    with engine.begin() as conn:
        state = controls.send_state(conn, delivery_id)
        if state.status != "stopping" or state.run_id != run_id:
            return 0
        return controls.cancel_unprocessed(conn, delivery_id, run_id)


def finish_send(engine: Engine, delivery_id: int, run_id: str, kpis: dict[str, Any]) -> str:
    """Close the send: ``stopped`` when an operator stopped it, else ``sent`` when every target
    has a sending-log row, ``failed`` otherwise. Returns the status."""
    served = kpis["processed"] + kpis["ignored"]
    with engine.begin() as conn:
        stopping = controls.send_state(conn, delivery_id).status == "stopping"
        status = "stopped" if stopping else "sent" if served == kpis["to_deliver"] else "failed"
        conn.execute(
            sql("finish_delivery"),
            {"delivery_id": delivery_id, "run_id": run_id, "status": status, "now": utcnow()},
        )
    return status


def require_owned_by_run(engine: Engine, delivery_id: int, run_id: str) -> None:
    """Fail (so that the run shows red) when this run was refused before it could start the send."""
    try:
        owner = load_delivery(engine, delivery_id).run_id
    except DeliveryNotFound:
        owner = None
    if owner != run_id:
        raise SendRefused(
            f"This run sent nothing to delivery {delivery_id}: it was refused before the send "
            "(see the log of check_role, validate, approve_send or start_send)."
        )


def raise_unserved(delivery_id: int, kpis: dict[str, Any]) -> None:
    unserved = kpis["to_deliver"] - kpis["processed"] - kpis["ignored"] - kpis["cancelled"]
    raise IncompleteSend(
        f"Delivery {delivery_id} is marked failed: {unserved} of {kpis['to_deliver']} recipients have no "
        "sending-log row because a send_chunk task failed for good. Clear the failed send_chunk tasks of "
        "this run to resume; recipients already recorded are not sent again."
    )


def format_kpi_table(kpis: dict[str, Any]) -> str:
    """A fixed-width table of the KPIs for the task log: each count with its rate beside it.

    The delivered and bounces + errors rates are of processed; the engagement and complaint
    rates are of delivered (the KPIs count delivered recipients only)."""

    def count(value: int | None) -> str:
        return "n/a" if value is None else f"{value:,}"

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2%}"

    rows = [
        ("to deliver", count(kpis["to_deliver"]), ""),
        ("processed", count(kpis["processed"]), ""),
        ("delivered", count(kpis["delivered"]), pct(kpis["delivered_rate"])),
        ("bounces + errors", count(kpis["bounces_errors"]), pct(kpis["bounce_error_rate"])),
        ("  hard bounces", count(kpis["hard_bounces"]), ""),
        ("  soft bounces", count(kpis["soft_bounces"]), ""),
        ("  errors", count(kpis["errors"]), ""),
        ("ignored", count(kpis["ignored"]), ""),
        ("cancelled (stopped)", count(kpis["cancelled"]), ""),
        ("unique opens", count(kpis.get("unique_opens")), pct(kpis["open_rate"])),
        ("  without machines", count(kpis.get("human_unique_opens")), pct(kpis.get("human_open_rate"))),
        ("unique clicks", count(kpis.get("unique_clicks")), pct(kpis["click_through_rate"])),
        ("  without machines", count(kpis.get("human_unique_clicks")), pct(kpis.get("human_click_through_rate"))),
        ("clicks", count(kpis.get("clicks")), ""),
        ("  without machines", count(kpis.get("human_clicks")), ""),
        ("complaints", count(kpis.get("complaints")), pct(kpis.get("complaint_rate"))),
    ]
    name_width = max(len(name) for name, _, _ in rows)
    count_width = max(len("count"), *(len(value) for _, value, _ in rows))
    lines = [
        f"{'KPI'.ljust(name_width)} | {'count'.rjust(count_width)} | {'rate'.rjust(7)}",
        f"{'-' * name_width}-+-{'-' * count_width}-+-{'-' * 7}",
    ]
    lines += [
        f"{name.ljust(name_width)} | {value.rjust(count_width)} | {rate.rjust(7)}".rstrip()
        for name, value, rate in rows
    ]
    lines.append("(delivered and bounces + errors: rates of processed; the others: rates of delivered)")
    return "\n".join(lines)
