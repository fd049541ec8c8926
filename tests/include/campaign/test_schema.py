"""The schema: indexes added to databases made by an older version, and the KPI queries answered
from covering indexes alone (the property the Compute stats benchmark relies on)."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from campaign import deliveries
from campaign.clock import utcnow
from campaign.db import SQL_DIR
from campaign.schema import create_schema, delivery_engagement, metadata, profiles, tracking_logs


def _index_names(engine, table: str) -> set[str]:
    return {index["name"] for index in inspect(engine).get_indexes(table)}


def test_create_schema_adds_indexes_missing_from_an_existing_database(campaign_db) -> None:
    engine = campaign_db.engine
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX broad_logs_delivery_outcome"))
        conn.execute(text("DROP INDEX tracking_logs_delivery_recipient"))
    assert "broad_logs_delivery_outcome" not in _index_names(engine, "broad_logs")

    create_schema(engine)
    create_schema(engine)  # and again: nothing left to add

    assert "broad_logs_delivery_outcome" in _index_names(engine, "broad_logs")
    assert "tracking_logs_delivery_recipient" in _index_names(engine, "tracking_logs")
    for table in metadata.sorted_tables:
        assert {index.name for index in table.indexes} <= _index_names(engine, table.name)


@pytest.mark.parametrize(
    ("statement", "table"),
    [
        ("compute_delivery_kpis", "broad_logs"),
        ("compute_delivery_kpis", "delivery_engagement"),
        ("count_delivery_tracking", "tracking_logs"),
    ],
)
def test_kpi_counts_read_only_covering_indexes_on_sqlite(sqlite_db, statement: str, table: str) -> None:
    query = (SQL_DIR / f"{statement}.sql").read_text(encoding="utf-8")
    with sqlite_db.engine.connect() as conn:
        plan = [row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {query}"), {"delivery_id": 1, "upto_id": 9})]

    reads = [step for step in plan if f" {table} " in f" {step} "]
    assert reads, plan
    assert all("USING COVERING INDEX" in step for step in reads), plan


@pytest.mark.parametrize(
    ("first_open", "first_click", "clicks"),
    [
        (False, False, 0),  # a row that is not an opener
        (True, False, 2),  # clicks without a first click
        (True, True, 0),  # a first click without clicks
    ],
)
def test_engagement_rows_that_would_miscount_are_refused(campaign_db, first_open, first_click, clicks) -> None:
    engine = campaign_db.engine
    now = utcnow()
    with engine.begin() as conn:
        inserted = conn.execute(profiles.insert().values(email="a@example.test", created_at=now))
        profile_id = inserted.inserted_primary_key[0]
    delivery_id = deliveries.create_delivery(
        engine, {"label": "x", "sender": "s@example.test", "subject": "s", "text": "t", "html": "<p>t</p>"}
    )
    row = {
        "delivery_id": delivery_id,
        "profile_id": profile_id,
        "first_open_at": now if first_open else None,
        "first_click_at": now if first_click else None,
        "clicks": clicks,
        "updated_at": now,
    }

    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(delivery_engagement.insert().values(row))
    clicker = {**row, "first_open_at": now, "first_click_at": now, "clicks": 1}
    with engine.begin() as conn:  # while a consistent row goes in
        conn.execute(delivery_engagement.insert().values(clicker))


def _add_unsubscribes(engine, events: list[tuple[int, int, str]]) -> None:
    with engine.begin() as conn:
        for delivery_id, profile_id, event_type in events:
            conn.execute(
                tracking_logs.insert().values(
                    delivery_id=delivery_id, profile_id=profile_id, event_type=event_type, event_at=utcnow()
                )
            )


def _two_recipients(engine) -> tuple[int, int, int]:
    now = utcnow()
    with engine.begin() as conn:
        ann, ben = (
            conn.execute(profiles.insert().values(email=email, created_at=now)).inserted_primary_key[0]
            for email in ("ann@example.test", "ben@example.test")
        )
    delivery_id = deliveries.create_delivery(
        engine, {"label": "x", "sender": "s@example.test", "subject": "s", "text": "t", "html": "<p>t</p>"}
    )
    return delivery_id, ann, ben


def test_the_database_refuses_a_second_unsubscribe_event_of_a_recipient(campaign_db) -> None:
    engine = campaign_db.engine
    delivery_id, ann, ben = _two_recipients(engine)
    _add_unsubscribes(engine, [(delivery_id, ann, "unsubscribe"), (delivery_id, ben, "unsubscribe")])
    _add_unsubscribes(engine, [(delivery_id, ann, "open"), (delivery_id, ann, "open")])  # opens: any number

    with pytest.raises(IntegrityError):
        _add_unsubscribes(engine, [(delivery_id, ann, "unsubscribe")])


def test_create_schema_keeps_the_first_unsubscribe_of_an_older_database(campaign_db) -> None:
    # The old endpoint recorded one event per POST: the rule can only be added once the repeats go.
    engine = campaign_db.engine
    delivery_id, ann, ben = _two_recipients(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX tracking_logs_one_unsubscribe"))
    events = [
        (delivery_id, ann, "unsubscribe"),
        (delivery_id, ann, "open"),
        (delivery_id, ann, "unsubscribe"),
        (delivery_id, ben, "unsubscribe"),
        (delivery_id, ann, "unsubscribe"),
        (delivery_id, ben, "open"),
    ]
    _add_unsubscribes(engine, events)
    with engine.begin() as conn:
        ids = [row.id for row in conn.execute(select(tracking_logs.c.id).order_by(tracking_logs.c.id))]

    create_schema(engine)
    create_schema(engine)

    assert "tracking_logs_one_unsubscribe" in _index_names(engine, "tracking_logs")
    with engine.begin() as conn:
        kept = [row.id for row in conn.execute(select(tracking_logs.c.id).order_by(tracking_logs.c.id))]
    assert kept == [ids[0], ids[1], ids[3], ids[5]]
