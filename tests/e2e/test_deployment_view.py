"""The Deployment view on the real API server: authentication, pages, JSON API, links into it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from e2e_support import PASSWORDS, fresh_delivery, kpi_row
from sqlalchemy import select, text

from campaign import stats
from campaign.db import sql
from campaign.schema import delivery_targets

pytestmark = pytest.mark.airflow_server

PREFIX = "/campaign-deployment"
ENDPOINTS = [
    "/",
    "/deliveries/1",
    "/profiles",
    "/runs/x",
    "/api/deliveries",
    "/api/deliveries/1",
    "/api/profiles?email=a@b.c",
]


@pytest.fixture(scope="module")
def sent_delivery(live_airflow):
    spec = {
        "label": "Deployment view delivery",
        "sender": "Shop <news@shop.test>",
        "subject": "Hi {{ profile.first_name }}",
        "text": "Hello",
        "html": '<html><body><a href="https://shop.test/deals">Deals</a></body></html>',
    }
    audience = fresh_delivery(live_airflow.engine, good=9, hard=2, soft=0, spec=spec)
    run_id, run = live_airflow.confirmed_run("alice", {"delivery_id": audience.delivery_id})
    assert run["state"] == "success"
    return audience, run_id


def authed(live_airflow, path: str, **kwargs):
    token = live_airflow.token("carol")  # any authenticated user may read the view, a viewer too
    return live_airflow.http.get(PREFIX + path, headers={"Authorization": f"Bearer {token}"}, **kwargs)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_every_route_needs_a_login(live_airflow, path):
    response = live_airflow.http.get(PREFIX + path, follow_redirects=False)
    assert response.status_code == 401


def test_json_api_gives_the_figures_of_the_database(live_airflow, sent_delivery):
    audience, run_id = sent_delivery
    stored = kpi_row(live_airflow.engine, audience.delivery_id)

    listed = authed(live_airflow, "/api/deliveries").json()["deliveries"]
    entry = next(d for d in listed if d["id"] == audience.delivery_id)
    assert (entry["status"], entry["confirmed_by"], entry["run_id"]) == ("sent", "alice", run_id)
    assert entry["progress"] == {"processed": 11, "to_deliver": 11, "fraction": 1.0}
    assert entry["kpis"]["delivered"] == stored["delivered"] == 9
    assert entry["kpis"]["bounce_error_rate"] == pytest.approx(stored["bounce_error_rate"])

    detail = authed(live_airflow, f"/api/deliveries/{audience.delivery_id}").json()
    assert detail["kpis"] == entry["kpis"]
    assert detail["failure_reasons"] == [
        {
            "status": "bounced", "failure_type": "hard", "smtp_code": 550, "dsn_status": None,
            "reason": "recipient refused 5.1.1", "recipients": 2,
        }
    ]  # fmt: skip
    assert [(link["url"], link["clicks"]) for link in detail["links"]] == [("https://shop.test/deals", 0)]

    history = authed(live_airflow, "/api/profiles", params={"email": audience.good[0]}).json()
    assert history["profile"]["email"] == audience.good[0]
    assert [(h["delivery_id"], h["send_status"]) for h in history["deliveries"]] == [(audience.delivery_id, "sent")]


def test_unknown_things_get_404(live_airflow, sent_delivery):
    response = authed(live_airflow, "/api/deliveries/987654")
    assert (response.status_code, response.json()) == (404, {"detail": "Delivery 987654 does not exist."})
    assert authed(live_airflow, "/deliveries/987654").status_code == 404
    assert authed(live_airflow, "/api/profiles", params={"email": "nobody@nowhere.test"}).status_code == 404
    assert authed(live_airflow, "/runs/no-such-run").status_code == 404


def test_pages_show_progress_kpis_and_actions(live_airflow, sent_delivery):
    audience, run_id = sent_delivery
    listing = authed(live_airflow, "/")
    assert listing.status_code == 200
    assert f"{audience.delivery_id} · Deployment view delivery" in listing.text
    assert 'class="bar"' in listing.text and "81.82 %" in listing.text  # 9 of 11 delivered

    page = authed(live_airflow, f"/deliveries/{audience.delivery_id}")
    assert page.status_code == 200
    assert 'id="compute-stats"' in page.text and 'id="confirm-send"' not in page.text
    assert f"/dags/confirm_send/runs/{quote(run_id, safe='')}" in page.text
    assert "recipient refused" in page.text and "https://shop.test/deals" in page.text
    # Works offline: no script, stylesheet, font or image is fetched from anywhere (the charts'
    # url(#…) name their own clip paths, in the page).
    for external in ("<script src", "<link", "@import", "<img"):
        assert external not in page.text, external
    assert re.findall(r"url\((?!#)", page.text) == []

    redirect = authed(live_airflow, f"/runs/{quote(run_id, safe='')}", follow_redirects=False)
    assert redirect.status_code == 302
    assert redirect.headers["location"].endswith(f"{PREFIX}/deliveries/{audience.delivery_id}")


def test_airflow_links_to_the_view(live_airflow, sent_delivery):
    _, run_id = sent_delivery
    plugins = live_airflow.api("GET", "/plugins", "alice").json()["plugins"]
    campaign = next(p for p in plugins if p["name"] == "campaign")
    assert [view["href"] for view in campaign["external_views"]] == ["campaign-deployment/"]

    links = live_airflow.api(
        "GET", f"/dags/confirm_send/dagRuns/{run_id}/taskInstances/aggregate_kpis/links", "alice"
    ).json()
    assert links["extra_links"]["Delivery page"] == f"{PREFIX}/runs/{quote(run_id, safe='')}"


def test_a_browser_logs_in_and_finds_the_kpis(live_airflow, sent_delivery, browser, artifacts):
    audience, _ = sent_delivery
    stored = kpi_row(live_airflow.engine, audience.delivery_id)
    page = browser.new_page(viewport={"width": 1366, "height": 860})
    target = f"{live_airflow.base_url}{PREFIX}/"

    page.goto(f"{live_airflow.base_url}/auth/login/?next={quote(target, safe='')}")
    page.fill("input[name=username]", "bob")
    page.fill("input[name=password]", PASSWORDS["bob"])
    page.keyboard.press("Enter")
    page.wait_for_url(target, timeout=30_000)

    row = page.locator(f"tr[data-delivery='{audience.delivery_id}']")
    assert "Deployment view delivery" in row.inner_text()
    assert f"{stored['delivered_rate'] * 100:.2f} %" in row.inner_text()

    row.get_by_role("link").click()
    page.wait_for_url(f"**{PREFIX}/deliveries/{audience.delivery_id}")
    shown = {name: page.locator(f"[data-kpi='{name}']").inner_text() for name in ("to_deliver", "delivered")}
    assert shown == {"to_deliver": str(stored["to_deliver"]), "delivered": str(stored["delivered"])}
    assert page.locator("[data-kpi='bounce_error_rate']").inner_text() == f"{stored['bounce_error_rate'] * 100:.2f} %"
    page.screenshot(path=str(artifacts / "deployment-delivery.png"), full_page=True)

    # Compute stats goes through Airflow's own REST API with the browser's session: the run is bob's.
    page.locator("#compute-stats").click()
    page.wait_for_function("document.getElementById('message').textContent.length > 0", timeout=30_000)
    message = page.locator("#message").inner_text()
    assert message.startswith("compute_stats started: run "), message
    run_id = message.removeprefix("compute_stats started: run ")
    run = live_airflow.api("GET", f"/dags/compute_stats/dagRuns/{run_id}", "alice").json()
    assert (run["triggering_user_name"], run["conf"]) == ("bob", {"delivery_id": audience.delivery_id})
    page.close()


# A send of 580 recipients over six minutes (a slow start, a 550 burst in the third minute, a few
# addresses ignored and failed), then opens and clicks over the six hours after it.
CHART_T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
CHART_MINUTES = [  # per minute: sent, bounced, failed, ignored
    (40, 1, 0, 1),
    (120, 2, 1, 0),
    (95, 30, 0, 2),
    (140, 3, 1, 0),
    (110, 2, 0, 1),
    (31, 0, 0, 0),
]
CHART_HOURS = [(160, 40), (85, 18), (40, 9), (22, 4), (12, 2), (6, 1)]  # per hour: opens, clicks


@pytest.fixture(scope="module")
def charted_delivery(live_airflow):
    """A delivery sent, as its sending logs and tracking events say, at CHART_T0 (written into the
    live Airflow's campaign database through the product's own inserts)."""
    engine = live_airflow.engine
    size = sum(sum(minute) for minute in CHART_MINUTES)
    audience = fresh_delivery(engine, good=size, spec={
        "label": "Charts delivery", "sender": "Shop <news@shop.test>", "subject": "Hi", "text": "Hello",
        "html": '<html><body><a href="https://shop.test/deals">Deals</a></body></html>',
    })  # fmt: skip
    delivery_id = audience.delivery_id
    with engine.begin() as conn:
        mine = delivery_targets.c.delivery_id == delivery_id
        targets = iter(conn.execute(select(delivery_targets).where(mine).order_by(delivery_targets.c.seq)).all())
        profile_ids = []
        for minute, counts in enumerate(CHART_MINUTES):
            named = zip(("sent", "bounced", "failed", "ignored"), counts, strict=True)
            outcomes = [status for status, n in named for _ in range(n)]
            for i, status in enumerate(outcomes):
                target = next(targets)
                profile_ids.append(target.profile_id)
                conn.execute(sql("insert_broad_log"), {
                    "delivery_id": delivery_id, "profile_id": target.profile_id, "seq": target.seq,
                    "email": target.email, "status": status, "failure_type": "hard" if status == "bounced" else None,
                    "reason": "recipient refused" if status == "bounced" else None,
                    "smtp_code": 550 if status == "bounced" else 250, "smtp_reply": None, "message_id": None,
                    "attempts": 1, "worker": "e2e:1", "run_id": None,
                    "logged_at": CHART_T0 + timedelta(minutes=minute, seconds=60 * i / len(outcomes)),
                })  # fmt: skip
        for hour, (opens, clicks) in enumerate(CHART_HOURS):
            for i, event_type in enumerate(["open"] * opens + ["click"] * clicks):
                conn.execute(sql("insert_tracking_event"), {
                    "delivery_id": delivery_id, "profile_id": profile_ids[i], "event_type": event_type,
                    "link_id": None, "user_agent": "e2e",
                    "event_at": CHART_T0 + timedelta(hours=hour, minutes=7 + i % 50),
                })  # fmt: skip
        conn.execute(
            text("UPDATE deliveries SET status = 'sent', confirmed_by = 'alice', confirmed_at = :t0, "
                 "finished_at = :end WHERE id = :id"),
            {"t0": CHART_T0, "end": CHART_T0 + timedelta(minutes=6), "id": delivery_id},
        )  # fmt: skip
    stats.compute_kpis(engine, delivery_id)
    stats.fold_new_events(engine, lag_seconds=0)
    return delivery_id


def test_a_browser_sees_the_delivery_charts(live_airflow, charted_delivery, browser, artifacts):
    delivery_id = charted_delivery
    page = browser.new_page(viewport={"width": 1366, "height": 860})
    target = f"{live_airflow.base_url}{PREFIX}/deliveries/{delivery_id}"
    page.goto(f"{live_airflow.base_url}/auth/login/?next={quote(target, safe='')}")
    page.fill("input[name=username]", "bob")
    page.fill("input[name=password]", PASSWORDS["bob"])
    page.keyboard.press("Enter")
    page.wait_for_url(target, timeout=30_000)

    section = page.locator("section#charts")
    for chart_id, title, description in (
        ("messages", "Messages processed per minute, by outcome",
         "6 minutes from 2026-11-27T09:00 UTC: sent 536, bounced 38, failed 2, ignored 4."),
        ("events", "Opens and clicks per hour since the send",
         "6 hours from 2026-11-27T09:00 UTC: 325 open events, 74 click events."),
    ):  # fmt: skip
        chart = section.locator(f"svg#{chart_id}-chart")
        chart.wait_for(state="visible")
        assert page.locator(f"#{chart_id}-title").text_content() == title
        assert page.locator(f"#{chart_id}-desc").text_content() == description
        box = chart.bounding_box()
        assert box["width"] > 500 and box["height"] > 150, box  # drawn at its size, not collapsed
    for status in ("sent", "bounced", "failed", "ignored"):
        assert section.locator(f"#messages-series-{status}").count() == 1
    assert section.locator("#messages-series-cancelled").count() == 0
    assert "not unique recipients" in section.inner_text()

    section.screenshot(path=str(artifacts / "delivery-charts.png"))
    page.close()
