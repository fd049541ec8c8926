"""The figures of the Deployment view: progress and KPIs of each delivery, reasons, links, history.

Plain dictionaries, JSON-ready: the HTML pages and the JSON API show the same numbers.
"""

from __future__ import annotations

import threading
import time
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from campaign.approval import audit_trail
from campaign.clock import as_datetime, utcnow
from campaign.db import sql
from campaign.errors import DeliveryNotFound
from campaign.operators import has_role
from campaign.profiles import profile_history, profile_state
from campaign.schema import LOG_STATUSES, ROLE_START_DELIVERIES, check_delivery_id

# The audit entries that say why a delivery is held: shown above its progress.
HOLDING_ACTIONS = ("paused", "auto_paused", "stopped")
TIME_FIELDS = ("confirmed_at", "finished_at", "computed_at", "rates_updated_at")
# The KPIs of the view and the JSON API: opens and clicks twice, by everyone and without machines
# (human_*, campaign.machine), side by side.
KPI_NAMES = (
    "to_deliver", "delivered", "bounces_errors", "hard_bounces", "soft_bounces", "errors", "ignored", "cancelled",
    "processed", "delivered_rate", "bounce_error_rate",
    "unique_opens", "open_rate", "unique_clicks", "clicks", "click_through_rate",
    "human_unique_opens", "human_open_rate", "human_unique_clicks", "human_clicks", "human_click_through_rate",
    "complaints", "complaint_rate",
)  # fmt: skip


def _delivery(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    delivery = dict(row)
    for name in TIME_FIELDS:
        moment = as_datetime(delivery[name])
        delivery[name] = moment.isoformat() if moment else None
    target = delivery["target_count"] or 0
    processed = delivery.pop("logged")
    delivery["progress"] = {
        "processed": processed,
        "to_deliver": target,
        "fraction": processed / target if target else None,
    }
    rates_at = as_datetime(row["rates_updated_at"])
    delivery["rates_age_minutes"] = int((now - rates_at).total_seconds() // 60) if rates_at else None
    delivery["kpis"] = None if row["to_deliver"] is None else {name: delivery[name] for name in KPI_NAMES}
    for name in KPI_NAMES:
        delivery.pop(name)
    return delivery


def list_deliveries(engine: Engine, limit: int = 200) -> list[dict[str, Any]]:
    now = utcnow()
    with engine.begin() as conn:
        rows = conn.execute(sql("deployment_deliveries"), {"limit": limit}).mappings().all()
    return [_delivery(dict(row), now) for row in rows]


def delivery_detail(engine: Engine, delivery_id: int) -> dict[str, Any]:
    check_delivery_id(delivery_id)
    with engine.begin() as conn:
        row = conn.execute(sql("deployment_delivery"), {"delivery_id": delivery_id}).mappings().first()
        if row is None:
            raise DeliveryNotFound(f"Delivery {delivery_id} does not exist.")
        reasons = conn.execute(sql("delivery_failure_reasons"), {"delivery_id": delivery_id}).mappings().all()
        links = conn.execute(sql("delivery_link_clicks"), {"delivery_id": delivery_id}).mappings().all()
    detail = _delivery(dict(row), utcnow())
    detail["failure_reasons"] = [dict(r) for r in reasons]
    detail["links"] = [dict(link) for link in links]
    detail["audit"] = audit_trail(engine, delivery_id)
    detail["held"] = (
        next((entry for entry in reversed(detail["audit"]) if entry["action"] in HOLDING_ACTIONS), None)
        if detail["status"] in ("paused", "stopping", "stopped")
        else None
    )
    detail["charts"] = delivery_charts(engine, delivery_id)
    return detail


def delivery_controls(engine: Engine, status: str, login: str | None) -> list[str]:
    """The controls ``login`` may use on a delivery in ``status``, in the page's order: pause or
    resume, then stop; none without the Start deliveries role."""
    possible = {"sending": ["pause", "stop"], "paused": ["resume", "stop"]}.get(status, [])
    return possible if possible and login and has_role(engine, login, ROLE_START_DELIVERIES) else []


# ---------------------------------------------------------------- the charts' series

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
# The chart's event types, and the key each has in a series row.
CHART_EVENTS = {"open": "opens", "click": "clicks"}


# Counting reads every sending-log row and event of the delivery: for 1,000,000 rows and 300,000
# events 1.8 s on SQLite and 0.6 s on PostgreSQL (benchmarks/charts_bench.py), an index covering
# the counts saves under a quarter of it (the cost is truncating and grouping each row, not
# reading it), against a page that refreshes every 5 s while sending. So each delivery's series
# are kept, for every viewer, ten times as long as counting them took and at least
# CHART_CACHE_MIN_SECONDS: the counts cost at most a tenth of a core however many pages are open.
CHART_CACHE_MIN_SECONDS = 2.0
CHART_CACHE_FACTOR = 10
_chart_cache: weakref.WeakKeyDictionary[Engine, dict[int, tuple[float, dict[str, Any]]]] = weakref.WeakKeyDictionary()
_chart_cache_lock = threading.Lock()


def delivery_charts(engine: Engine, delivery_id: int) -> dict[str, list[dict[str, Any]]]:
    """The two series of the delivery's charts, counted in SQL (never a row per recipient in Python).

    ``{"messages_per_minute": messages_per_minute(...), "events_per_hour": events_per_hour(...)}``,
    the opens and clicks counted from the hour of the first sending-log row (see both functions).
    Kept a while per delivery (``CHART_CACHE_MIN_SECONDS``, longer when counting is slow): a
    result may be that many seconds old.
    """
    now = time.monotonic()
    with _chart_cache_lock:
        expires, cached = _chart_cache.get(engine, {}).get(delivery_id, (0.0, None))
    if cached is not None and now < expires:
        return cached
    series = count_chart_series(engine, delivery_id)
    spent = time.monotonic() - now
    with _chart_cache_lock:
        kept = _chart_cache.setdefault(engine, {})
        for stale in [key for key, (until, _) in kept.items() if until <= now]:
            del kept[stale]
        kept[delivery_id] = (now + max(CHART_CACHE_MIN_SECONDS, CHART_CACHE_FACTOR * spent), series)
    return series


def count_chart_series(engine: Engine, delivery_id: int) -> dict[str, list[dict[str, Any]]]:
    """``delivery_charts``' series counted now, not kept (what the benchmark measures)."""
    # Autocommit: on SQLite a transaction would take the write lock (BEGIN IMMEDIATE, db.py) and
    # hold up the chunks writing their logs for as long as the counts take; each SELECT reads alone.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        minutes = messages_per_minute(conn, delivery_id)
        since = datetime.fromisoformat(minutes[0]["minute"]) if minutes else None
        hours = events_per_hour(conn, delivery_id, since)
    return {"messages_per_minute": minutes, "events_per_hour": hours}


def messages_per_minute(conn: Connection, delivery_id: int) -> list[dict[str, Any]]:
    """Sending-log rows of a delivery per UTC minute, by outcome, first logged minute to last.

    One row per minute, every minute in between included (zeros where nothing was logged):
    ``{"minute": "2026-11-27T10:04:00+00:00", "sent": 812, "bounced": 3, "failed": 0,
    "ignored": 1, "cancelled": 0}``; ``minute`` is the start of the minute, counts are sending-log
    rows (recipients processed) logged in it. ``[]`` while nothing is logged.
    """
    rows = conn.execute(sql("delivery_messages_per_minute", conn.dialect.name), {"delivery_id": delivery_id})
    counts: dict[datetime, dict[str, int]] = {}
    for minute, status, messages in rows:
        counts.setdefault(_utc(minute), dict.fromkeys(LOG_STATUSES, 0))[status] = messages
    return [{"minute": moment.isoformat(), **values} for moment, values in _dense(counts, MINUTE, LOG_STATUSES)]


def events_per_hour(conn: Connection, delivery_id: int, since: datetime | None) -> list[dict[str, Any]]:
    """Open and click events of a delivery per UTC hour, from the hour of ``since`` (the send's
    first sending-log row), or of the first event when that is earlier or ``since`` is None, to
    the hour of the last event.

    One row per hour, zeros included: ``{"hour": "2026-11-27T10:00:00+00:00", "opens": 140,
    "clicks": 21}``; counts are events (every open and every click, a recipient's repeats
    included), not unique recipients. ``[]`` while there is no open or click.
    """
    rows = conn.execute(sql("delivery_events_per_hour", conn.dialect.name), {"delivery_id": delivery_id})
    counts: dict[datetime, dict[str, int]] = {}
    for hour, event_type, events in rows:
        counts.setdefault(_utc(hour), dict.fromkeys(CHART_EVENTS.values(), 0))[CHART_EVENTS[event_type]] = events
    if counts and since is not None:
        counts.setdefault(since.replace(minute=0, second=0, microsecond=0), dict.fromkeys(CHART_EVENTS.values(), 0))
    return [{"hour": moment.isoformat(), **values} for moment, values in _dense(counts, HOUR, CHART_EVENTS.values())]


def _utc(value: Any) -> datetime:
    moment = as_datetime(value)
    assert moment is not None  # a bucket of rows has a time
    return moment.astimezone(UTC)


def _dense(
    counts: dict[datetime, dict[str, int]], step: timedelta, names: Any
) -> list[tuple[datetime, dict[str, int]]]:
    """Every bucket from the first to the last, the missing ones as zeros (a chart's gaps are zeros)."""
    if not counts:
        return []
    first, last = min(counts), max(counts)
    buckets = []
    moment = first
    while moment <= last:
        buckets.append((moment, counts.get(moment) or dict.fromkeys(names, 0)))
        moment += step
    return buckets


def delivery_for_run(engine: Engine, run_id: str) -> int | None:
    with engine.begin() as conn:
        return conn.execute(sql("select_delivery_by_run"), {"run_id": run_id}).scalar()


def profile_page(engine: Engine, email: str) -> dict[str, Any]:
    profile, history = profile_history(engine, email)
    records = history.astype(object).where(history.notna(), None).to_dict("records")
    for record in records:
        for name in ("confirmed_at", "sent_at", "bounced_at", "first_open_at", "first_click_at", "complained_at"):
            moment = as_datetime(record[name])
            record[name] = moment.isoformat() if moment else None
    shown = {k: profile[k] for k in ("id", "email", "first_name", "last_name", "quarantine_reason")}
    # SQLite hands a boolean back as 0/1: the JSON says true/false on both databases.
    return {"profile": {**shown, "blocklisted": bool(profile["blocklisted"]), "state": profile_state(profile)},
            "deliveries": records}  # fmt: skip
