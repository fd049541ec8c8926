"""The Deployment page's charts on a large delivery: their two counts in SQL against a bare
count(*) scan of the same rows, and the drawing of both charts."""

from __future__ import annotations

import time

from sqlalchemy import Engine, text

from benchmarks import datagen
from benchmarks.stats_bench import Ratio, best_of
from campaign import charts, deployment

# The send spread over 125 minutes (8,000 messages a minute), the events over the 48 hours after.
SEND_MINUTES = 125
EVENT_HOURS = 48
_SPREAD_LOGS = {
    "sqlite": "UPDATE broad_logs SET logged_at = strftime('%Y-%m-%d %H:%M:%f', '2026-01-01 00:00:00', "
    "'+' || (seq * :seconds) || ' seconds') || '000+00:00' WHERE delivery_id = :d",
    "postgresql": "UPDATE broad_logs SET logged_at = TIMESTAMPTZ '2026-01-01 00:00:00+00' "
    "+ seq * :seconds * INTERVAL '1 second' WHERE delivery_id = :d",
}
_SPREAD_EVENTS = {
    "sqlite": "UPDATE tracking_logs SET event_at = strftime('%Y-%m-%d %H:%M:%f', '2026-01-01 02:05:00', "
    "'+' || (id * :seconds) || ' seconds') || '000+00:00' WHERE delivery_id = :d",
    "postgresql": "UPDATE tracking_logs SET event_at = TIMESTAMPTZ '2026-01-01 02:05:00+00' "
    "+ id * :seconds * INTERVAL '1 second' WHERE delivery_id = :d",
}


def chart_cost(engine: Engine, backend: str, logs: int, events: int) -> Ratio:
    """Both charts' series of a delivery of ``logs`` sending-log rows and ``events`` tracking
    events, as the page asks for them, against a bare count(*) of the same rows."""
    datagen.profiles(engine, logs)
    delivery_id, link_id = datagen.sent_delivery(engine, logs)
    datagen.events(engine, delivery_id, link_id, events, logs, minutes_ago=0)
    dialect = engine.dialect.name
    with engine.begin() as conn:
        conn.execute(text(_SPREAD_LOGS[dialect]), {"d": delivery_id, "seconds": SEND_MINUTES * 60 / logs})
        conn.execute(text(_SPREAD_EVENTS[dialect]), {"d": delivery_id, "seconds": EVENT_HOURS * 3600 / events})
    datagen.settle(engine)

    def bare_scan() -> None:
        with engine.connect() as conn:
            params = {"d": delivery_id}
            conn.execute(text("SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :d"), params).scalar_one()
            conn.execute(text("SELECT COUNT(*) FROM tracking_logs WHERE delivery_id = :d"), params).scalar_one()

    series: dict = {}

    def count() -> None:
        series.update(deployment.count_chart_series(engine, delivery_id))

    bare, counted = best_of(5, bare_scan, count)
    started = time.perf_counter()
    charts.messages_chart(series["messages_per_minute"])
    charts.events_chart(series["events_per_hour"])
    drawn = time.perf_counter() - started
    return Ratio(
        f"Deployment charts' series, {logs:,} sending logs and {events:,} events / bare count(*) scan",
        backend,
        counted,
        bare,
        f"series {counted:.3f} s",
        f"count(*) {bare:.3f} s",
        "— (measured)",
        detail=(
            f"{len(series['messages_per_minute'])} minutes and {len(series['events_per_hour'])} hours; "
            f"drawing both charts {drawn:.3f} s"
        ),
    )
