"""The schema: indexes added to databases made by an older version, and the KPI queries answered
from covering indexes alone (the property the Compute stats benchmark relies on)."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from campaign.db import SQL_DIR
from campaign.schema import create_schema, metadata


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
