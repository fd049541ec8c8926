"""KPIs from the logs: the fold of tracking events, Compute stats and their shared invariant
(on SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update
from testsupport import start_confirmed_send

from campaign import deliveries as delivery_steps
from campaign import machine, stats
from campaign.clock import utcnow
from campaign.db import sql
from campaign.schema import (
    deliveries,
    delivery_engagement,
    delivery_kpis,
    delivery_targets,
    profiles,
    tracking_logs,
    tracking_watermarks,
)
from campaign.stats import (
    KPI_COLUMNS,
    Recomputed,
    before_after_table,
    compute_kpis,
    deliveries_to_recompute,
    engagement_warnings,
    fold_new_events,
    recompute_delivery,
    recompute_summary,
)

SPEC: dict[str, Any] = {
    "label": "Spring sale",
    "sender": "Shop News <news@shop.test>",
    "subject": "Hello",
    "text": "Hello {{ profile.first_name or 'there' }}\n",
    "html": '<p>Hello</p><a href="https://shop.test/sale">Sale</a>',
}
OUTCOMES = {
    "sent": ("sent", None),
    "hard": ("bounced", "hard"),
    "soft": ("bounced", "soft"),
    "failed": ("failed", None),
    "ignored": ("ignored", None),
}

# ---------------------------------------------------------------- helpers


def _add_profiles(engine: Engine, count: int) -> list[int]:
    with engine.begin() as conn:
        first = conn.execute(select(func.count()).select_from(profiles)).scalar_one()
        return [
            conn.execute(
                profiles.insert().values(
                    email=f"p{first + i}@example.test", first_name=f"P{first + i}", created_at=utcnow()
                )
            ).inserted_primary_key[0]
            for i in range(count)
        ]


def _new_delivery(engine: Engine, status: str = "ready", confirmed_at: datetime | None = None) -> int:
    """A prepared delivery (every profile is a target) moved to ``status``."""
    delivery_id = delivery_steps.create_delivery(engine, SPEC)
    delivery_steps.prepare_delivery(engine, delivery_id, "alice")
    delivery_steps.approve_delivery(engine, delivery_id, "alice")
    if status != "ready" or confirmed_at is not None:
        with engine.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id)
                .values(status=status, confirmed_by="alice", confirmed_at=confirmed_at, run_id="run-test")
            )
    return delivery_id


def _log_outcomes(engine: Engine, delivery_id: int, outcomes: list[str]) -> list[int]:
    """One sending-log row per target (in seq order) through insert_broad_log; returns the target profile ids."""
    with engine.begin() as conn:
        targets = conn.execute(
            select(delivery_targets)
            .where(delivery_targets.c.delivery_id == delivery_id)
            .order_by(delivery_targets.c.seq)
        ).all()
        for target, outcome in zip(targets, outcomes, strict=False):
            status, failure_type = OUTCOMES[outcome]
            conn.execute(
                sql("insert_broad_log"),
                {
                    "delivery_id": delivery_id,
                    "profile_id": target.profile_id,
                    "seq": target.seq,
                    "email": target.email,
                    "status": status,
                    "failure_type": failure_type,
                    "reason": None,
                    "smtp_code": 250 if status == "sent" else 550,
                    "smtp_reply": None,
                    "message_id": None,
                    "attempts": 1,
                    "worker": "test:1",
                    "run_id": "run-test",
                    "logged_at": utcnow(),
                },
            )
    return [target.profile_id for target in targets]


def _sent_delivery(engine: Engine, outcomes: list[str], aggregate: bool = True) -> tuple[int, list[int]]:
    """A sent delivery with one log row per outcome and (when ``aggregate``) its KPI row."""
    delivery_id = _new_delivery(engine, status="sent", confirmed_at=utcnow())
    ids = _log_outcomes(engine, delivery_id, outcomes)
    if aggregate:
        compute_kpis(engine, delivery_id)
    return delivery_id, ids


def _events(engine: Engine, delivery_id: int, events: list[tuple[int, str]], at: datetime | None = None) -> list[int]:
    """Tracking events through insert_tracking_event, an hour old unless ``at`` is given; returns all event ids."""
    event_at = at or utcnow() - timedelta(hours=1)
    with engine.begin() as conn:
        for profile_id, event_type in events:
            conn.execute(
                sql("insert_tracking_event"),
                {
                    "delivery_id": delivery_id,
                    "profile_id": profile_id,
                    "event_type": event_type,
                    "link_id": None,
                    "user_agent": "test-agent",
                    "event_at": event_at,
                },
            )
        return list(conn.execute(select(tracking_logs.c.id).order_by(tracking_logs.c.id)).scalars())


def _kpi_row(engine: Engine, delivery_id: int) -> dict[str, Any] | None:
    with engine.begin() as conn:
        row = conn.execute(select(delivery_kpis).where(delivery_kpis.c.delivery_id == delivery_id)).mappings().first()
    return dict(row) if row else None


def _kpis_only(row: dict[str, Any] | None) -> dict[str, Any]:
    assert row is not None
    return {name: row[name] for name in KPI_COLUMNS}


def _engagement(engine: Engine, delivery_id: int) -> dict[int, tuple[bool, bool, int]]:
    """profile -> (opened, clicked, clicks) of the delivery's folded engagement."""
    with engine.begin() as conn:
        rows = conn.execute(
            select(delivery_engagement).where(delivery_engagement.c.delivery_id == delivery_id)
        ).mappings()
        return {
            row["profile_id"]: (row["first_open_at"] is not None, row["first_click_at"] is not None, row["clicks"])
            for row in rows
        }


def _engagement_counts(engine: Engine, delivery_id: int) -> tuple[int, int, int]:
    rows = _engagement(engine, delivery_id).values()
    return sum(o for o, _, _ in rows), sum(c for _, c, _ in rows), sum(n for _, _, n in rows)


def _watermark(engine: Engine) -> int | None:
    with engine.begin() as conn:
        return conn.execute(
            select(tracking_watermarks.c.last_event_id).where(tracking_watermarks.c.name == "engagement")
        ).scalar()


def _counts(row: dict[str, Any] | None) -> tuple[int, int, int]:
    assert row is not None
    return row["unique_opens"], row["unique_clicks"], row["clicks"]


@dataclass
class Sent:
    engine: Engine
    delivery_id: int
    ids: list[int]  # target profiles: ids[0..3] delivered, ids[4] hard-bounced


@pytest.fixture
def sent(campaign_db) -> Sent:
    """A sent delivery of five targets (four delivered, one hard bounce) with its KPI row, no event yet."""
    engine = campaign_db.engine
    _add_profiles(engine, 5)
    delivery_id, ids = _sent_delivery(engine, ["sent", "sent", "sent", "sent", "hard"])
    return Sent(engine, delivery_id, ids)


# ---------------------------------------------------------------- fold_new_events


def test_fold_adds_new_events_to_engagement_and_kpis(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    aggregated = _kpi_row(engine, delivery_id)
    assert _counts(aggregated) == (0, 0, 0)
    assert (aggregated["open_rate"], aggregated["click_through_rate"]) == (0.0, 0.0)
    event_ids = _events(
        engine,
        delivery_id,
        [(p[0], "open"), (p[0], "open"), (p[1], "click"), (p[1], "click"), (p[2], "open"), (p[2], "click")],
    )

    result = fold_new_events(engine, lag_seconds=0)

    assert (result.events, result.recipients, result.deliveries, result.upto_id) == (6, 3, 1, event_ids[-1])
    assert _watermark(engine) == event_ids[-1]
    assert _engagement(engine, delivery_id) == {
        p[0]: (True, False, 0),
        p[1]: (True, True, 2),  # a click proves an open
        p[2]: (True, True, 1),
    }
    folded = _kpi_row(engine, delivery_id)
    assert _counts(folded) == (3, 2, 3)
    assert folded["open_rate"] == pytest.approx(3 / 4)  # unique opens / delivered
    assert folded["click_through_rate"] == pytest.approx(2 / 4)  # unique clicks / delivered
    assert folded["rates_updated_at"] > aggregated["rates_updated_at"]
    unchanged = ("to_deliver", "delivered", "bounces_errors", "hard_bounces", "processed", "delivered_rate")
    assert {k: folded[k] for k in unchanged} == {k: aggregated[k] for k in unchanged}
    assert (folded["delivered"], folded["hard_bounces"]) == (4, 1)
    assert folded["computed_at"] == aggregated["computed_at"]


def test_fold_counts_a_click_without_an_open_as_an_open(sent: Sent) -> None:
    _events(sent.engine, sent.delivery_id, [(sent.ids[0], "click")])

    fold_new_events(sent.engine, lag_seconds=0)

    row = _kpi_row(sent.engine, sent.delivery_id)
    assert _counts(row) == (1, 1, 1)
    assert row["open_rate"] == pytest.approx(1 / 4)
    assert row["click_through_rate"] == pytest.approx(1 / 4)


def test_fold_counts_repeated_opens_of_one_recipient_once(sent: Sent) -> None:
    _events(sent.engine, sent.delivery_id, [(sent.ids[0], "open")] * 3)

    result = fold_new_events(sent.engine, lag_seconds=0)

    row = _kpi_row(sent.engine, sent.delivery_id)
    assert (result.events, result.recipients) == (3, 1)
    assert _counts(row) == (1, 0, 0)
    assert row["open_rate"] == pytest.approx(1 / 4)
    assert row["click_through_rate"] == 0.0


def test_fold_ignores_unsubscribes_in_the_counts(sent: Sent) -> None:
    _events(sent.engine, sent.delivery_id, [(sent.ids[0], "unsubscribe"), (sent.ids[1], "open")])

    result = fold_new_events(sent.engine, lag_seconds=0)

    assert result.events == 2
    assert _counts(_kpi_row(sent.engine, sent.delivery_id)) == (1, 0, 0)


def test_a_second_fold_without_new_events_changes_nothing(sent: Sent) -> None:
    _events(sent.engine, sent.delivery_id, [(sent.ids[0], "open"), (sent.ids[1], "click")])
    first = fold_new_events(sent.engine, lag_seconds=0)
    after_first = _kpi_row(sent.engine, sent.delivery_id)

    second = fold_new_events(sent.engine, lag_seconds=0)

    assert first.events == 2
    assert (second.events, second.recipients, second.deliveries, second.upto_id) == (0, 0, 0, None)
    assert _kpi_row(sent.engine, sent.delivery_id) == after_first
    assert _watermark(sent.engine) == first.upto_id


def test_events_arriving_between_two_folds_are_counted_once(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _events(engine, delivery_id, [(p[0], "open"), (p[1], "open")])
    first = fold_new_events(engine, lag_seconds=0)
    assert _counts(_kpi_row(engine, delivery_id)) == (2, 0, 0)

    _events(engine, delivery_id, [(p[0], "open"), (p[0], "click"), (p[2], "open"), (p[1], "click"), (p[1], "click")])
    second = fold_new_events(engine, lag_seconds=0)
    third = fold_new_events(engine, lag_seconds=0)

    assert (first.events, second.events, third.events) == (2, 5, 0)
    assert second.recipients == 3
    row = _kpi_row(engine, delivery_id)
    assert _counts(row) == (3, 2, 3)
    assert row["open_rate"] == pytest.approx(3 / 4)
    assert row["click_through_rate"] == pytest.approx(2 / 4)
    assert _engagement_counts(engine, delivery_id) == (3, 2, 3)


def test_fold_leaves_events_younger_than_the_lag_for_a_later_run(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    old_ids = _events(engine, delivery_id, [(p[0], "open")])
    _events(engine, delivery_id, [(p[1], "open"), (p[1], "click")], at=utcnow())  # just now

    first = fold_new_events(engine, lag_seconds=600)
    assert (first.events, first.upto_id) == (1, old_ids[-1])
    assert _counts(_kpi_row(engine, delivery_id)) == (1, 0, 0)

    again = fold_new_events(engine)  # the default lag still hides them
    assert again.events == 0
    assert _counts(_kpi_row(engine, delivery_id)) == (1, 0, 0)

    later = fold_new_events(engine, lag_seconds=0)
    assert (later.events, later.recipients) == (2, 1)
    row = _kpi_row(engine, delivery_id)
    assert _counts(row) == (2, 1, 1)
    assert row["open_rate"] == pytest.approx(2 / 4)


def test_fold_with_nothing_delivered_leaves_the_rates_null(campaign_db) -> None:
    engine = campaign_db.engine
    _add_profiles(engine, 3)
    delivery_id, ids = _sent_delivery(engine, ["hard", "soft", "failed"])
    _events(engine, delivery_id, [(ids[0], "open"), (ids[1], "click")])

    result = fold_new_events(engine, lag_seconds=0)

    row = _kpi_row(engine, delivery_id)
    assert result.events == 2
    assert (row["delivered"], row["processed"]) == (0, 3)
    assert _counts(row) == (0, 0, 0)  # opens of messages not delivered are not counted
    assert row["open_rate"] is None
    assert row["click_through_rate"] is None


def test_fold_keeps_the_figures_of_each_delivery_apart(campaign_db) -> None:
    engine = campaign_db.engine
    _add_profiles(engine, 4)
    first, p = _sent_delivery(engine, ["sent", "sent", "sent", "sent"])
    second, _ = _sent_delivery(engine, ["sent", "sent", "hard", "hard"])
    _events(engine, first, [(p[0], "open"), (p[1], "open"), (p[2], "open")])
    _events(engine, second, [(p[0], "click"), (p[0], "click")])

    result = fold_new_events(engine, lag_seconds=0)

    assert (result.events, result.recipients, result.deliveries) == (5, 4, 2)
    one, two = _kpi_row(engine, first), _kpi_row(engine, second)
    assert _counts(one) == (3, 0, 0)
    assert one["open_rate"] == pytest.approx(3 / 4)
    assert _counts(two) == (1, 1, 2)
    assert two["open_rate"] == pytest.approx(1 / 2)
    assert two["click_through_rate"] == pytest.approx(1 / 2)


def test_events_folded_before_aggregation_are_counted_by_compute_kpis(campaign_db) -> None:
    engine = campaign_db.engine
    _add_profiles(engine, 3)
    delivery_id, ids = _sent_delivery(engine, ["sent", "sent", "sent"], aggregate=False)
    _events(engine, delivery_id, [(ids[0], "open"), (ids[1], "click")])

    result = fold_new_events(engine, lag_seconds=0)
    assert result.events == 2
    assert _kpi_row(engine, delivery_id) is None  # the fold does not make the KPI row

    kpis = compute_kpis(engine, delivery_id)

    assert (kpis["unique_opens"], kpis["unique_clicks"], kpis["clicks"]) == (2, 1, 1)
    assert kpis["open_rate"] == pytest.approx(2 / 3)
    assert fold_new_events(engine, lag_seconds=0).events == 0
    assert _counts(_kpi_row(engine, delivery_id)) == (2, 1, 1)


def test_aggregation_counts_the_opens_recorded_during_the_send_up_to_the_lag(campaign_db) -> None:
    """A user's find: aggregate_kpis showed a 0.00 % open rate with thousands of opens recorded,
    because only the hourly run folded them. Aggregation folds them first; events younger than
    the lag are left to the hourly run, which then adds them once and the others not again."""
    engine = campaign_db.engine
    _add_profiles(engine, 4)
    delivery_id, p = _sent_delivery(engine, ["sent", "sent", "sent", "hard"], aggregate=False)
    _events(engine, delivery_id, [(p[0], "open"), (p[1], "open"), (p[1], "click"), (p[3], "open")])
    _events(engine, delivery_id, [(p[2], "open"), (p[0], "click")], at=utcnow())  # younger than the lag

    aggregated = stats.aggregate_kpis(engine, delivery_id, lag_seconds=600)

    assert aggregated.folded.events == 4
    kpis = aggregated.kpis
    assert (kpis["unique_opens"], kpis["unique_clicks"], kpis["clicks"]) == (2, 1, 1)  # p[3] bounced
    assert kpis["open_rate"] == pytest.approx(2 / 3)
    assert _kpis_only(_kpi_row(engine, delivery_id)) == _kpis_only(kpis)

    hourly = fold_new_events(engine, lag_seconds=0)
    assert hourly.events == 2
    assert _counts(_kpi_row(engine, delivery_id)) == (3, 2, 2)
    assert fold_new_events(engine, lag_seconds=0).events == 0
    assert _kpis_only(_kpi_row(engine, delivery_id)) == _kpis_only(recompute_delivery(engine, delivery_id).after)
    assert recompute_delivery(engine, delivery_id).engagement_mismatch is None


def test_aggregation_again_folds_nothing_twice(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _events(engine, delivery_id, [(p[0], "open"), (p[0], "click"), (p[1], "open")])

    first = stats.aggregate_kpis(engine, delivery_id, lag_seconds=0)
    again = stats.aggregate_kpis(engine, delivery_id, lag_seconds=0)

    assert (first.folded.events, again.folded.events) == (3, 0)
    assert _counts(_kpi_row(engine, delivery_id)) == (2, 1, 1)
    assert _engagement_counts(engine, delivery_id) == (2, 1, 1)


def test_fold_keeps_the_earliest_open_and_click_across_runs(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    hour_ago = utcnow() - timedelta(hours=1)
    _events(engine, delivery_id, [(p[0], "open")], at=hour_ago)
    fold_new_events(engine, lag_seconds=0)
    # a later run sees a newer click and an older open (its transaction committed late)
    _events(engine, delivery_id, [(p[0], "click")], at=hour_ago + timedelta(minutes=5))
    _events(engine, delivery_id, [(p[0], "open")], at=hour_ago - timedelta(minutes=5))

    result = fold_new_events(engine, lag_seconds=0)

    assert (result.events, result.recipients) == (2, 1)
    with engine.begin() as conn:
        row = conn.execute(select(delivery_engagement)).mappings().one()
        from_events = conn.execute(select(func.min(tracking_logs.c.event_at), func.max(tracking_logs.c.event_at))).one()
    assert (row["first_open_at"], row["first_click_at"], row["clicks"]) == (from_events[0], from_events[1], 1)
    assert _counts(_kpi_row(engine, delivery_id)) == (1, 1, 1)


# ---------------------------------------------------------------- the invariant: fold and Compute stats together


def test_fold_then_recompute_then_fold_keeps_the_figures(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _events(engine, delivery_id, [(p[0], "open"), (p[0], "click"), (p[1], "open"), (p[2], "click")])
    fold_new_events(engine, lag_seconds=0)
    folded = _kpis_only(_kpi_row(engine, delivery_id))

    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0)

    before, after = recomputed.before, recomputed.after
    again = fold_new_events(engine, lag_seconds=0)

    assert _kpis_only(before) == folded
    assert after == folded
    assert again.events == 0
    assert _kpis_only(_kpi_row(engine, delivery_id)) == folded
    assert _counts(_kpi_row(engine, delivery_id)) == (3, 2, 2)


def test_recompute_then_fold_of_new_events_counts_nothing_twice(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _events(engine, delivery_id, [(p[0], "open"), (p[1], "click")])  # never folded

    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0)

    _, after = recomputed.before, recomputed.after
    assert (after["unique_opens"], after["unique_clicks"], after["clicks"]) == (2, 1, 1)

    _events(engine, delivery_id, [(p[0], "click"), (p[2], "open"), (p[1], "click")])
    result = fold_new_events(engine, lag_seconds=0)

    assert recomputed.events_folded == 2
    assert result.events == 3  # Compute stats folded the first two
    row = _kpi_row(engine, delivery_id)
    assert _counts(row) == (3, 2, 3)
    assert row["open_rate"] == pytest.approx(3 / 4)
    assert row["click_through_rate"] == pytest.approx(2 / 4)
    assert _engagement_counts(engine, delivery_id) == (3, 2, 3)
    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0)
    before, after = recomputed.before, recomputed.after
    assert _kpis_only(before) == after


def test_recompute_repairs_a_corrupted_kpi_row(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _events(engine, delivery_id, [(p[0], "open"), (p[1], "click")])
    fold_new_events(engine, lag_seconds=0)
    good = _kpis_only(_kpi_row(engine, delivery_id))
    with engine.begin() as conn:
        conn.execute(
            update(delivery_kpis)
            .where(delivery_kpis.c.delivery_id == delivery_id)
            .values(delivered=99, unique_opens=42, clicks=0, open_rate=0.99, click_through_rate=None)
        )

    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0)

    before, after = recomputed.before, recomputed.after

    assert (before["delivered"], before["unique_opens"], before["clicks"]) == (99, 42, 0)
    assert (before["open_rate"], before["click_through_rate"]) == (0.99, None)
    assert after == good
    assert (after["delivered"], after["unique_opens"], after["unique_clicks"], after["clicks"]) == (4, 2, 1, 1)
    assert after["open_rate"] == pytest.approx(2 / 4)
    assert _kpis_only(_kpi_row(engine, delivery_id)) == good
    table = before_after_table([Recomputed(delivery_id, before, after)])
    assert {line.split()[1] for line in table.splitlines()[1:]} == {
        "delivered",
        "unique_opens",
        "clicks",
        "open_rate",
        "click_through_rate",
    }


def _two_clicks_folded_then_engagement_says_ten(engine: Engine, delivery_id: int, profile_id: int) -> None:
    _events(engine, delivery_id, [(profile_id, "click"), (profile_id, "click")])
    fold_new_events(engine, lag_seconds=0)
    with engine.begin() as conn:
        conn.execute(
            update(delivery_engagement).where(delivery_engagement.c.delivery_id == delivery_id).values(clicks=10)
        )


def test_recompute_rebuilds_corrupted_engagement_without_a_later_double_count(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _two_clicks_folded_then_engagement_says_ten(engine, delivery_id, p[0])

    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0)

    _, after = recomputed.before, recomputed.after
    _events(engine, delivery_id, [(p[0], "click")])
    fold_new_events(engine, lag_seconds=0)

    assert after["clicks"] == 2
    assert recomputed.engagement_mismatch == "clicks 10 in engagement, 2 in tracking_logs"
    assert recomputed.engagement_rebuilt == 1
    assert _engagement(engine, delivery_id) == {p[0]: (True, True, 3)}
    assert _counts(_kpi_row(engine, delivery_id)) == (1, 1, 3)


def test_recompute_rebuilds_engagement_of_a_recipient_who_lost_a_row(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _events(engine, delivery_id, [(p[0], "open"), (p[1], "click")])
    fold_new_events(engine, lag_seconds=0)
    with engine.begin() as conn:
        conn.execute(delivery_engagement.delete().where(delivery_engagement.c.profile_id == p[1]))

    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0)
    _events(engine, delivery_id, [(p[1], "click")])
    fold_new_events(engine, lag_seconds=0)

    assert recomputed.engagement_mismatch == (
        "unique_opens 1 in engagement, 2 in tracking_logs; unique_clicks 0 in engagement, 1 in tracking_logs; "
        "clicks 0 in engagement, 1 in tracking_logs; human_unique_opens 1 in engagement, 2 in tracking_logs; "
        "human_unique_clicks 0 in engagement, 1 in tracking_logs; human_clicks 0 in engagement, 1 in tracking_logs"
    )  # events recorded before the machine rules (machine NULL) count as human too
    assert _counts(recomputed.after) == (2, 1, 1)
    # had the row stayed lost, this click would have counted p[1] as a new unique opener and clicker
    assert _counts(_kpi_row(engine, delivery_id)) == (2, 1, 2)


def test_recompute_leaves_agreeing_engagement_rows_untouched(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _events(engine, delivery_id, [(p[0], "open"), (p[1], "click"), (p[1], "click")])
    fold_new_events(engine, lag_seconds=0)
    with engine.begin() as conn:
        stamps = conn.execute(select(delivery_engagement.c.profile_id, delivery_engagement.c.updated_at)).all()

    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0)

    assert (recomputed.engagement_mismatch, recomputed.engagement_rebuilt) == (None, None)
    assert _counts(recomputed.after) == (2, 1, 2)
    with engine.begin() as conn:
        assert conn.execute(select(delivery_engagement.c.profile_id, delivery_engagement.c.updated_at)).all() == stamps


def test_recompute_rebuilds_engagement_when_asked_even_if_it_agrees(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _events(engine, delivery_id, [(p[0], "open"), (p[1], "click"), (p[1], "click")])
    fold_new_events(engine, lag_seconds=0)

    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0, rebuild_engagement=True)

    assert (recomputed.engagement_mismatch, recomputed.engagement_rebuilt) == (None, 2)
    assert _counts(recomputed.after) == (2, 1, 2)
    assert _engagement(engine, delivery_id) == {p[0]: (True, False, 0), p[1]: (True, True, 2)}


def test_recompute_leaves_events_younger_than_the_lag_to_the_next_fold(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _events(engine, delivery_id, [(p[0], "open")])
    _events(engine, delivery_id, [(p[1], "click")], at=utcnow())

    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=600)
    later = fold_new_events(engine, lag_seconds=0)

    # the young click is neither counted nor taken for a disagreement with engagement
    assert (recomputed.engagement_mismatch, recomputed.engagement_rebuilt) == (None, None)
    assert _counts(recomputed.after) == (1, 0, 0)
    assert later.events == 1
    assert _counts(_kpi_row(engine, delivery_id)) == (2, 1, 1)


def test_compute_kpis_stores_what_recompute_delivery_produces(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _events(engine, delivery_id, [(p[0], "open"), (p[1], "click"), (p[1], "click"), (p[4], "open")])
    fold_new_events(engine, lag_seconds=0)

    kpis = compute_kpis(engine, delivery_id)
    stored = _kpis_only(_kpi_row(engine, delivery_id))
    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0)
    before, after = recomputed.before, recomputed.after

    assert stored == kpis
    assert _kpis_only(before) == stored
    assert after == stored
    assert _kpis_only(_kpi_row(engine, delivery_id)) == stored
    # p[4]'s message bounced: its open is kept, not counted
    assert (stored["unique_opens"], stored["unique_clicks"], stored["clicks"]) == (2, 1, 2)
    assert before_after_table([Recomputed(delivery_id, before, after)]) == "no KPI changed"


def test_recompute_of_a_delivery_without_a_kpi_row_has_no_before(sent: Sent) -> None:
    with sent.engine.begin() as conn:
        conn.execute(delivery_kpis.delete().where(delivery_kpis.c.delivery_id == sent.delivery_id))

    recomputed = recompute_delivery(sent.engine, sent.delivery_id, lag_seconds=0)

    before, after = recomputed.before, recomputed.after

    assert before is None
    assert (after["to_deliver"], after["delivered"], after["processed"]) == (5, 4, 5)
    assert _kpis_only(_kpi_row(sent.engine, sent.delivery_id)) == after


# ---------------------------------------------------------------- deliveries_to_recompute


def test_deliveries_to_recompute_one_delivery(campaign_db) -> None:
    engine = campaign_db.engine
    _add_profiles(engine, 1)
    delivery_id = _new_delivery(engine, status="sent", confirmed_at=utcnow() - timedelta(days=400))

    assert deliveries_to_recompute(engine, delivery_id, 7) == [delivery_id]
    assert deliveries_to_recompute(engine, delivery_id + 1000, 7) == []


def test_deliveries_to_recompute_by_days(campaign_db) -> None:
    engine = campaign_db.engine
    _add_profiles(engine, 1)
    now = utcnow()
    sending = _new_delivery(engine)
    start_confirmed_send(engine, sending, "alice", "run-A")  # confirmed just now, status sending
    sent_yesterday = _new_delivery(engine, "sent", now - timedelta(days=1))
    failed_3_days_ago = _new_delivery(engine, "failed", now - timedelta(days=3))
    sent_10_days_ago = _new_delivery(engine, "sent", now - timedelta(days=10))
    _new_delivery(engine)  # ready, never confirmed
    _new_delivery(engine, "draft")
    _new_delivery(engine, "ready", now - timedelta(hours=1))  # confirmed_at set but not sending/sent/failed

    assert deliveries_to_recompute(engine, None, 7) == sorted([sending, sent_yesterday, failed_3_days_ago])
    assert deliveries_to_recompute(engine, None, 30) == sorted(
        [sending, sent_yesterday, failed_3_days_ago, sent_10_days_ago]
    )
    assert deliveries_to_recompute(engine, None, 0) == []


# ---------------------------------------------------------------- before_after_table


def _table_rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()[1:]]


def _full_kpis(**changes: Any) -> dict[str, Any]:
    values = dict.fromkeys(KPI_COLUMNS, 0)
    values.update(to_deliver=5, delivered=4, processed=5, bounces_errors=1, hard_bounces=1)
    values.update(delivered_rate=0.8, bounce_error_rate=0.2, open_rate=0.25, click_through_rate=0.0, unique_opens=1)
    values.update(changes)
    return values


def test_before_after_table_lists_only_the_changed_kpis() -> None:
    before = _full_kpis()
    after = _full_kpis(unique_opens=2, open_rate=0.5)

    table = before_after_table([Recomputed(7, before, after), Recomputed(8, _full_kpis(), _full_kpis())])

    header, *lines = table.splitlines()
    assert header.split() == ["delivery", "kpi", "before", "after"]
    rows = _table_rows(table)
    assert [(r[0], r[1]) for r in rows] == [("7", "unique_opens"), ("7", "open_rate")]
    assert float(rows[0][2]) == 1 and float(rows[0][3]) == 2
    assert float(rows[1][2]) == 0.25 and float(rows[1][3]) == 0.5
    assert len(lines) == 2


def test_before_after_table_says_when_nothing_changed() -> None:
    same = _full_kpis(open_rate=1 / 3)
    nearly = _full_kpis(open_rate=1 / 3 + 1e-15)  # float noise is not a change

    assert (
        before_after_table([Recomputed(7, same, nearly), Recomputed(8, _full_kpis(), _full_kpis())]) == "no KPI changed"
    )
    assert before_after_table([]) == "no KPI changed"


def test_before_after_table_lists_every_kpi_of_a_delivery_without_a_previous_row() -> None:
    table = before_after_table(
        [Recomputed(9, None, _full_kpis(open_rate=None, click_through_rate=None))]
    )  # even None rates

    rows = _table_rows(table)
    assert [r[1] for r in rows] == list(KPI_COLUMNS)
    assert {r[0] for r in rows} == {"9"}
    assert {r[2] for r in rows} == {"None"}


def test_before_after_table_shows_a_rate_appearing_or_disappearing() -> None:
    table = before_after_table(
        [Recomputed(7, _full_kpis(open_rate=None), _full_kpis(open_rate=0.5, click_through_rate=None))]
    )

    assert [r[1] for r in _table_rows(table)] == ["open_rate", "click_through_rate"]


def test_before_after_table_prints_counts_as_integers() -> None:
    before = _full_kpis(click_through_rate=None)
    after = _full_kpis(unique_opens=2, open_rate=0.5, click_through_rate=0.25)

    rows = _table_rows(before_after_table([Recomputed(7, before, after)]))

    assert rows[0] == ["7", "unique_opens", "1", "2"]
    assert rows[2][:3] == ["7", "click_through_rate", "None"]


def test_recompute_summary_and_warnings_name_what_compute_stats_did(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _two_clicks_folded_then_engagement_says_ten(engine, delivery_id, p[0])
    _events(engine, delivery_id, [(p[1], "open")])  # pending: folded by Compute stats first

    changes = [recompute_delivery(engine, delivery_id, lag_seconds=0)]

    assert engagement_warnings(changes) == [
        f"delivery {delivery_id}: engagement disagreed with the tracking logs "
        "(clicks 10 in engagement, 2 in tracking_logs); rebuilt 2 recipient rows"
    ]
    first, *table = recompute_summary(changes, 1.234).splitlines()
    assert first == (
        "recompute_kpis: 1 deliveries recomputed from the logs, 1 pending tracking events folded first, "
        "engagement rebuilt for 1 (1.23s)"
    )
    # "before" is read after the pending events are folded: the table shows what the check changed
    assert table == ["no KPI changed"]


# ---------------------------------------------------------------- machines left out (campaign.machine)

HUMAN_COUNTS = ("human_unique_opens", "human_unique_clicks", "human_clicks")


def _judged(engine: Engine, delivery_id: int, events: list[tuple[int, str, bool | None]], at: datetime | None = None):
    """Tracking events as the endpoints record them (insert_judged_event): machine TRUE with a rule,
    FALSE, or NULL as before the rules; an hour old unless ``at`` is given."""
    with engine.begin() as conn:
        for profile_id, event_type, is_machine in events:
            conn.execute(
                sql("insert_judged_event"),
                {
                    "delivery_id": delivery_id,
                    "profile_id": profile_id,
                    "event_type": event_type,
                    "link_id": None,
                    "user_agent": "test-agent",
                    "event_at": at or utcnow() - timedelta(hours=1),
                    "machine": is_machine,
                    "machine_rule": "head_request" if is_machine else None,
                },
            )


def _human(row: dict[str, Any] | None) -> tuple[int, int, int]:
    assert row is not None
    return tuple(row[name] for name in HUMAN_COUNTS)


def test_fold_counts_all_and_human_engagement_side_by_side(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _judged(
        engine,
        delivery_id,
        [
            (p[0], "open", True),  # a proxy's open only
            (p[1], "open", True),  # a proxy's open, then the person's click
            (p[1], "click", False),
            (p[2], "click", True),  # a scanner's click, then the person's open
            (p[2], "open", False),
            (p[3], "click", None),  # before the rules: counted as human
            (p[3], "click", True),
        ],
    )

    fold_new_events(engine, lag_seconds=0)

    row = _kpi_row(engine, delivery_id)
    assert _counts(row) == (4, 3, 4)
    assert _human(row) == (3, 2, 2)
    assert (row["open_rate"], row["human_open_rate"]) == (pytest.approx(4 / 4), pytest.approx(3 / 4))
    assert (row["click_through_rate"], row["human_click_through_rate"]) == (pytest.approx(3 / 4), pytest.approx(2 / 4))
    assert _kpis_only(row) == _kpis_only(compute_kpis(engine, delivery_id))  # deltas = sums of engagement


def test_fold_of_human_events_is_incremental(sent: Sent) -> None:
    # A recipient first seen through a machine becomes a human opener and clicker in a later fold,
    # counted once; a machine's later events change nothing human.
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _judged(engine, delivery_id, [(p[0], "open", True), (p[0], "click", True)])
    fold_new_events(engine, lag_seconds=0)
    assert (_counts(_kpi_row(engine, delivery_id)), _human(_kpi_row(engine, delivery_id))) == ((1, 1, 1), (0, 0, 0))

    _judged(engine, delivery_id, [(p[0], "open", False), (p[0], "click", False)])
    fold_new_events(engine, lag_seconds=0)
    _judged(engine, delivery_id, [(p[0], "click", True), (p[0], "click", False)])
    fold_new_events(engine, lag_seconds=0)
    assert fold_new_events(engine, lag_seconds=0).events == 0

    row = _kpi_row(engine, delivery_id)
    assert (_counts(row), _human(row)) == ((1, 1, 4), (1, 1, 2))
    assert _kpis_only(row) == _kpis_only(compute_kpis(engine, delivery_id))
    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0)
    assert (recomputed.engagement_mismatch, recomputed.engagement_rebuilt) == (None, None)


def test_compute_stats_finds_and_rebuilds_wrong_human_engagement(sent: Sent) -> None:
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _judged(engine, delivery_id, [(p[0], "open", False), (p[1], "click", True), (p[1], "click", False)])
    fold_new_events(engine, lag_seconds=0)
    folded = _kpis_only(_kpi_row(engine, delivery_id))
    with engine.begin() as conn:  # e.g. rows folded by a version without the machine rules
        conn.execute(
            update(delivery_engagement)
            .where(delivery_engagement.c.delivery_id == delivery_id)
            .values(first_human_open_at=None, first_human_click_at=None, human_clicks=0)
        )
    compute_kpis(engine, delivery_id)
    assert _human(_kpi_row(engine, delivery_id)) == (0, 0, 0)

    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0)

    assert recomputed.engagement_mismatch == (
        "human_unique_opens 0 in engagement, 2 in tracking_logs; "
        "human_unique_clicks 0 in engagement, 1 in tracking_logs; human_clicks 0 in engagement, 1 in tracking_logs"
    )
    assert recomputed.engagement_rebuilt == 2
    assert _human(recomputed.after) == (2, 1, 1)
    assert _kpis_only(_kpi_row(engine, delivery_id)) == folded


def test_events_flagged_in_their_moment_are_not_folded_before_it_ends(sent: Sent) -> None:
    # The invariant that lets the same-second and hidden-link rules flag earlier events: with the
    # lag the DAGs use (never under the moment), an event of the moment is not folded yet.
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _judged(engine, delivery_id, [(p[0], "click", False)], at=utcnow())

    assert fold_new_events(engine, stats.lag_seconds_from_env()).events == 0
    with engine.begin() as conn:  # flagged within its moment, as tracking._record does
        conn.execute(
            sql("flag_moment_as_machine"),
            {
                "delivery_id": delivery_id,
                "profile_id": p[0],
                "machine_rule": "same_second_clicks",
                "first_type": "click",
                "second_type": "click",
                "since": utcnow() - timedelta(seconds=machine.SAME_MOMENT_SECONDS),
            },
        )
    time.sleep(machine.SAME_MOMENT_SECONDS)
    assert fold_new_events(engine, machine.SAME_MOMENT_SECONDS).events == 1

    row = _kpi_row(engine, delivery_id)
    assert (_counts(row), _human(row)) == ((1, 1, 1), (0, 0, 0))
    assert recompute_delivery(engine, delivery_id, lag_seconds=0).engagement_mismatch is None


# ---------------------------------------------------------------- delivered recipients only


def test_engagement_of_messages_not_delivered_stays_out_of_every_kpi(campaign_db) -> None:
    # Every rate divides by delivered: opens, clicks and complaints of a recipient whose message
    # bounced, failed, was ignored or cancelled would put someone outside the denominator into
    # the numerator. Their events stay recorded and folded per recipient.
    engine = campaign_db.engine
    _add_profiles(engine, 5)
    delivery_id, p = _sent_delivery(engine, ["sent", "hard", "failed", "ignored", "soft"])
    _judged(
        engine,
        delivery_id,
        [(who, kind, machine_made) for who in p for kind, machine_made in (("open", True), ("click", False))],
    )
    with engine.begin() as conn:
        for who in p:
            conn.execute(
                sql("insert_complaint_event"),
                {"delivery_id": delivery_id, "profile_id": who, "user_agent": None, "event_at": utcnow()},
            )

    folded = fold_new_events(engine, lag_seconds=0)

    assert (folded.recipients, len(_engagement(engine, delivery_id))) == (5, 5)  # all kept per recipient
    row = _kpi_row(engine, delivery_id)
    assert row["delivered"] == 1
    assert (_counts(row), _human(row)) == ((1, 1, 1), (1, 1, 1))
    assert (row["open_rate"], row["human_click_through_rate"]) == (1.0, 1.0)
    computed = compute_kpis(engine, delivery_id)
    assert (computed["complaints"], computed["complaint_rate"]) == (1, 1.0)
    assert _kpis_only(_kpi_row(engine, delivery_id)) == _kpis_only(computed)  # the fold and the query agree
    recomputed = recompute_delivery(engine, delivery_id, lag_seconds=0)
    assert (recomputed.engagement_mismatch, recomputed.engagement_rebuilt) == (None, None)


def test_a_bounce_reported_after_an_open_takes_the_open_out_with_the_delivery(sent: Sent) -> None:
    # A link scanner fetched the pixel, then the mailbox bounced the message by DSN.
    engine, delivery_id, p = sent.engine, sent.delivery_id, sent.ids
    _judged(engine, delivery_id, [(p[0], "open", True), (p[1], "click", False)])
    fold_new_events(engine, lag_seconds=0)
    assert (_kpi_row(engine, delivery_id)["delivered"], _counts(_kpi_row(engine, delivery_id))) == (4, (2, 1, 1))

    with engine.begin() as conn:
        log_id = (
            conn.execute(sql("select_bounce_target"), {"delivery_id": delivery_id, "profile_id": p[1]})
            .mappings()
            .one()["id"]
        )
        conn.execute(
            sql("record_async_bounce"),
            {
                "log_id": log_id,
                "failure_type": "hard",
                "reason": "hard bounce reported by DSN 5.1.1",
                "bounced_at": utcnow(),
                "dsn_status": "5.1.1",
                "dsn_diagnostic": "550 5.1.1 no such user",
            },
        )
    kpis = compute_kpis(engine, delivery_id)

    assert (kpis["delivered"], kpis["unique_opens"], kpis["unique_clicks"], kpis["human_unique_opens"]) == (3, 1, 0, 0)
    assert kpis["open_rate"] == pytest.approx(1 / 3)
    _judged(engine, delivery_id, [(p[1], "click", False)])  # a later click of that recipient
    fold_new_events(engine, lag_seconds=0)
    assert _kpis_only(_kpi_row(engine, delivery_id)) == _kpis_only(compute_kpis(engine, delivery_id))
    assert recompute_delivery(engine, delivery_id, lag_seconds=0).engagement_mismatch is None


def test_an_open_before_the_sending_log_row_is_written_counts(campaign_db) -> None:
    # The relay accepts a message a moment before its chunk commits the row; a fast proxy's
    # open in between is a delivered recipient's.
    engine = campaign_db.engine
    _add_profiles(engine, 2)
    delivery_id, p = _sent_delivery(engine, ["sent"])
    compute_kpis(engine, delivery_id)
    _judged(engine, delivery_id, [(p[0], "open", False), (p[1], "open", True)])

    fold_new_events(engine, lag_seconds=0)

    assert _counts(_kpi_row(engine, delivery_id)) == (2, 0, 0)
