"""KPIs from the logs: aggregation at the end of a send, the hourly fold of tracking events into
per-recipient engagement, and Compute stats.

Invariant: a delivery's ``unique_opens``, ``unique_clicks`` and ``clicks`` in ``delivery_kpis``
are the sums of its ``delivery_engagement`` rows. Every transaction that changes either takes
the engagement lock first, so the hourly fold, Compute stats and aggregation never count the
same events twice, whatever order or concurrency they run in.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, select

from campaign.clock import utcnow
from campaign.db import sql
from campaign.schema import deliveries, delivery_kpis

DEFAULT_LAG_SECONDS = 30.0
KPI_COLUMNS = (
    "to_deliver", "delivered", "bounces_errors", "hard_bounces", "soft_bounces", "errors", "ignored", "processed",
    "delivered_rate", "bounce_error_rate", "unique_opens", "open_rate", "unique_clicks", "clicks",
    "click_through_rate",
)  # fmt: skip


def lock_engagement(conn: Connection) -> None:
    now = utcnow()
    conn.execute(sql("ensure_engagement_watermark"), {"now": now})
    conn.execute(sql("lock_engagement"), {"now": now})


def _store_kpis(conn: Connection, delivery_id: int) -> dict[str, Any]:
    kpis = dict(conn.execute(sql("compute_delivery_kpis"), {"delivery_id": delivery_id}).mappings().one())
    conn.execute(sql("upsert_delivery_kpis"), {**kpis, "delivery_id": delivery_id, "computed_at": utcnow()})
    return kpis


def compute_kpis(engine: Engine, delivery_id: int) -> dict[str, Any]:
    """Recompute a delivery's KPIs from its sending logs and folded engagement, and store them."""
    with engine.begin() as conn:
        lock_engagement(conn)
        return _store_kpis(conn, delivery_id)


@dataclass
class FoldResult:
    events: int
    recipients: int
    deliveries: int
    upto_id: int | None
    seconds: float


def fold_new_events(engine: Engine, lag_seconds: float = DEFAULT_LAG_SECONDS) -> FoldResult:
    """Fold tracking events newer than the watermark into engagement and the KPI rows, atomically."""
    started = time.monotonic()
    now = utcnow()
    with engine.begin() as conn:
        lock_engagement(conn)
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
        deltas: dict[int, dict[str, int]] = defaultdict(lambda: {"unique_opens": 0, "unique_clicks": 0, "clicks": 0})
        for row in changes:
            delta = deltas[row["delivery_id"]]
            delta["unique_opens"] += (row["first_open_at"] is not None) - (row["old_first_open_at"] is not None)
            delta["unique_clicks"] += (row["first_click_at"] is not None) - (row["old_first_click_at"] is not None)
            delta["clicks"] += row["clicks"] - row["old_clicks"]
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


def recompute_delivery(engine: Engine, delivery_id: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Compute stats for one delivery: engagement rebuilt from all its events, every KPI from the
    logs; returns the stored KPIs before and after."""
    now = utcnow()
    with engine.begin() as conn:
        lock_engagement(conn)
        before = stored_kpis(conn, delivery_id)
        conn.execute(sql("delete_delivery_engagement"), {"delivery_id": delivery_id})
        conn.execute(sql("rebuild_delivery_engagement"), {"delivery_id": delivery_id, "now": now})
        after = _store_kpis(conn, delivery_id)
    return before, after


def recompute_deliveries(
    engine: Engine, delivery_ids: list[int]
) -> list[tuple[int, dict[str, Any] | None, dict[str, Any]]]:
    """Compute stats for several deliveries, one transaction each: (delivery, before, after)."""
    return [(delivery_id, *recompute_delivery(engine, delivery_id)) for delivery_id in delivery_ids]


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


def before_after_table(changes: list[tuple[int, dict[str, Any] | None, dict[str, Any]]]) -> str:
    """One line per delivery and KPI that changed: before, after (pandas, for the task log)."""
    rows = []
    for delivery_id, before, after in changes:
        for column in KPI_COLUMNS:
            old = None if before is None else before.get(column)
            new = after.get(column)
            if before is None or not _same(old, new):
                rows.append({"delivery": delivery_id, "kpi": column, "before": old, "after": new})
    if not rows:
        return "no KPI changed"
    # object dtype: counts stay integers and missing values read None in a column mixing both
    return pd.DataFrame(rows, dtype=object).to_string(index=False)


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, float) or isinstance(new, float):
        return old is not None and new is not None and abs(old - new) < 1e-12
    return old == new
