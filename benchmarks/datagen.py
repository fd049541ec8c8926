"""Deterministic benchmark data, generated in the database itself (one set-based statement each)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from campaign import deliveries
from campaign.schema import create_schema

# Fixed so that every run measures the same rows.
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

_PROFILES = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
INSERT INTO profiles (email, first_name, last_name, blocklisted, created_at)
SELECT 'p' || i || '@bench.test', 'First' || (i % 97), 'Last' || (i % 89), FALSE, :at FROM n
"""
_TARGETS = """
INSERT INTO delivery_targets (delivery_id, seq, profile_id, email)
SELECT :delivery_id, id, id, email FROM profiles WHERE id <= :count
"""
_LOGS = """
INSERT INTO broad_logs (delivery_id, profile_id, seq, email, status, failure_type, smtp_code, attempts, logged_at)
SELECT delivery_id, profile_id, seq, email,
       CASE WHEN seq % 50 = 0 THEN 'bounced' WHEN seq % 333 = 0 THEN 'failed' ELSE 'sent' END,
       CASE WHEN seq % 50 = 0 THEN 'hard' END,
       CASE WHEN seq % 50 = 0 THEN 550 ELSE 250 END, 1, :at
FROM delivery_targets WHERE delivery_id = :delivery_id
"""
# Events on every k-th recipient: opens, and clicks on a third of them.
_EVENTS = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
INSERT INTO tracking_logs (delivery_id, profile_id, event_type, link_id, user_agent, event_at)
SELECT :delivery_id, :first_profile + ((i * 7) % :recipients),
       CASE WHEN i % 3 = 0 THEN 'click' ELSE 'open' END,
       CASE WHEN i % 3 = 0 THEN :link_id END, 'bench', :at
FROM n
"""


# The benchmark message: personalised subject, text and HTML, one tracked link in the HTML.
MESSAGE = {
    "sender": "Bench <bench@bench.test>",
    "subject": "Hello {{ profile.first_name }}",
    "text": "Hello {{ profile.first_name }} {{ profile.last_name }}, offer {{ profile.id }}.",
    "html": '<p>Hello {{ profile.first_name }}</p><a href="https://bench.test/offer">offer</a>',
}


def new_delivery(engine: Engine, label: str) -> int:
    """A draft delivery of the benchmark message, tracking on (the default)."""
    return deliveries.create_delivery(engine, {"label": label, **MESSAGE})


def profiles(engine: Engine, count: int) -> None:
    create_schema(engine)
    with engine.begin() as conn:
        conn.execute(text(_PROFILES), {"count": count, "at": EPOCH})


def sent_delivery(engine: Engine, recipients: int) -> tuple[int, int]:
    """A delivery sent to the first ``recipients`` profiles, with its sending logs; returns (id, link id)."""
    delivery_id = new_delivery(engine, f"sent to {recipients}")
    with engine.begin() as conn:
        conn.execute(text(_TARGETS), {"delivery_id": delivery_id, "count": recipients})
        conn.execute(text(_LOGS), {"delivery_id": delivery_id, "at": EPOCH})
        conn.execute(
            text("UPDATE deliveries SET status = 'sent', target_count = :n, run_id = 'bench' WHERE id = :d"),
            {"n": recipients, "d": delivery_id},
        )
        conn.execute(
            text("INSERT INTO delivery_links (delivery_id, url) VALUES (:d, 'https://bench.test/offer')"),
            {"d": delivery_id},
        )
        link_id = conn.execute(text("SELECT id FROM delivery_links WHERE delivery_id = :d"), {"d": delivery_id})
        return delivery_id, link_id.scalar_one()


def settle(engine: Engine) -> None:
    """The database at rest after a bulk load, as it is in service: on PostgreSQL autovacuum would
    have vacuumed and analysed the new rows (index-only scans need the visibility map); on SQLite
    the write-ahead log is checkpointed. SQLite gets no ANALYZE: the product never runs one."""
    statement = "VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "PRAGMA wal_checkpoint(TRUNCATE)"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(statement)


def events(engine: Engine, delivery_id: int, link_id: int, count: int, recipients: int, minutes_ago: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(_EVENTS),
            {
                "delivery_id": delivery_id,
                "first_profile": 1,
                "recipients": recipients,
                "count": count,
                "link_id": link_id,
                "at": datetime.now(UTC) - timedelta(minutes=minutes_ago),
            },
        )
