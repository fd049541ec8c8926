"""The Deployment app through its own routes (FastAPI's TestClient), on real SQLite and
PostgreSQL: the send controls (pause, resume, stop), the charts, and the KPIs by everyone and
without machines side by side.

Airflow's authenticated-user dependency is replaced: by one that reads the user from a header for
the controls (the app only asks it for the user's name; the role is checked in the campaign
database), by a fixed user for the charts.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from bounce_mail import Sent, exim_text_bounce, postfix_dsn
from fastapi import Header, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from testsupport import start_confirmed_send

from campaign import bounces, charts, controls, operators, stats
from campaign.db import sql
from campaign.rendering import message_id
from campaign.schema import ROLE_START_DELIVERIES, delivery_targets
from campaign.web import deployment_app
from campaign.web.deployment_app import URL_PREFIX, create_app


def _user(x_user: str | None = Header(default=None)) -> SimpleNamespace:
    if not x_user:
        raise HTTPException(status_code=401, detail="Not authenticated")
    return SimpleNamespace(get_name=lambda: x_user)


@pytest.fixture
def sending(campaign_db, ready_delivery):
    """(HTTP client, delivery id) of a delivery that is sending; alice holds Start deliveries."""
    engine = campaign_db.engine
    for login in ("alice", "bob"):
        operators.create_operator(engine, login)
    operators.grant_role(engine, "alice", ROLE_START_DELIVERIES)
    delivery_id = ready_delivery(engine)
    start_confirmed_send(engine, delivery_id, "alice", "run-1")
    return TestClient(create_app(lambda: engine, _user)), delivery_id


def _post(client, delivery_id: int, action: str, user: str = "alice", **body):
    return client.post(f"/api/deliveries/{delivery_id}/{action}", json=body, headers={"X-User": user})


def _status(engine, delivery_id: int) -> str:
    with engine.begin() as conn:
        return conn.execute(text("SELECT status FROM deliveries WHERE id = :d"), {"d": delivery_id}).scalar_one()


def test_an_operator_with_the_role_pauses_resumes_and_stops_recorded_under_their_name(campaign_db, sending) -> None:
    client, delivery_id = sending

    paused = _post(client, delivery_id, "pause", reason="  relay maintenance ")
    assert (paused.status_code, paused.json()) == (
        200,
        {"detail": f"Delivery {delivery_id} paused by alice: relay maintenance.", "status": "paused"},
    )
    page = client.get(f"/deliveries/{delivery_id}", headers={"X-User": "alice"}).text
    assert '<b>Paused</b>: paused by alice: relay maintenance <span class="muted">(alice, ' in page
    assert 'id="resume-send"' in page and 'id="stop-send"' in page and 'id="pause-send"' not in page

    assert _post(client, delivery_id, "resume").json()["status"] == "sending"
    assert _post(client, delivery_id, "stop").json()["status"] == "stopping"
    trail = client.get(f"/api/deliveries/{delivery_id}", headers={"X-User": "bob"}).json()["audit"]
    assert [(row["action"], row["actor"]) for row in trail if row["action"] != "confirmed"] == [
        ("paused", "alice"), ("resumed", "alice"), ("stopped", "alice"),
    ]  # fmt: skip


def test_without_the_role_the_page_has_no_controls_and_a_post_is_refused(campaign_db, sending) -> None:
    client, delivery_id = sending

    page = client.get(f"/deliveries/{delivery_id}", headers={"X-User": "bob"}).text
    assert 'id="controls"' not in page
    refused = _post(client, delivery_id, "pause", user="bob")
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith(f"User 'bob' may not pause delivery {delivery_id}")
    assert _status(campaign_db.engine, delivery_id) == "sending"
    assert client.post(f"/api/deliveries/{delivery_id}/pause", json={}).status_code == 401


def test_a_control_that_does_not_apply_is_409_with_its_sentence(campaign_db, sending) -> None:
    client, delivery_id = sending
    refused = _post(client, delivery_id, "resume")
    assert (refused.status_code, refused.json()["detail"]) == (
        409,
        f"Delivery {delivery_id} is sending: only a paused delivery can be resumed. Nothing was changed.",
    )
    assert _post(client, 999, "pause").status_code == 404
    assert _post(client, delivery_id, "explode").status_code == 404
    assert _post(client, delivery_id, "pause", reason=["not", "text"]).status_code == 400
    assert _status(campaign_db.engine, delivery_id) == "sending"


@pytest.mark.parametrize("delivery_id", ["0", "-1", "99999999999999999999"])
def test_a_delivery_id_that_names_no_delivery_is_404_everywhere(campaign_db, sending, delivery_id) -> None:
    """Fresh-user finding: an id beyond 64 bits was a 500 (the driver's OverflowError)."""
    client, _ = sending
    alice = {"X-User": "alice"}
    assert client.get(f"/api/deliveries/{delivery_id}", headers=alice).status_code == 404
    assert client.get(f"/deliveries/{delivery_id}", headers=alice).status_code == 404
    refused = client.post(f"/api/deliveries/{delivery_id}/pause", json={}, headers=alice)
    assert (refused.status_code, refused.json()) == (404, {"detail": f"Delivery {delivery_id} does not exist."})


def test_a_form_post_from_another_site_cannot_pause(campaign_db, sending) -> None:
    """A cross-site form can send form-encoded bodies without asking the server first; only
    JSON, which a browser only sends cross-site after a CORS preflight, is taken."""
    client, delivery_id = sending
    forged = client.post(f"/api/deliveries/{delivery_id}/pause", data={"reason": "x"}, headers={"X-User": "alice"})
    assert forged.status_code == 415
    assert _status(campaign_db.engine, delivery_id) == "sending"


def test_an_automatic_pause_shows_its_reason_and_figures_on_the_page(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    operators.create_operator(engine, "alice")
    delivery_id = ready_delivery(engine, recipients=25)
    start_confirmed_send(engine, delivery_id, "alice", "run-2")
    client = TestClient(create_app(lambda: engine, _user))
    with engine.begin() as conn:  # what the relay said: 11 of 25 refused (seq counts from 1)
        targets = conn.execute(
            select(delivery_targets)
            .where(delivery_targets.c.delivery_id == delivery_id)
            .order_by(delivery_targets.c.seq)
        ).all()
        conn.execute(
            sql("insert_broad_log"),
            [
                {
                    "delivery_id": delivery_id, "profile_id": t.profile_id, "seq": t.seq, "email": t.email,
                    "status": "bounced" if t.seq <= 11 else "sent", "failure_type": "hard" if t.seq <= 11 else None,
                    "reason": None, "smtp_code": 550 if t.seq <= 11 else 250, "smtp_reply": None, "message_id": None,
                    "attempts": 1, "worker": "test:1", "run_id": "run-2", "logged_at": datetime.now(UTC),
                }
                for t in targets
            ],
        )  # fmt: skip

    assert controls.check_brake(engine, delivery_id, "run-2") is not None

    page = client.get(f"/deliveries/{delivery_id}", headers={"X-User": "alice"}).text
    assert (
        "<b>Paused</b>: automatic brake: 11 of the last 25 processed messages bounced or failed "
        "(44.0 % &gt; 30 %, window 500)"
    ) in page
    assert "(automatic, " in page


# ---------------------------------------------------------------- bounces, errors and ignored recipients


def test_a_bounce_reported_later_by_dsn_shows_the_dsn_status_not_the_relays_250(
    campaign_db, client, ready_delivery
) -> None:
    # Fresh-user finding: the code column read 250 (what the relay said when it took the message)
    # for every recipient a DSN bounced later.
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=4)
    profile_ids = _profiles_of(engine, delivery_id)
    with engine.begin() as conn:
        conn.execute(
            sql("insert_broad_log"),
            [
                {
                    "delivery_id": delivery_id, "profile_id": profile_id, "seq": seq, "email": f"r{seq}@x.test",
                    "status": "bounced" if seq == 2 else "sent", "failure_type": "hard" if seq == 2 else None,
                    "reason": "recipient refused" if seq == 2 else None, "smtp_code": 550 if seq == 2 else 250,
                    "smtp_reply": None, "message_id": message_id(SECRET, delivery_id, profile_id, "shop.test"),
                    "attempts": 1, "worker": "t", "run_id": "r", "logged_at": T0,
                }
                for seq, profile_id in enumerate(profile_ids, start=1)
            ],
        )  # fmt: skip
    sent = [  # sent without a return path: the reports map by Message-ID
        Sent(delivery_id, pid, f"r{seq}@x.test", "news@shop.test", message_id(SECRET, delivery_id, pid, "shop.test"))
        for seq, pid in enumerate(profile_ids, start=1)
    ]
    for data in (postfix_dsn(sent[0]), exim_text_bounce(sent[2])):  # a DSN 5.1.1; a text bounce without status
        assert bounces.apply_report(engine, bounces.read_report(data, SECRET)).changed

    page = client.get(f"/deliveries/{delivery_id}").text
    reasons = page[page.index('<table id="reasons">') : page.index("</table>", page.index('<table id="reasons">'))]
    api = client.get(f"/api/deliveries/{delivery_id}").json()["failure_reasons"]

    assert "<td>bounced</td><td>hard</td><td>DSN 5.1.1</td><td>hard bounce reported by DSN 5.1.1</td>" in reasons
    assert "<td>bounced</td><td>hard</td><td>550</td><td>recipient refused</td>" in reasons
    assert "<td>bounced</td><td>hard</td><td></td><td>hard bounce reported by DSN</td>" in reasons
    assert "250" not in reasons
    assert sorted((r["smtp_code"] or 0, r["dsn_status"] or "", r["reason"]) for r in api) == [
        (0, "", "hard bounce reported by DSN"),
        (0, "5.1.1", "hard bounce reported by DSN 5.1.1"),
        (550, "", "recipient refused"),
    ]


# ---------------------------------------------------------------- the charts

SECRET = b"deployment-test-secret-0123456789"  # signs the Message-IDs of the bounce test

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


# ---------------------------------------------------------------- all and human figures side by side


def test_all_and_human_figures_side_by_side_in_json_list_and_page(campaign_db, client, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=4)
    recipients = _profiles_of(engine, delivery_id)
    _log_and_track(engine, delivery_id, recipients)  # recipient 1: two opens and a click before the rules
    with engine.begin() as conn:  # recipients 3 and 4: a proxy's open, a scanner's click
        for profile_id, event_type in ((recipients[2], "open"), (recipients[3], "click")):
            conn.execute(
                sql("insert_judged_event"),
                {
                    "delivery_id": delivery_id, "profile_id": profile_id, "event_type": event_type,
                    "link_id": None, "user_agent": "Mozilla/5.0", "event_at": T0 + timedelta(minutes=5),
                    "machine": True, "machine_rule": "apple_mpp_proxy",
                },
            )  # fmt: skip
    stats.compute_kpis(engine, delivery_id)
    stats.fold_new_events(engine, lag_seconds=0)
    with engine.begin() as conn:
        stored = dict(
            conn.execute(text("SELECT * FROM delivery_kpis WHERE delivery_id = :d"), {"d": delivery_id})
            .mappings()
            .one()
        )

    [entry] = [d for d in client.get("/api/deliveries").json()["deliveries"] if d["id"] == delivery_id]
    detail = client.get(f"/api/deliveries/{delivery_id}").json()

    # 3 delivered (recipient 2 bounced); everyone's figures count the machines, the human ones do not
    expected = {
        "unique_opens": 3, "open_rate": 1.0, "unique_clicks": 2, "clicks": 2, "click_through_rate": 2 / 3,
        "human_unique_opens": 1, "human_open_rate": 1 / 3, "human_unique_clicks": 1, "human_clicks": 1,
        "human_click_through_rate": 1 / 3,
    }  # fmt: skip
    for name, value in expected.items():
        assert entry["kpis"][name] == pytest.approx(value) == pytest.approx(stored[name]), name
    assert detail["kpis"] == entry["kpis"]

    page = client.get(f"/deliveries/{delivery_id}").text
    kpis = page[page.index('<div class="kpis" id="kpis">') : page.index('id="machine-note"')]
    shown = dict(re.findall(r'<b data-kpi="(\w+)">([^<]+)</b>', kpis))
    assert (shown["open_rate"], shown["human_open_rate"]) == ("100.00 %", "33.33 %")
    assert (shown["click_through_rate"], shown["human_click_through_rate"]) == ("66.67 %", "33.33 %")
    assert "Open rate without machines" in kpis and "1 unique · 1 clicks · estimate" in kpis

    listing = client.get("/").text
    row = listing[listing.index(f'<tr data-delivery="{delivery_id}">') :]
    row = row[: row.index("</tr>")]
    assert '<td class="num" data-kpi="human_open_rate">33.33 %</td>' in row
    assert '<td class="num" data-kpi="human_click_through_rate">33.33 %</td>' in row
    assert "Open rate without machines" in listing


def test_complaints_and_the_bounce_breakdown_in_json_list_and_page(campaign_db, client, ready_delivery) -> None:
    # Fresh-user finding: the complaint rate and the hard/soft/errors split were computed and
    # stored but shown nowhere in the Deployment view.
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=4)
    recipients = _profiles_of(engine, delivery_id)
    _log_and_track(engine, delivery_id, recipients)  # recipient 2 bounced
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE broad_logs SET failure_type = 'soft' WHERE delivery_id = :d AND status = 'bounced'"),
            {"d": delivery_id},
        )
        conn.execute(
            text("UPDATE broad_logs SET status = 'failed' WHERE delivery_id = :d AND profile_id = :p"),
            {"d": delivery_id, "p": recipients[3]},
        )
        conn.execute(
            sql("insert_complaint_event"),
            {"delivery_id": delivery_id, "profile_id": recipients[0], "user_agent": None, "event_at": T0},
        )
    stats.compute_kpis(engine, delivery_id)

    [entry] = [d for d in client.get("/api/deliveries").json()["deliveries"] if d["id"] == delivery_id]
    kpis = entry["kpis"]
    assert (kpis["delivered"], kpis["hard_bounces"], kpis["soft_bounces"], kpis["errors"]) == (2, 0, 1, 1)
    assert (kpis["complaints"], kpis["complaint_rate"]) == (1, 0.5)
    assert client.get(f"/api/deliveries/{delivery_id}").json()["kpis"] == kpis

    page = client.get(f"/deliveries/{delivery_id}").text
    assert '<b data-kpi="complaint_rate">50.00 %</b><small>1 spam complaints' in page
    assert "2 recipients: 0 hard · 1 soft · 1 errors" in page
    listing = client.get("/").text
    row = listing[listing.index(f'<tr data-delivery="{delivery_id}">') :]
    assert '<td class="num" data-kpi="complaint_rate">50.00 %</td>' in row[: row.index("</tr>")]
