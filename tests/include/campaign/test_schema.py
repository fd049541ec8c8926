"""The schema: indexes added to databases made by an older version, and the KPI queries answered
from covering indexes alone (the property the Compute stats benchmark relies on)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import CheckConstraint, MetaData, event, func, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import CreateTable

from campaign import deliveries as delivery_store
from campaign.clock import utcnow
from campaign.db import SQL_DIR
from campaign.schema import (
    _normal_form,
    _stale_checks,
    broad_logs,
    create_schema,
    deliveries,
    delivery_audit,
    delivery_engagement,
    delivery_links,
    delivery_pacing,
    delivery_targets,
    metadata,
    operator_roles,
    operators,
    profiles,
    tracking_logs,
    tracking_watermarks,
)


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


def test_create_schema_makes_again_an_index_whose_columns_changed(campaign_db) -> None:
    # broad_logs_delivery_outcome gained profile_id; a database made before has the old one.
    engine = campaign_db.engine
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX broad_logs_delivery_outcome"))
        conn.execute(text("CREATE INDEX broad_logs_delivery_outcome ON broad_logs (delivery_id, status, failure_type)"))

    create_schema(engine)

    columns = {index["name"]: index["column_names"] for index in inspect(engine).get_indexes("broad_logs")}
    assert columns["broad_logs_delivery_outcome"] == ["delivery_id", "status", "profile_id", "failure_type"]


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

    # A read names the table or its alias; the index it uses names the table. Ranges must be
    # covered; only a lookup of one recipient by its key may read its row (the engagement of a
    # recipient whose message was not delivered, which the KPIs leave out).
    reads = [
        step for step in plan if f" {table} " in f" {step} " or re.search(rf"INDEX (sqlite_autoindex_)?{table}", step)
    ]
    assert reads, plan
    ranges = [step for step in reads if not step.endswith("(delivery_id=? AND profile_id=?)")]
    assert ranges, plan
    assert all("USING COVERING INDEX" in step for step in ranges), plan


@pytest.mark.parametrize("statement", ["compute_delivery_kpis", "count_delivery_tracking"])
def test_the_not_delivered_subtraction_starts_from_the_few_not_delivered_rows(sqlite_db, statement: str) -> None:
    # Started from the other side, it walked every event or engagement row of the delivery once
    # more (0.49 s on 1,000,000 sending logs and 300,000 events).
    query = (SQL_DIR / f"{statement}.sql").read_text(encoding="utf-8")
    with sqlite_db.engine.connect() as conn:
        plan = [row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {query}"), {"delivery_id": 1, "upto_id": 9})]

    part = [step for step in plan[plan.index("MATERIALIZE undelivered") + 1 :] if step.startswith("SEARCH")][:2]
    assert part[0].startswith("SEARCH b USING COVERING INDEX broad_logs_delivery_outcome"), plan
    assert "(delivery_id=? AND profile_id=?" in part[1], plan


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
    delivery_id = delivery_store.create_delivery(
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
    delivery_id = delivery_store.create_delivery(
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


# ---------------------------------------------------------------- CHECK constraints of an older database

# The constraints as the version before the send controls (02f8f3f) created them.
_OLD_CHECKS = {
    "deliveries_status_known": "status IN ('draft', 'ready', 'sending', 'sent', 'failed')",
    "broad_logs_status_known": "status IN ('sent', 'bounced', 'failed', 'ignored')",
    "delivery_audit_action_known": (
        "action IN ('role_refused', 'approval_asked', 'confirmed', 'cancelled', 'timed_out', 'answer_refused')"
    ),
}
# Added by the same commit: an older database has none of them.
_NEW_COLUMNS = {
    "deliveries": ("brake_threshold", "brake_window", "brake_after_log_id"),
    "delivery_kpis": ("cancelled",),
}


def _make_older_database(engine) -> None:
    """Replace the fixture's tables by those of the previous version: old checks, fewer columns."""
    old = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(old)
    for table in old.tables.values():
        for constraint in table.constraints:
            if isinstance(constraint, CheckConstraint) and constraint.name in _OLD_CHECKS:
                constraint.sqltext = text(_OLD_CHECKS[constraint.name])
    metadata.drop_all(engine)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX broad_logs_delivery_recent"))
        for table, columns in _NEW_COLUMNS.items():
            for column in columns:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        for name, expected in _OLD_CHECKS.items():  # the starting point really is the old one
            table = next(t for t in metadata.sorted_tables if name in {c.name for c in t.constraints})
            present = {c["name"]: c["sqltext"] for c in inspect(conn).get_check_constraints(table.name)}
            assert _normal_form(present[name]) == _normal_form(expected)


def _fill_older_database(engine) -> dict[str, int]:
    """Two deliveries with all that hangs on them, written with the old columns only."""
    now = utcnow()
    ids: dict[str, int] = {}
    with engine.begin() as conn:

        def add(table, **values) -> int:
            return conn.execute(table.insert().values(**values)).inserted_primary_key[0]

        ids["operator"] = add(operators, login="olga", created_at=now)
        conn.execute(
            operator_roles.insert().values(operator_id=ids["operator"], role="start_deliveries", granted_at=now)
        )
        ids["ann"] = add(profiles, email="ann@example.test", created_at=now)
        ids["ben"] = add(profiles, email="ben@example.test", created_at=now)
        ids["cy"] = add(profiles, email="cy@example.test", created_at=now)  # not sent to yet
        for key, status in (("kept", "sending"), ("deleted", "sent")):
            delivery_id = add(
                deliveries,
                label=key,
                sender="s@example.test",
                subject="s",
                text_template="t",
                html_template="<p>t</p>",
                status=status,
                target_count=2,
                created_at=now,
            )
            ids[key] = delivery_id
            for seq, profile in enumerate(("ann", "ben"), start=1):
                conn.execute(
                    delivery_targets.insert().values(
                        delivery_id=delivery_id, seq=seq, profile_id=ids[profile], email=f"{profile}@example.test"
                    )
                )
            link_id = add(delivery_links, delivery_id=delivery_id, url="https://example.test/")
            ids[f"log_{key}"] = add(
                broad_logs,
                delivery_id=delivery_id,
                profile_id=ids["ann"],
                seq=1,
                email="ann@example.test",
                status="sent",
                logged_at=now,
            )
            add(
                broad_logs,
                delivery_id=delivery_id,
                profile_id=ids["ben"],
                seq=2,
                email="ben@example.test",
                status="bounced",
                failure_type="hard",
                logged_at=now,
            )
            for event_type in ("open", "click", "unsubscribe"):
                ids["event"] = add(
                    tracking_logs,
                    delivery_id=delivery_id,
                    profile_id=ids["ann"],
                    event_type=event_type,
                    link_id=link_id if event_type == "click" else None,
                    event_at=now,
                )
            conn.execute(
                delivery_engagement.insert().values(
                    delivery_id=delivery_id,
                    profile_id=ids["ann"],
                    first_open_at=now,
                    first_click_at=now,
                    clicks=1,
                    updated_at=now,
                )
            )
            conn.execute(delivery_pacing.insert().values(delivery_id=delivery_id, next_at=1.5))
            ids["audit"] = add(
                delivery_audit, delivery_id=delivery_id, action="confirmed", actor="olga", at=now, detail="d"
            )
            conn.execute(
                text(
                    "INSERT INTO delivery_kpis (delivery_id, to_deliver, delivered, bounces_errors, hard_bounces,"
                    " soft_bounces, errors, ignored, processed, computed_at)"
                    " VALUES (:id, 2, 1, 1, 1, 0, 0, 0, 2, :now)"
                ),
                {"id": delivery_id, "now": now},
            )
        conn.execute(tracking_watermarks.insert().values(name="rates", last_event_id=ids["event"]))
    return ids


def _all_rows(engine) -> dict[str, list[dict]]:
    """Every row of every table, old columns only, in key order."""
    rows = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            present = {column["name"] for column in inspect(conn).get_columns(table.name)}
            old_columns = [
                c for c in table.columns if c.name in present and c.name not in _NEW_COLUMNS.get(table.name, ())
            ]
            result = conn.execute(select(*old_columns).order_by(*table.primary_key.columns))
            rows[table.name] = [dict(row._mapping) for row in result]
    return rows


def _catalog(engine) -> list[tuple]:
    """What a rebuild or a constraint replaced would change: tables' pages, constraints' oids."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            query = "SELECT type, name, rootpage, sql FROM sqlite_master ORDER BY name"
        else:
            query = (
                "SELECT c.relname, c.oid, c.relfilenode, k.conname, k.oid FROM pg_class c"
                " LEFT JOIN pg_constraint k ON k.conrelid = c.oid"
                " WHERE c.relnamespace = 'public'::regnamespace ORDER BY c.relname, k.conname"
            )
        return [tuple(row) for row in conn.exec_driver_sql(query)]


@contextmanager
def _statements(engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


_WRITES = re.compile(r"^\s*(CREATE|ALTER|DROP|INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


def _max_id(conn, table) -> int:
    return conn.execute(select(func.max(table.c.id))).scalar_one()


def test_create_schema_widens_the_checks_of_an_older_database(campaign_db) -> None:
    engine = campaign_db.engine
    _make_older_database(engine)
    ids = _fill_older_database(engine)
    with engine.begin() as conn:  # what the old database refuses
        with pytest.raises(IntegrityError), conn.begin_nested():
            conn.execute(deliveries.update().where(deliveries.c.id == ids["kept"]).values(status="paused"))
    before = _all_rows(engine)
    with engine.connect() as conn:
        max_ids = {
            table.name: _max_id(conn, table) for table in (deliveries, broad_logs, delivery_audit, tracking_logs)
        }

    create_schema(engine)

    assert _all_rows(engine) == before
    now = utcnow()
    with engine.begin() as conn:
        for status in ("paused", "stopping", "stopped"):
            conn.execute(deliveries.update().where(deliveries.c.id == ids["kept"]).values(status=status))
        conn.execute(deliveries.update().where(deliveries.c.id == ids["kept"]).values(brake_window=100))
        log_id = conn.execute(
            broad_logs.insert().values(
                delivery_id=ids["kept"], profile_id=ids["cy"], seq=3, email="x", status="cancelled", logged_at=now
            )
        ).inserted_primary_key[0]
        audit_id = conn.execute(
            delivery_audit.insert().values(delivery_id=ids["kept"], action="paused", at=now, detail="d")
        ).inserted_primary_key[0]
        delivery_id = conn.execute(
            deliveries.insert().values(
                label="new", sender="s@example.test", subject="s", text_template="t", html_template="t", created_at=now
            )
        ).inserted_primary_key[0]
    # New ids go on after the old ones.
    assert log_id > max_ids["broad_logs"]
    assert audit_id > max_ids["delivery_audit"]
    assert delivery_id > max_ids["deliveries"]

    # Unknown values are still refused, and so are references to nothing.
    refused = [
        deliveries.update().where(deliveries.c.id == ids["kept"]).values(status="bogus"),
        broad_logs.update().where(broad_logs.c.id == log_id).values(status="bogus"),
        delivery_audit.update().where(delivery_audit.c.id == audit_id).values(action="bogus"),
        deliveries.update().where(deliveries.c.id == ids["kept"]).values(channel="sms"),
        broad_logs.update().where(broad_logs.c.id == log_id).values(delivery_id=10_000),
        delivery_targets.update().where(delivery_targets.c.delivery_id == ids["kept"]).values(delivery_id=10_000),
        profiles.delete().where(profiles.c.id == ids["ben"]),
        tracking_logs.insert().values(
            delivery_id=ids["kept"], profile_id=ids["ann"], event_type="unsubscribe", event_at=now
        ),
    ]
    for statement in refused:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(statement)

    # Deleting a delivery still takes everything that hangs on it along.
    with engine.begin() as conn:
        conn.execute(deliveries.delete().where(deliveries.c.id == ids["deleted"]))
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            if "delivery_id" in table.c:
                left = conn.execute(select(func.count()).where(table.c.delivery_id == ids["deleted"])).scalar_one()
                assert left == 0, table.name
                kept = conn.execute(select(func.count()).where(table.c.delivery_id == ids["kept"])).scalar_one()
                assert kept > 0, table.name

    for table in metadata.sorted_tables:
        assert {index.name for index in table.indexes} <= _index_names(engine, table.name)
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            assert _stale_checks(conn, table) == [], table.name

    catalog = _catalog(engine)
    with _statements(engine) as seen:
        create_schema(engine)
    assert [statement for statement in seen if _WRITES.match(statement)] == []
    assert _catalog(engine) == catalog
    # The module's metadata still creates new databases with every check.
    assert "deliveries_status_known" in str(CreateTable(deliveries).compile(dialect=engine.dialect))


def test_create_schema_only_reads_a_database_that_is_up_to_date(campaign_db) -> None:
    engine = campaign_db.engine
    catalog = _catalog(engine)
    with _statements(engine) as seen:
        create_schema(engine)
    assert seen, "nothing recorded: the listener is not working"
    assert [statement for statement in seen if _WRITES.match(statement)] == []
    assert _catalog(engine) == catalog


def test_a_dangling_reference_stops_the_sqlite_rebuild_and_changes_nothing(sqlite_db) -> None:
    engine = sqlite_db.engine
    _make_older_database(engine)
    ids = _fill_older_database(engine)
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        driver.execute("PRAGMA foreign_keys=OFF")
        driver.execute("UPDATE delivery_targets SET delivery_id = 10000 WHERE delivery_id = ?", (ids["deleted"],))
        driver.execute("PRAGMA foreign_keys=ON")
    before = _all_rows(engine)

    with pytest.raises(RuntimeError, match="refer to rows that do not exist"):
        create_schema(engine)

    assert _all_rows(engine) == before
    with engine.connect() as conn:  # the tables that were rebuilt are the old ones again
        stale = {c.name for table in metadata.sorted_tables for c in _stale_checks(conn, table)}
        assert stale == set(_OLD_CHECKS)
    with engine.connect() as conn:  # the pooled connection got its foreign keys back
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1


def test_the_sqlite_rebuild_keeps_what_the_metadata_does_not_know(sqlite_db) -> None:
    engine = sqlite_db.engine
    _make_older_database(engine)
    _fill_older_database(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX deliveries_by_label ON deliveries (label)"))
        conn.execute(text("CREATE VIEW sending AS SELECT id, label FROM deliveries WHERE status = 'sending'"))
        conn.execute(
            text(
                "CREATE TRIGGER deliveries_no_empty_label BEFORE UPDATE OF label ON deliveries"
                " WHEN NEW.label = '' BEGIN SELECT RAISE(ABORT, 'empty label'); END"
            )
        )

    create_schema(engine)

    assert "deliveries_by_label" in _index_names(engine, "deliveries")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT label FROM sending")).scalars().all() == ["kept"]
        with pytest.raises(IntegrityError, match="empty label"):
            conn.execute(deliveries.update().values(label=""))


def test_the_sqlite_rebuild_refuses_to_drop_a_column_the_metadata_does_not_know(sqlite_db) -> None:
    engine = sqlite_db.engine
    _make_older_database(engine)
    _fill_older_database(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE deliveries ADD COLUMN legacy_note TEXT"))
        conn.execute(text("UPDATE deliveries SET legacy_note = 'keep me'"))

    with pytest.raises(RuntimeError, match="legacy_note"):
        create_schema(engine)

    with engine.connect() as conn:
        assert conn.execute(text("SELECT legacy_note FROM deliveries")).scalars().all() == ["keep me", "keep me"]


@pytest.mark.parametrize(
    ("database", "ours"),
    [
        (  # PostgreSQL 16 and later, pretty-printed
            "status::text = ANY (ARRAY['a'::character varying, 'b'::character varying]::text[])",
            "status IN ('a', 'b')",
        ),
        (  # older servers, fully parenthesised
            "((status)::text = ANY ((ARRAY['b'::character varying, 'a'::character varying])::text[]))",
            "status IN ('a', 'b')",
        ),
        (
            "failure_type IS NULL OR (failure_type::text = ANY (ARRAY['hard'::character varying]::text[]))",
            "failure_type IS NULL OR failure_type IN ('hard')",
        ),
        ("((channel)::text = 'email'::text)", "channel = 'email'"),
        ("((status)::text <> ALL ((ARRAY['x'::character varying])::text[]))", "status NOT IN ('x')"),
        ("((clicks > 0) = (first_click_at IS NOT NULL))", "(clicks > 0) = (first_click_at IS NOT NULL)"),
    ],
)
def test_a_check_reads_the_same_in_the_words_of_either_database(database: str, ours: str) -> None:
    assert _normal_form(database) == _normal_form(ours)


@pytest.mark.parametrize(
    ("database", "ours"),
    [
        ("status::text = ANY (ARRAY['a'::character varying]::text[])", "status IN ('a', 'b')"),
        ("status IN ('a', 'b')", "status IN ('a', 'c')"),
        ("status IN ('a', 'b')", "label IN ('a', 'b')"),
        ("channel = 'email'", "channel = 'Email'"),
        ("clicks > 0", "clicks >= 0"),
    ],
)
def test_a_changed_check_reads_differently(database: str, ours: str) -> None:
    assert _normal_form(database) != _normal_form(ours)
