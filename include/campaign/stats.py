"""KPIs from the logs: aggregation at the end of a send, the hourly fold of tracking events into
per-recipient engagement, and Compute stats. Aggregation and Compute stats fold the pending
events first, in their own transaction, so their figures are as fresh as the lag allows.

Invariant: a delivery's ``unique_opens``, ``unique_clicks`` and ``clicks`` in ``delivery_kpis``,
and the same without machines (``human_unique_opens``, ``human_unique_clicks``, ``human_clicks``),
are the sums of its ``delivery_engagement`` rows of delivered recipients (sending-log status
``sent``, or no row yet): every rate divides by delivered, so the engagement of a message that
bounced, failed, was ignored or cancelled is kept per recipient but not counted. Every
transaction that changes either takes the engagement lock first, so the hourly fold, Compute
stats and aggregation never count the same events twice, whatever order or concurrency they
run in.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, select

from campaign import machine
from campaign.clock import utcnow
from campaign.db import sql
from campaign.schema import deliveries, delivery_kpis

DEFAULT_LAG_SECONDS = 30.0
# The counts kept in step with engagement: by everyone, and by people only (machines left out).
ENGAGEMENT_COUNTS = (
    "unique_opens", "unique_clicks", "clicks", "human_unique_opens", "human_unique_clicks", "human_clicks",
)  # fmt: skip
# Whose engagement the KPIs count: delivered recipients ('sent'), and those whose sending-log row
# is not written yet (None: the relay accepted the message a moment before its chunk committed).
# Every rate divides by delivered, so opens of a message that bounced later by DSN, or of one that
# never left, must not be in its numerator (compute_delivery_kpis.sql subtracts the same).
COUNTED_LOG_STATUSES = ("sent", None)
KPI_COLUMNS = (
    "to_deliver", "delivered", "bounces_errors", "hard_bounces", "soft_bounces", "errors", "ignored", "cancelled",
    "processed",    "delivered_rate", "bounce_error_rate", "unique_opens", "open_rate", "unique_clicks", "clicks",
    "click_through_rate", "human_unique_opens", "human_open_rate", "human_unique_clicks", "human_clicks",
    "human_click_through_rate", "complaints", "complaint_rate",
)  # fmt: skip


def lock_engagement(conn: Connection) -> None:
    now = utcnow()
    conn.execute(sql("ensure_engagement_watermark"), {"now": now})
    conn.execute(sql("lock_engagement"), {"now": now})


def _delivery_kpis(conn: Connection, delivery_id: int) -> dict[str, Any]:
    return dict(conn.execute(sql("compute_delivery_kpis"), {"delivery_id": delivery_id}).mappings().one())


def _write_kpis(conn: Connection, delivery_id: int, kpis: dict[str, Any]) -> None:
    conn.execute(sql("upsert_delivery_kpis"), {**kpis, "delivery_id": delivery_id, "computed_at": utcnow()})


def compute_kpis(engine: Engine, delivery_id: int) -> dict[str, Any]:
    """Recompute a delivery's KPIs from its sending logs and folded engagement, and store them."""
    with engine.begin() as conn:
        lock_engagement(conn)
        kpis = _delivery_kpis(conn, delivery_id)
        _write_kpis(conn, delivery_id, kpis)
        return kpis


def aggregate_kpis(engine: Engine, delivery_id: int, lag_seconds: float = DEFAULT_LAG_SECONDS) -> Aggregated:
    """The KPIs at the end of a send: the tracking events not folded yet (of every delivery, as
    the hourly run would) are folded first, then the delivery's KPIs are recomputed and stored,
    in one transaction under the engagement lock. So the opens and clicks recorded while it
    sent are counted up to ``lag_seconds`` ago; younger events are left to the next fold, which
    adds them once (the watermark moved in this transaction)."""
    started = time.monotonic()
    with engine.begin() as conn:
        lock_engagement(conn)
        folded = _fold_new_events(conn, lag_seconds, started)
        kpis = _delivery_kpis(conn, delivery_id)
        _write_kpis(conn, delivery_id, kpis)
    return Aggregated(kpis, folded)


@dataclass
class Aggregated:
    kpis: dict[str, Any]
    folded: FoldResult


@dataclass
class FoldResult:
    events: int
    recipients: int
    deliveries: int
    upto_id: int | None
    seconds: float


def lag_seconds_from_env() -> float:
    """CAMPAIGN_TRACKING_LAG_SECONDS, seconds: events younger than this wait for the next fold
    (see select_new_events_upper_bound.sql).

    Never less than ``machine.SAME_MOMENT_SECONDS``: the same-second and hidden-link rules flag a
    recipient's events of the last moment after they were recorded, which is only right while
    the fold has not taken them yet (campaign.machine). A smaller setting is raised to it.
    """
    configured = float(os.environ.get("CAMPAIGN_TRACKING_LAG_SECONDS", DEFAULT_LAG_SECONDS))
    return max(configured, machine.SAME_MOMENT_SECONDS)


def fold_new_events(engine: Engine, lag_seconds: float = DEFAULT_LAG_SECONDS) -> FoldResult:
    """Fold tracking events newer than the watermark into engagement and the KPI rows, atomically."""
    started = time.monotonic()
    with engine.begin() as conn:
        lock_engagement(conn)
        return _fold_new_events(conn, lag_seconds, started)


def _fold_new_events(conn: Connection, lag_seconds: float, started: float) -> FoldResult:
    now = utcnow()
    after_id = conn.execute(sql("select_engagement_watermark")).scalar_one()
    bound = conn.execute(
        sql("select_new_events_upper_bound"), {"after_id": after_id, "cutoff": now - timedelta(seconds=lag_seconds)}
    ).one()
    if bound.upto_id is None:
        return FoldResult(0, 0, 0, None, time.monotonic() - started)
    changes = (
        conn.execute(sql("select_engagement_changes"), {"after_id": after_id, "upto_id": bound.upto_id})
        .mappings()
        .all()
    )
    deltas: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ENGAGEMENT_COUNTS, 0))
    for row in changes:
        delta = deltas[row["delivery_id"]]
        if row["log_status"] not in COUNTED_LOG_STATUSES:
            continue  # engagement of a message not delivered: kept per recipient, not in the KPIs
        for prefix in ("", "human_"):
            delta[f"{prefix}unique_opens"] += (row[f"first_{prefix}open_at"] is not None) - (
                row[f"old_first_{prefix}open_at"] is not None
            )
            delta[f"{prefix}unique_clicks"] += (row[f"first_{prefix}click_at"] is not None) - (
                row[f"old_first_{prefix}click_at"] is not None
            )
            delta[f"{prefix}clicks"] += row[f"{prefix}clicks"] - row[f"old_{prefix}clicks"]
    if changes:
        conn.execute(
            sql("upsert_engagement"),
            [
                {
                    "delivery_id": row["delivery_id"],
                    "profile_id": row["profile_id"],
                    "first_open_at": row["first_open_at"],
                    "first_click_at": row["first_click_at"],
                    "clicks": row["clicks"],
                    "first_human_open_at": row["first_human_open_at"],
                    "first_human_click_at": row["first_human_click_at"],
                    "human_clicks": row["human_clicks"],
                    "now": now,
                }
                for row in changes
            ],
        )
        conn.execute(
            sql("apply_engagement_deltas"),
            [{"delivery_id": delivery_id, "now": now, **delta} for delivery_id, delta in deltas.items()],
        )
    conn.execute(sql("advance_engagement_watermark"), {"upto_id": bound.upto_id, "now": now})
    return FoldResult(bound.events, len(changes), len(deltas), bound.upto_id, time.monotonic() - started)


def stored_kpis(conn: Connection, delivery_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(delivery_kpis).where(delivery_kpis.c.delivery_id == delivery_id)).mappings().first()
    return dict(row) if row else None


@dataclass
class Recomputed:
    """Compute stats for one delivery: the stored KPIs before and after, and whether its engagement
    rows disagreed with its tracking events and were rebuilt."""

    delivery_id: int
    before: dict[str, Any] | None
    after: dict[str, Any]
    engagement_rebuilt: int | None = None
    engagement_mismatch: str | None = None
    events_folded: int = 0  # pending tracking events (of any delivery) folded first


def recompute_delivery(
    engine: Engine, delivery_id: int, lag_seconds: float = DEFAULT_LAG_SECONDS, rebuild_engagement: bool = False
) -> Recomputed:
    """Compute stats for one delivery, in one transaction.

    Tracking events not folded yet are folded first (as the hourly run would, for every delivery),
    so the figures are as fresh as the lag allows. Every KPI is then recomputed from the sending
    logs and engagement, and the engagement counts are checked against the tracking events
    themselves: when they disagree (or ``rebuild_engagement`` asks for it) the delivery's
    engagement rows are rebuilt from its events before the KPIs are stored. The check reads only
    covering indexes, so the common case costs a few index scans and writes one row.
    """
    with engine.begin() as conn:
        lock_engagement(conn)
        folded = _fold_new_events(conn, lag_seconds, time.monotonic())
        upto_id = conn.execute(sql("select_engagement_watermark")).scalar_one()
        before = stored_kpis(conn, delivery_id)
        kpis = _delivery_kpis(conn, delivery_id)
        from_events = dict(
            conn.execute(sql("count_delivery_tracking"), {"delivery_id": delivery_id, "upto_id": upto_id})
            .mappings()
            .one()
        )
        mismatch = _engagement_mismatch(kpis, from_events)
        rebuilt = None
        if mismatch or rebuild_engagement:
            conn.execute(sql("delete_delivery_engagement"), {"delivery_id": delivery_id})
            rebuilt = conn.execute(
                sql("rebuild_delivery_engagement"), {"delivery_id": delivery_id, "upto_id": upto_id, "now": utcnow()}
            ).rowcount
            kpis = _delivery_kpis(conn, delivery_id)
        _write_kpis(conn, delivery_id, kpis)
    return Recomputed(delivery_id, before, kpis, rebuilt, mismatch, folded.events)


def _engagement_mismatch(kpis: dict[str, Any], from_events: dict[str, Any]) -> str | None:
    differences = [
        f"{name} {kpis[name]} in engagement, {from_events[name]} in tracking_logs"
        for name in ENGAGEMENT_COUNTS
        if kpis[name] != from_events[name]
    ]
    return "; ".join(differences) or None


def recompute_deliveries(
    engine: Engine, delivery_ids: list[int], lag_seconds: float = DEFAULT_LAG_SECONDS, rebuild_engagement: bool = False
) -> list[Recomputed]:
    """Compute stats for several deliveries, one transaction each."""
    return [recompute_delivery(engine, delivery_id, lag_seconds, rebuild_engagement) for delivery_id in delivery_ids]


def deliveries_to_recompute(engine: Engine, delivery_id: int | None, days: int) -> list[int]:
    """The one delivery asked for, or every delivery confirmed in the last ``days`` days."""
    with engine.begin() as conn:
        if delivery_id is not None:
            found = conn.execute(select(deliveries.c.id).where(deliveries.c.id == delivery_id)).scalar()
            return [found] if found is not None else []
        since = utcnow() - timedelta(days=days)
        query = (
            select(deliveries.c.id)
            .where(deliveries.c.confirmed_at >= since, deliveries.c.status.in_(("sending", "sent", "failed")))
            .order_by(deliveries.c.id)
        )
        return list(conn.execute(query).scalars())


def before_after_table(changes: list[Recomputed]) -> str:
    """One line per delivery and KPI that changed: before, after (pandas, for the task log)."""
    rows = []
    for change in changes:
        delivery_id, before, after = change.delivery_id, change.before, change.after
        for column in KPI_COLUMNS:
            old = None if before is None else before.get(column)
            new = after.get(column)
            if before is None or not _same(old, new):
                rows.append({"delivery": delivery_id, "kpi": column, "before": old, "after": new})
    if not rows:
        return "no KPI changed"
    # object dtype: counts stay integers and missing values read None in a column mixing both
    return pd.DataFrame(rows, dtype=object).to_string(index=False)


def engagement_warnings(changes: list[Recomputed]) -> list[str]:
    """One sentence per delivery whose engagement disagreed with its tracking logs."""
    return [
        f"delivery {change.delivery_id}: engagement disagreed with the tracking logs ({change.engagement_mismatch}); "
        f"rebuilt {change.engagement_rebuilt} recipient rows"
        for change in changes
        if change.engagement_mismatch
    ]


def recompute_summary(changes: list[Recomputed], seconds: float) -> str:
    """The task log's summary line of a Compute stats run, then its before/after table."""
    rebuilt = sum(change.engagement_rebuilt is not None for change in changes)
    folded = sum(change.events_folded for change in changes)
    return (
        f"recompute_kpis: {len(changes)} deliveries recomputed from the logs, {folded} pending tracking events "
        f"folded first, engagement rebuilt for {rebuilt} ({seconds:.2f}s)\n{before_after_table(changes)}"
    )


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, float) or isinstance(new, float):
        return old is not None and new is not None and abs(old - new) < 1e-12
    return old == new
