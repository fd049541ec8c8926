"""The Deployment view on the real API server: authentication, pages, JSON API, links into it."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from e2e_support import PASSWORDS, fresh_delivery, kpi_row

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
        {"status": "bounced", "failure_type": "hard", "smtp_code": 550, "reason": "recipient refused", "recipients": 2}
    ]
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
    # Works offline: no script, stylesheet, font or image is fetched from anywhere.
    for external in ("<script src", "<link", "@import", "url(", "<img"):
        assert external not in page.text, external

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
