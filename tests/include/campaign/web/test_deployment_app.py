"""The delivery page's charts section and the JSON API's series, through the app's own routes
(FastAPI's TestClient, the login dependency replaced by a fixed user), on both databases."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from campaign import charts
from campaign.db import sql
from campaign.schema import delivery_targets
from campaign.web import deployment_app
from campaign.web.deployment_app import URL_PREFIX, create_app

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _log_and_track(engine: Engine, delivery_id: int, profile_ids: list[int]) -> None:
    """One sending-log row a minute over three minutes, opens and a click over two hours."""
    with engine.begin() as conn:
        for seq, profile_id in enumerate(profile_ids, start=1):
            conn.execute(
                sql("insert_broad_log"),
                {
                    "delivery_id": delivery_id, "profile_id": profile_id, "seq": seq, "email": f"r{seq}@x.test",
                    "status": "sent" if seq != 2 else "bounced", "failure_type": None, "reason": None,
                    "smtp_code": None, "smtp_reply": None, "message_id": None, "attempts": 1, "worker": "t",
                    "run_id": "r", "logged_at": T0 + timedelta(minutes=seq - 1),
                },
            )  # fmt: skip
        for minutes, event_type in ((10, "open"), (20, "click"), (70, "open")):
            conn.execute(
                sql("insert_tracking_event"),
                {
                    "delivery_id": delivery_id, "profile_id": profile_ids[0], "event_type": event_type,
                    "link_id": None, "user_agent": "t", "event_at": T0 + timedelta(minutes=minutes),
                },
            )  # fmt: skip


@pytest.fixture
def client(campaign_db) -> TestClient:
    app = create_app(lambda: campaign_db.engine, lambda: "tester")
    return TestClient(app, root_path=URL_PREFIX)


def _profiles_of(engine: Engine, delivery_id: int) -> list[int]:
    mine = delivery_targets.c.delivery_id == delivery_id
    with engine.begin() as conn:
        return list(conn.execute(select(delivery_targets.c.profile_id).where(mine).order_by("seq")).scalars())


def test_the_delivery_page_draws_both_charts(campaign_db, client, ready_delivery: Callable) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=3)
    _log_and_track(engine, delivery_id, _profiles_of(engine, delivery_id))

    page = client.get(f"/deliveries/{delivery_id}")

    assert page.status_code == 200
    charts = page.text[page.text.index('<section id="charts">') : page.text.index("</section>")]
    assert charts.count("<svg ") == 2
    assert '<title id="messages-title">Messages processed per minute, by outcome</title>' in charts
    assert "3 minutes from 2026-11-27T10:00 UTC: sent 2, bounced 1." in charts
    assert '<title id="events-title">Opens and clicks per hour since the send</title>' in charts
    assert "2 hours from 2026-11-27T10:00 UTC: 2 open events, 1 click events." in charts
    assert "not unique recipients" in charts
    assert "No message processed yet" not in charts and "No opens or clicks yet" not in charts
    assert "&lt;svg" not in page.text  # drawn, not escaped
    # Nothing fetched from outside the page: url() only refers to the page's own elements.
    assert re.findall(r"url\((?!#)", page.text) == []


def test_a_delivery_not_sent_yet_says_so_instead_of_empty_charts(campaign_db, client, ready_delivery) -> None:
    delivery_id = ready_delivery(campaign_db.engine, recipients=2)

    page = client.get(f"/deliveries/{delivery_id}")

    charts = page.text[page.text.index('<section id="charts">') : page.text.index("</section>")]
    assert "<svg" not in charts
    assert (
        "No message processed yet: this chart of messages per minute starts with the first sending-log row."
    ) in charts
    assert "No opens or clicks yet: this chart of opens and clicks per hour starts with the first one." in charts


def test_the_json_api_gives_the_charts_series(campaign_db, client, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=3)
    _log_and_track(engine, delivery_id, _profiles_of(engine, delivery_id))

    charts = client.get(f"/api/deliveries/{delivery_id}").json()["charts"]

    zero = {"sent": 0, "bounced": 0, "failed": 0, "ignored": 0, "cancelled": 0}
    assert charts == {
        "messages_per_minute": [
            {"minute": "2026-11-27T10:00:00+00:00", **zero, "sent": 1},
            {"minute": "2026-11-27T10:01:00+00:00", **zero, "bounced": 1},
            {"minute": "2026-11-27T10:02:00+00:00", **zero, "sent": 1},
        ],
        "events_per_hour": [
            {"hour": "2026-11-27T10:00:00+00:00", "opens": 1, "clicks": 1},
            {"hour": "2026-11-27T11:00:00+00:00", "opens": 1, "clicks": 0},
        ],
    }


def test_the_same_figures_are_drawn_once(campaign_db, client, ready_delivery, monkeypatch) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=3)
    _log_and_track(engine, delivery_id, _profiles_of(engine, delivery_id))
    drawings = []
    monkeypatch.setattr(deployment_app, "_drawn", OrderedDict())  # figures drawn by earlier tests
    monkeypatch.setattr(charts, "messages_chart", lambda series: drawings.append(len(series)) or "<svg></svg>")

    first, second = client.get(f"/deliveries/{delivery_id}").text, client.get(f"/deliveries/{delivery_id}").text

    assert drawings == [3] and first == second
