"""From a recipient's mail client to the KPI row: send, open and click over HTTP through the
tracking app, fold with tracking_rates_hourly, repair with compute_stats (dag.test, both databases);
people and machines (a privacy proxy, a link scanner, HEAD checks) told apart in the KPIs.
The tracking app is served both ways: mounted like the plugin mounts it, and as the standalone
tracking service (its own uvicorn process, given only the database URL and the secret)."""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from datetime import timedelta

import httpx
import pytest
import uvicorn
from e2e_support import DAGS_FOLDER, SPEC, kpi_row, received, run_with_answer, seed_delivery, task_states
from fastapi import FastAPI
from sqlalchemy import text
from testsupport import free_port

from campaign import machine, profiles
from campaign.clock import utcnow
from campaign.dev.play_recipients import tracked_urls
from campaign.dev.tracking_process import tracking_service
from campaign.tokens import tracking_secret
from campaign.web.tracking_app import create_app

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
TRACKED_SPEC = {
    **SPEC,
    "html": (
        "<html><body><p>Hello {{ profile.first_name }}</p>"
        '<a href="https://shop.test/sale?utm=mail&amp;x=1">Sale</a> '
        '<a href="https://shop.test/account">Account</a> '
        '<a href="https://shop.test/u/{{ profile.id }}">Personal</a></body></html>'
    ),
}


@pytest.fixture(params=["plugin", "service"])
def tracking_server(request, campaign_db, monkeypatch):
    """The tracking endpoints on a real HTTP port under /campaign, served each way; the mails'
    links point at them (CAMPAIGN_TRACKING_BASE_URL)."""
    if request.param == "service":
        with tracking_service(campaign_db.url, os.environ["CAMPAIGN_TRACKING_SECRET"], path="/campaign") as base_url:
            monkeypatch.setenv("CAMPAIGN_TRACKING_BASE_URL", base_url)
            yield base_url
        return
    port = free_port()
    root = FastAPI()
    root.mount("/campaign", create_app(lambda: campaign_db.engine, tracking_secret))
    server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    base_url = f"http://127.0.0.1:{port}/campaign"
    monkeypatch.setenv("CAMPAIGN_TRACKING_BASE_URL", base_url)
    yield base_url
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def stats_dags(airflow_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("CAMPAIGN_TRACKING_LAG_SECONDS", "0")  # read when the DAG file is parsed
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    return bag.get_dag("confirm_send"), bag.get_dag("tracking_rates_hourly"), bag.get_dag("compute_stats")


def tracking_rows(engine) -> int:
    with engine.begin() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM tracking_logs")).scalar_one()


def test_opens_and_clicks_reach_the_kpis(campaign_db, smtp_sink, tracking_server, stats_dags):
    confirm_send, hourly, compute_stats = stats_dags
    engine = campaign_db.engine
    audience = seed_delivery(engine, good=24, hard=1, spec=TRACKED_SPEC)
    assert run_with_answer(confirm_send, {"delivery_id": audience.delivery_id})[0].state == "success"

    mails = sorted(received(smtp_sink.maildir), key=lambda m: str(m["To"]))
    assert len(mails) == 24
    # The recipients read their mail an hour after the send: the time rules see a person, not a prefetch.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE broad_logs SET logged_at = :at WHERE delivery_id = :d"),
            {"at": utcnow() - timedelta(hours=1), "d": audience.delivery_id},
        )
    openers, clickers, clicks = set(), set(), 0
    with httpx.Client(follow_redirects=False, timeout=10, headers={"User-Agent": BROWSER}) as http:
        for index, mail in enumerate(mails):
            pixel, links = tracked_urls(mail.as_bytes())
            assert pixel.startswith(tracking_server + "/o/")
            assert len(links) == 2, "the two literal links are tracked, the personal one is not"
            html_part = mail.get_body(("html",)).get_content()
            assert "https://shop.test/u/" in html_part
            assert html_part.count(tracking_server + "/h/") == 1  # the hidden link, in the HTML only
            assert "/h/" not in mail.get_body(("plain",)).get_content()
            address = str(mail["To"])
            if index % 2 == 0:
                for _ in range(1 + index % 3):  # some open twice: one unique open
                    assert http.get(pixel).status_code == 200
                openers.add(address)
            if index % 3 == 0:  # some click without the pixel loading: a click proves an open
                response = http.get(links[0])
                assert response.status_code == 302
                assert response.headers["location"] == "https://shop.test/sale?utm=mail&x=1"
                clickers.add(address)
                clicks += 1
            if index % 5 == 0:
                if address in clickers:
                    time.sleep(machine.SAME_MOMENT_SECONDS + 0.1)  # a person takes longer than the moment
                assert http.get(links[1]).headers["location"] == "https://shop.test/account"
                clickers.add(address)
                clicks += 1
    human = (len(openers | clickers), len(clickers), clicks)

    # Machines: Apple's privacy proxy fetches two pixels (one of a person who opened too), a link
    # scanner follows the hidden link and both links at once, another checks a pixel and a link with HEAD.
    proxied, scanned, checked = str(mails[7]["To"]), str(mails[11]["To"]), str(mails[13]["To"])
    with httpx.Client(follow_redirects=False, timeout=10) as http:
        for index in (7, 2):
            pixel, _ = tracked_urls(mails[index].as_bytes())
            assert http.get(pixel, headers={"User-Agent": "Mozilla/5.0"}).status_code == 200
        html_part = mails[11].get_body(("html",)).get_content()
        hidden = re.search(r'href="([^"]+/h/[^"]+)"', html_part).group(1)
        _, links = tracked_urls(mails[11].as_bytes())
        for url in (hidden, *links):
            assert http.get(url, headers={"User-Agent": BROWSER}).status_code in (200, 302)
        pixel, links = tracked_urls(mails[13].as_bytes())
        assert http.head(pixel, headers={"User-Agent": BROWSER}).status_code == 200
        assert http.head(links[0], headers={"User-Agent": BROWSER}).status_code == 302
    everyone = (len(openers | clickers | {proxied, scanned, checked}), len(clickers | {scanned, checked}), clicks + 3)
    with engine.begin() as conn:
        rules = dict(
            conn.execute(
                text(
                    "SELECT machine_rule, COUNT(*) FROM tracking_logs WHERE delivery_id = :d AND machine "
                    "GROUP BY machine_rule"
                ),
                {"d": audience.delivery_id},
            ).all()
        )
    assert rules == {"apple_mpp_proxy": 2, "hidden_link": 3, "head_request": 2}  # told apart, each by its rule

    time.sleep(machine.SAME_MOMENT_SECONDS)  # the fold's lag is never under the machine rules' moment
    run = hourly.test()
    assert run.state == "success"
    kpis = kpi_row(engine, audience.delivery_id)
    unique_opens = everyone[0]
    assert (kpis["unique_opens"], kpis["unique_clicks"], kpis["clicks"]) == everyone
    assert (kpis["human_unique_opens"], kpis["human_unique_clicks"], kpis["human_clicks"]) == human
    assert kpis["delivered"] == 24
    assert kpis["open_rate"] == pytest.approx(unique_opens / 24)
    assert kpis["click_through_rate"] == pytest.approx(everyone[1] / 24)
    assert kpis["human_open_rate"] == pytest.approx(human[0] / 24)
    assert kpis["human_click_through_rate"] == pytest.approx(human[1] / 24)
    assert kpis["rates_updated_at"] is not None

    # A second run with no new event changes nothing.
    assert hourly.test().state == "success"
    assert kpi_row(engine, audience.delivery_id) | {"rates_updated_at": None} == kpis | {"rates_updated_at": None}

    # Events between two runs are counted once: a new opener, and an opener clicking.
    with httpx.Client(follow_redirects=False, timeout=10, headers={"User-Agent": BROWSER}) as http:
        late_pixel, _ = tracked_urls(mails[1].as_bytes())
        _, late_links = tracked_urls(mails[2].as_bytes())
        assert http.get(late_pixel).status_code == 200
        assert http.get(late_links[1]).status_code == 302
    time.sleep(machine.SAME_MOMENT_SECONDS)
    assert hourly.test().state == "success"
    after = kpi_row(engine, audience.delivery_id)
    late = {str(mails[1]["To"]), str(mails[2]["To"])}
    openers_after = openers | clickers | {proxied, scanned, checked} | late
    clickers_after = clickers | {scanned, checked} | {str(mails[2]["To"])}
    assert (after["unique_opens"], after["unique_clicks"], after["clicks"]) == (
        len(openers_after),
        len(clickers_after),
        clicks + 3 + 1,
    )
    human_after = (len(openers | clickers | late), len(clickers | {str(mails[2]["To"])}), clicks + 1)
    assert (after["human_unique_opens"], after["human_unique_clicks"], after["human_clicks"]) == human_after

    # Compute stats restores the figures after the stored row was corrupted.
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE delivery_kpis SET delivered = 3, unique_opens = 999, open_rate = 7.5, "
                "human_unique_opens = 0, human_open_rate = 0 WHERE delivery_id = :d"
            ),
            {"d": audience.delivery_id},
        )
    run = compute_stats.test(run_conf={"delivery_id": audience.delivery_id})
    assert run.state == "success"
    restored = kpi_row(engine, audience.delivery_id)
    assert (restored["delivered"], restored["unique_opens"], restored["clicks"]) == (
        24,
        len(openers_after),
        clicks + 3 + 1,
    )
    assert restored["open_rate"] == pytest.approx(len(openers_after) / 24)
    assert (restored["human_unique_opens"], restored["human_unique_clicks"], restored["human_clicks"]) == human_after
    assert restored["human_open_rate"] == pytest.approx(human_after[0] / 24)

    # The profile's history shows the delivery with its first open and first click.
    _, history = profiles.profile_history(engine, str(mails[0]["To"]))
    [entry] = history.to_dict("records")
    assert (entry["delivery_id"], entry["send_status"], entry["clicks"]) == (audience.delivery_id, "sent", 2)
    assert entry["first_open_at"] is not None and entry["first_click_at"] is not None


def test_forged_tokens_get_404_and_write_nothing(campaign_db, smtp_sink, tracking_server, stats_dags):
    confirm_send, _, _ = stats_dags
    engine = campaign_db.engine
    first = seed_delivery(engine, good=2, spec=TRACKED_SPEC)
    assert run_with_answer(confirm_send, {"delivery_id": first.delivery_id})[0].state == "success"
    second = seed_delivery(engine, good=2, spec={**TRACKED_SPEC, "html": '<a href="https://evil.test/">x</a>'})
    assert run_with_answer(confirm_send, {"delivery_id": second.delivery_id})[0].state == "success"
    mails = received(smtp_sink.maildir)
    pixel, links = next(tracked_urls(m.as_bytes()) for m in mails if m["X-Campaign-Delivery"] == str(first.delivery_id))
    other_pixel, other_links = next(
        tracked_urls(m.as_bytes()) for m in mails if m["X-Campaign-Delivery"] == str(second.delivery_id)
    )
    token = links[0].rsplit("/", 1)[1]
    delivery, profile, link, mac = token.split(".")
    other_link = other_links[0].rsplit("/", 1)[1].split(".")[2]
    base = tracking_server
    forged = [
        f"{base}/o/{pixel.rsplit('/', 1)[1][:-2]}",  # truncated
        f"{base}/o/{delivery}.{int(profile) + 1}.{pixel.rsplit('.', 1)[1]}",  # someone else's open
        f"{base}/c/{delivery}.{profile}.{other_link}.{mac}",  # another delivery's link, old mac
        f"{base}/c/{delivery}.{profile}.{link}.{'0' * len(mac)}",  # forged mac
        f"{base}/c/not-a-token",
        f"{base}/u/{token}",  # a click token is no unsubscribe token
    ]
    before = tracking_rows(engine)
    with httpx.Client(follow_redirects=False, timeout=10) as http:
        statuses = Counter(http.get(url).status_code for url in forged)
        statuses.update([http.post(f"{base}/u/{token}").status_code])
    assert statuses == Counter({404: len(forged) + 1})
    assert tracking_rows(engine) == before == 0
    assert other_pixel


def test_zero_delivered_gives_null_rates(campaign_db, smtp_sink, stats_dags):
    confirm_send, hourly, compute_stats = stats_dags
    engine = campaign_db.engine
    audience = seed_delivery(engine, good=0, hard=3, spec=TRACKED_SPEC)
    assert run_with_answer(confirm_send, {"delivery_id": audience.delivery_id})[0].state == "success"
    assert hourly.test().state == "success"
    run = compute_stats.test(run_conf={"delivery_id": audience.delivery_id})

    assert run.state == "success"
    assert task_states(run)["recompute_kpis"] == ["success"]
    kpis = kpi_row(engine, audience.delivery_id)
    assert (kpis["delivered"], kpis["hard_bounces"]) == (0, 3)
    assert kpis["open_rate"] is None and kpis["click_through_rate"] is None
    assert kpis["delivered_rate"] == 0.0
