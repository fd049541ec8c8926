"""The series of the Deployment page's charts, counted in SQL on both databases."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

from sqlalchemy import Engine, select, update

from campaign import deployment, stats
from campaign.db import sql
from campaign.schema import broad_logs, delivery_links, delivery_targets

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
ZERO = {"sent": 0, "bounced": 0, "failed": 0, "ignored": 0, "cancelled": 0}


def _logs(engine: Engine, delivery_id: int, rows: list[tuple[str, datetime]]) -> list[int]:
    """One sending-log row per target in seq order, through the product's own insert; returns
    the target profile ids."""
    with engine.begin() as conn:
        targets = conn.execute(
            select(delivery_targets)
            .where(delivery_targets.c.delivery_id == delivery_id)
            .order_by(delivery_targets.c.seq)
        ).all()
        for target, (status, logged_at) in zip(targets, rows, strict=False):
            conn.execute(
                sql("insert_broad_log"),
                {
                    "delivery_id": delivery_id, "profile_id": target.profile_id, "seq": target.seq,
                    "email": target.email, "status": status, "failure_type": None, "reason": None,
                    "smtp_code": None, "smtp_reply": None, "message_id": None, "attempts": 1,
                    "worker": "test:1", "run_id": "run-test", "logged_at": logged_at,
                },
            )  # fmt: skip
    return [target.profile_id for target in targets]


def _events(engine: Engine, delivery_id: int, events: list[tuple[int, str, datetime]]) -> None:
    with engine.begin() as conn:
        for profile_id, event_type, event_at in events:
            conn.execute(
                sql("insert_tracking_event"),
                {
                    "delivery_id": delivery_id, "profile_id": profile_id, "event_type": event_type,
                    "link_id": None, "user_agent": "test", "event_at": event_at,
                },
            )  # fmt: skip


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_messages_per_minute_counts_each_utc_minute_by_outcome(campaign_db, ready_delivery: Callable) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=9)
    other = ready_delivery(engine, recipients=0)
    plus_two = timezone(timedelta(hours=2))
    _logs(
        engine,
        delivery_id,
        [
            ("sent", _at(5 / 60)), ("bounced", _at(0.5)), ("sent", _at(59.4 / 60)),  # 10:00
            # nothing at 10:01
            ("failed", _at(2)), ("ignored", _at(2 + 10 / 60)), ("cancelled", _at(2 + 20 / 60)), ("sent", _at(2.98)),
            # 12:03:10 at +02:00 is 10:03:10 UTC
            ("sent", datetime(2026, 11, 27, 12, 3, 10, tzinfo=plus_two)),
        ],
    )  # fmt: skip
    _logs(engine, other, [("sent", _at(1))])  # another delivery's rows stay out

    series = deployment.delivery_charts(engine, delivery_id)["messages_per_minute"]

    assert series == [
        {"minute": "2026-11-27T10:00:00+00:00", **ZERO, "sent": 2, "bounced": 1},
        {"minute": "2026-11-27T10:01:00+00:00", **ZERO},
        {"minute": "2026-11-27T10:02:00+00:00", **ZERO, "sent": 1, "failed": 1, "ignored": 1, "cancelled": 1},
        {"minute": "2026-11-27T10:03:00+00:00", **ZERO, "sent": 1},
    ]


def test_events_per_hour_counts_events_from_the_sends_hour(campaign_db, ready_delivery: Callable) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=3)
    first, second, third = _logs(engine, delivery_id, [("sent", _at(40)), ("sent", _at(41)), ("sent", _at(42))])
    _events(
        engine,
        delivery_id,
        [
            (first, "open", _at(45)), (second, "open", _at(50)), (second, "click", _at(55)),  # hour 10
            # nothing in hour 11
            (first, "open", _at(135)), (first, "open", _at(136)), (first, "open", _at(137)),  # one recipient, 3 events
            (third, "click", _at(150)), (third, "unsubscribe", _at(151)),  # an unsubscribe is neither
        ],
    )  # fmt: skip

    series = deployment.delivery_charts(engine, delivery_id)["events_per_hour"]

    assert series == [
        {"hour": "2026-11-27T10:00:00+00:00", "opens": 2, "clicks": 1},
        {"hour": "2026-11-27T11:00:00+00:00", "opens": 0, "clicks": 0},
        {"hour": "2026-11-27T12:00:00+00:00", "opens": 3, "clicks": 1},
    ]


def test_events_per_hour_starts_at_the_send_even_when_the_first_open_comes_later(
    campaign_db, ready_delivery: Callable
) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=1)
    [profile] = _logs(engine, delivery_id, [("sent", _at(30))])
    _events(engine, delivery_id, [(profile, "click", _at(185))])

    series = deployment.delivery_charts(engine, delivery_id)["events_per_hour"]

    assert [(row["hour"][11:16], row["opens"], row["clicks"]) for row in series] == [
        ("10:00", 0, 0), ("11:00", 0, 0), ("12:00", 0, 0), ("13:00", 0, 1),
    ]  # fmt: skip


def test_a_delivery_without_logs_or_events_has_empty_series(campaign_db, ready_delivery: Callable) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=2)
    _logs(engine, delivery_id, [("sent", _at(0))])
    empty = ready_delivery(engine, recipients=0)

    assert deployment.delivery_charts(engine, empty) == {"messages_per_minute": [], "events_per_hour": []}
    assert deployment.delivery_charts(engine, delivery_id)["events_per_hour"] == []


def test_the_delivery_detail_carries_the_series(campaign_db, ready_delivery: Callable) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=2)
    [profile, _] = _logs(engine, delivery_id, [("sent", _at(0)), ("bounced", _at(1.5))])
    _events(engine, delivery_id, [(profile, "open", _at(3))])

    detail = deployment.delivery_detail(engine, delivery_id)

    assert detail["charts"] == {
        "messages_per_minute": [
            {"minute": "2026-11-27T10:00:00+00:00", **ZERO, "sent": 1},
            {"minute": "2026-11-27T10:01:00+00:00", **ZERO, "bounced": 1},
        ],
        "events_per_hour": [{"hour": "2026-11-27T10:00:00+00:00", "opens": 1, "clicks": 0}],
    }


def test_series_are_kept_a_few_seconds_per_delivery(campaign_db, ready_delivery: Callable, monkeypatch) -> None:
    engine = campaign_db.engine
    clock = [1000.0]
    monkeypatch.setattr(deployment, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    delivery_id = ready_delivery(engine, recipients=2)
    _logs(engine, delivery_id, [("sent", _at(0))])
    first = deployment.delivery_charts(engine, delivery_id)
    _logs(engine, delivery_id, [("sent", _at(0)), ("bounced", _at(0.5))])  # the first is there already

    clock[0] += deployment.CHART_CACHE_MIN_SECONDS - 0.1
    assert deployment.delivery_charts(engine, delivery_id) == first
    clock[0] += 0.2
    assert deployment.delivery_charts(engine, delivery_id)["messages_per_minute"] == [
        {"minute": "2026-11-27T10:00:00+00:00", **ZERO, "sent": 1, "bounced": 1}
    ]


def test_each_link_shows_its_clicks_all_and_without_machines(campaign_db, ready_delivery: Callable) -> None:
    """Delivered recipients only, as in the KPI block of the same page: a user's find was a
    links table counting the clicks of a message a DSN bounced later. A recipient whose
    sending-log row is not written yet counts, as in the KPIs."""
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=6)
    ann, ben, cat, dan, eve, fay = _logs(engine, delivery_id, [("sent", _at(0))] * 4 + [("failed", _at(0))])
    with engine.begin() as conn:
        for url in ("https://shop.test/offer", "https://shop.test/terms"):
            conn.execute(sql("insert_delivery_link"), {"delivery_id": delivery_id, "url": url, "label": None})
        offer = conn.execute(
            select(delivery_links.c.id).where(delivery_links.c.url == "https://shop.test/offer")
        ).scalar_one()
        clicks = [
            (ann, offer, True),  # a link scanner, then the person
            (ann, offer, False),
            (ben, offer, True),  # a scanner only
            (cat, offer, None),  # recorded before the machine rules: a person's
            (cat, offer, False),
            (dan, offer, True),  # a scanner of a message a DSN bounces below: not delivered
            (dan, offer, False),
            (eve, offer, False),  # a message that failed at the send: not delivered
            (fay, offer, False),  # no sending-log row yet: counts, as in the KPIs
        ]
        for profile_id, link_id, machine_made in clicks:
            conn.execute(
                sql("insert_judged_event"),
                {
                    "delivery_id": delivery_id, "profile_id": profile_id, "event_type": "click", "link_id": link_id,
                    "user_agent": "test", "event_at": _at(5), "machine": machine_made,
                    "machine_rule": "scanner_user_agent" if machine_made else None,
                },
            )  # fmt: skip
        conn.execute(
            update(broad_logs)
            .where(broad_logs.c.delivery_id == delivery_id, broad_logs.c.profile_id == dan)
            .values(status="bounced", failure_type="hard")
        )

    links = deployment.delivery_detail(engine, delivery_id)["links"]

    assert [(link["url"], link["clicks"], link["clickers"], link["human_clicks"], link["human_clickers"])
            for link in links] == [
        ("https://shop.test/offer", 6, 4, 4, 3),
        ("https://shop.test/terms", 0, 0, 0, 0),
    ]  # fmt: skip
    # The KPI block of the same page agrees: the same recipients, the same clicks.
    kpis = stats.aggregate_kpis(engine, delivery_id, lag_seconds=0).kpis
    assert (kpis["clicks"], kpis["unique_clicks"], kpis["human_clicks"], kpis["human_unique_clicks"]) == (6, 4, 4, 3)
