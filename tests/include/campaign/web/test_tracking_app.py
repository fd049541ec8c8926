"""The public tracking endpoints over real HTTP: open pixel, click redirect, hidden link,
unsubscribe page and form; forged tokens get 404 and write nothing; every machine rule on real
requests (campaign.machine).

Each test of the ``site`` fixture runs both ways the endpoints are served, on both databases:
``plugin``, the app as the Airflow plugin mounts it under /campaign (uvicorn on a loopback port,
in this process), and ``service``, the standalone tracking service (``campaign.web.tracking_service``)
as its own uvicorn process given nothing but its environment variables."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace
from urllib.parse import urljoin

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, func, make_url, select, text
from sqlalchemy.exc import ProgrammingError
from testsupport import add_profile, free_port

from campaign import deliveries as delivery_steps
from campaign import machine
from campaign.clock import utcnow
from campaign.db import make_engine
from campaign.dev.tracking_process import tracking_service
from campaign.schema import broad_logs, grant_tracking_role, profiles, tracking_logs
from campaign.tokens import sign_token
from campaign.tracking import load_links, register_links
from campaign.web.tracking_app import create_app

SECRET = b"tracking-app-test-secret-0123456789"
SALE = "https://shop.test/sale?utm=spring&x=1"
ACCOUNT = "https://shop.test/account"
ELSEWHERE = "https://elsewhere.test/phish"
HTML = '<html><body><a href="https://shop.test/sale?utm=spring&amp;x=1">Sale</a><a href="{account}">A</a></body></html>'
AGENT = "CampaignTestMail/1.0"

# ---------------------------------------------------------------- a real HTTP server


@contextmanager
def _serve(app) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError(f"the tracking app did not start on port {port}") from None
            time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# The two ways the endpoints are served: by the plugin in Airflow's API server, and on their own.
WAYS = ("plugin", "service")
PLUGIN_PREFIX = "/campaign"  # plugins/campaign_plugin.py


@contextmanager
def _mounted_like_the_plugin(app) -> Iterator[str]:
    """The app under /campaign of a root app, as Airflow's API server mounts the plugin's."""
    root = FastAPI()
    root.mount(PLUGIN_PREFIX, app)
    with _serve(root) as server_url:
        yield server_url + PLUGIN_PREFIX


@dataclass
class Site:
    engine: Engine
    http: httpx.Client
    base_url: str  # the endpoints' base: http://127.0.0.1:<port>/campaign
    provider_calls: list[int] | None  # engine look-ups of the plugin's app; None for the service
    delivery: int  # targets alice and bob; links SALE, ACCOUNT
    other: int  # targets alice and bob; link ELSEWHERE
    alice: int
    bob: int
    outsider: int  # a target of neither
    links: dict[str, int]
    other_links: dict[str, int]

    def click(self, link: str, profile: int | None = None) -> str:
        return sign_token(SECRET, "click", self.delivery, profile or self.alice, self.links[link])

    def open(self, profile: int | None = None) -> str:
        return sign_token(SECRET, "open", self.delivery, profile or self.alice)

    def unsubscribe(self, profile: int | None = None) -> str:
        return sign_token(SECRET, "unsubscribe", self.delivery, profile or self.alice)


def _prepared(engine: Engine, html: str) -> int:
    spec = {"label": "Spring sale", "sender": "news@shop.test", "subject": "Hi", "text": "Hi\n", "html": html}
    delivery_id = delivery_steps.create_delivery(engine, spec)
    delivery_steps.prepare_delivery(engine, delivery_id, "alice")
    register_links(engine, delivery_id, html)
    return delivery_id


@contextmanager
def _site(database, way: str = "plugin", provider: Callable[[], Engine] | None = None) -> Iterator[Site]:
    """Two prepared deliveries in ``database`` (the ``campaign_db`` fixture's), served ``way``."""
    engine = database.engine
    alice = add_profile(engine, "alice@example.test")
    bob = add_profile(engine, "bob@example.test")
    delivery = _prepared(engine, HTML.format(account=ACCOUNT))
    other = _prepared(engine, f'<a href="{ELSEWHERE}">Win</a>')
    outsider = add_profile(engine, "outsider@example.test")
    calls: list[int] = []

    def counting_provider() -> Engine:
        calls.append(1)
        return provider() if provider else engine

    if way == "plugin":
        serving = _mounted_like_the_plugin(create_app(counting_provider, lambda: SECRET))
    else:
        assert provider is None, "the service makes its engine from CAMPAIGN_DB_URL"
        serving = tracking_service(database.url, SECRET.decode(), path=PLUGIN_PREFIX)
    with (
        serving as base_url,
        httpx.Client(base_url=base_url, follow_redirects=False, timeout=10, headers={"User-Agent": AGENT}) as http,
    ):
        yield Site(
            engine,
            http,
            base_url,
            calls if way == "plugin" else None,
            delivery,
            other,
            alice,
            bob,
            outsider,
            load_links(engine, delivery),
            load_links(engine, other),
        )


@pytest.fixture(params=WAYS)
def site(request: pytest.FixtureRequest, campaign_db) -> Iterator[Site]:
    """The endpoints served each way (``WAYS``), on each database."""
    with _site(campaign_db, request.param) as site:
        yield site


@pytest.fixture
def plugin_site(sqlite_db) -> Iterator[Site]:
    """The plugin's app alone: for what only it has, an engine provider made once on first use."""
    with _site(sqlite_db) as site:
        yield site


def _rows(engine: Engine) -> list[tuple]:
    with engine.begin() as conn:
        return [
            (row.delivery_id, row.profile_id, row.event_type, row.link_id, row.user_agent)
            for row in conn.execute(select(tracking_logs).order_by(tracking_logs.c.id))
        ]


def _verdicts(engine: Engine) -> list[tuple[bool | None, str | None]]:
    with engine.begin() as conn:
        return [
            (row.machine, row.machine_rule)
            for row in conn.execute(
                select(tracking_logs.c.machine, tracking_logs.c.machine_rule).order_by(tracking_logs.c.id)
            )
        ]


def _count(engine: Engine) -> int:
    with engine.begin() as conn:
        return conn.execute(select(func.count()).select_from(tracking_logs)).scalar_one()


def _blocklisted(engine: Engine) -> dict[int, bool]:
    with engine.begin() as conn:
        return {row.id: row.blocklisted for row in conn.execute(select(profiles.c.id, profiles.c.blocklisted))}


def _assert_not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, (response.request.method, response.request.url, response.status_code)
    assert response.text == "Not found"
    assert "location" not in response.headers
    assert "no-store" in response.headers["cache-control"]


# ---------------------------------------------------------------- genuine tokens


def test_open_pixel_returns_a_transparent_gif_and_records_the_open(site: Site) -> None:
    response = site.http.get(f"/o/{site.open(site.bob)}")

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content.startswith(b"GIF89a")
    assert response.content[6:10] == b"\x01\x00\x01\x00"  # 1 x 1
    assert "no-store" in response.headers["cache-control"]
    assert _rows(site.engine) == [(site.delivery, site.bob, "open", None, AGENT)]


def test_click_redirects_to_the_registered_url_and_records_the_click(site: Site) -> None:
    response = site.http.get(f"/c/{site.click(SALE)}")

    assert response.status_code == 302
    assert response.headers["location"] == SALE
    assert "no-store" in response.headers["cache-control"]
    assert _rows(site.engine) == [(site.delivery, site.alice, "click", site.links[SALE], AGENT)]

    response = site.http.get(f"/c/{site.click(ACCOUNT, site.bob)}")
    assert (response.status_code, response.headers["location"]) == (302, ACCOUNT)
    assert _count(site.engine) == 2


def test_unsubscribe_page_shows_a_form_and_changes_nothing(site: Site) -> None:
    token = site.unsubscribe()
    blocklisted = _blocklisted(site.engine)

    response = site.http.get(f"/u/{token}")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>Unsubscribe</title>" in response.text
    assert f'<form method="post" action="{token}"><button type="submit">Unsubscribe</button></form>' in response.text
    assert _count(site.engine) == 0
    assert _blocklisted(site.engine) == blocklisted


def test_unsubscribe_form_post_records_and_blocklists(site: Site) -> None:
    page_url = f"{site.base_url}/u/{site.unsubscribe(site.bob)}"
    page = site.http.get(page_url)
    action = re.search(r'<form method="post" action="([^"]+)">', page.text).group(1)

    response = site.http.post(urljoin(page_url, action))  # where a browser submits the form

    assert response.status_code == 200
    assert "You are unsubscribed" in response.text
    assert "no-store" in response.headers["cache-control"]
    assert _rows(site.engine) == [(site.delivery, site.bob, "unsubscribe", None, AGENT)]
    assert _blocklisted(site.engine) == {site.alice: False, site.bob: True, site.outsider: False}


def test_a_second_one_click_post_changes_nothing(site: Site) -> None:
    url = f"/u/{site.unsubscribe(site.bob)}"
    first = site.http.post(url)
    rows = _rows(site.engine)

    second = site.http.post(url, headers={"User-Agent": "LinkScanner/3.0"})

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.text == first.text
    assert _rows(site.engine) == rows == [(site.delivery, site.bob, "unsubscribe", None, AGENT)]
    assert _blocklisted(site.engine) == {site.alice: False, site.bob: True, site.outsider: False}


# ---------------------------------------------------------------- HEAD: link scanners, not people


def test_head_on_the_unsubscribe_page_answers_like_get_and_changes_nothing(site: Site) -> None:
    url = f"/u/{site.unsubscribe()}"
    page = site.http.get(url)

    response = site.http.head(url)

    assert response.status_code == 200
    assert response.content == b""
    for header in ("content-type", "content-length", "cache-control"):
        assert response.headers[header] == page.headers[header], header
    assert _count(site.engine) == 0
    assert _blocklisted(site.engine)[site.alice] is False


def test_head_on_the_pixel_and_a_click_answers_like_get_and_records_a_machine(site: Site) -> None:
    _sent(site, site.alice, seconds_ago=3600)
    _sent(site, site.bob, seconds_ago=3600)  # so that the GET below is judged a person's
    pixel = site.http.head(f"/o/{site.open()}")
    click = site.http.head(f"/c/{site.click(SALE, site.bob)}")

    assert (pixel.status_code, pixel.headers["content-type"], pixel.content) == (200, "image/gif", b"")
    assert pixel.headers["content-length"] == str(len(site.http.get(f"/o/{site.open(site.bob)}").content))
    assert (click.status_code, click.headers["location"], click.content) == (302, SALE, b"")
    assert "no-store" in pixel.headers["cache-control"] and "no-store" in click.headers["cache-control"]
    assert _rows(site.engine) == [
        (site.delivery, site.alice, "open", None, AGENT),
        (site.delivery, site.bob, "click", site.links[SALE], AGENT),
        (site.delivery, site.bob, "open", None, AGENT),
    ]
    # every request of the pixel and links is in "all opens"; the HEADs are machines', the GET a person's
    assert _verdicts(site.engine) == [(True, "head_request"), (True, "head_request"), (False, None)]


@pytest.mark.parametrize(("prefix", "purpose"), [("o", "open"), ("c", "click"), ("u", "unsubscribe")])
def test_head_with_a_bad_token_is_404(site: Site, prefix: str, purpose: str) -> None:
    bad = _bad_tokens(site, purpose)
    if purpose == "unsubscribe":  # the page checks the signature only, as its GET does
        signature_cases = ("forged", "tampered", "truncated", "other_secret", "other_purpose", "garbage")
        bad = {case: bad[case] for case in signature_cases}

    statuses = {case: site.http.head(f"/{prefix}/{token}").status_code for case, token in bad.items()}

    assert statuses == dict.fromkeys(bad, 404)
    assert _count(site.engine) == 0


# ---------------------------------------------------------------- forged tokens and open redirects


def _bad_tokens(site: Site, purpose: str) -> dict[str, str]:
    ids = [site.delivery, site.alice] + ([site.links[SALE]] if purpose == "click" else [])
    good = sign_token(SECRET, purpose, *ids)
    payload, mac = good.rsplit(".", 1)
    other_purpose = "open" if purpose != "open" else "unsubscribe"
    return {
        "forged": f"{payload}.{'f' * 32}",
        "tampered": ".".join([str(site.delivery), str(site.bob), *payload.split(".")[2:], mac]),
        "truncated": good[:-2],
        "other_secret": sign_token(b"not-the-tracking-secret-at-all", purpose, *ids),
        "other_purpose": sign_token(SECRET, other_purpose, site.delivery, site.alice),
        "not_a_target": sign_token(SECRET, purpose, site.delivery, site.outsider, *ids[2:]),
        "unknown_delivery": sign_token(SECRET, purpose, site.other + 1000, site.alice, *ids[2:]),
        "garbage": "hello",
    }


@pytest.mark.parametrize(
    ("method", "prefix", "purpose"), [("GET", "o", "open"), ("GET", "c", "click"), ("POST", "u", "unsubscribe")]
)
def test_bad_tokens_get_404_and_write_nothing(site: Site, method: str, prefix: str, purpose: str) -> None:
    blocklisted = _blocklisted(site.engine)

    statuses = {
        case: site.http.request(method, f"/{prefix}/{token}").status_code
        for case, token in _bad_tokens(site, purpose).items()
    }

    assert statuses == dict.fromkeys(statuses, 404)
    _assert_not_found(site.http.request(method, f"/{prefix}/{_bad_tokens(site, purpose)['forged']}"))
    assert _count(site.engine) == 0
    assert _blocklisted(site.engine) == blocklisted


def test_unsubscribe_page_of_a_forged_token_is_404(site: Site) -> None:
    bad = _bad_tokens(site, "unsubscribe")

    for case in ("forged", "tampered", "truncated", "other_secret", "other_purpose", "garbage"):
        _assert_not_found(site.http.get(f"/u/{bad[case]}"))


def test_no_open_redirect_through_a_link_of_another_delivery(site: Site) -> None:
    foreign = {
        "link_of_another_delivery": (site.delivery, site.alice, site.other_links[ELSEWHERE]),
        "own_link_under_another_delivery": (site.other, site.alice, site.links[SALE]),
        "unknown_link": (site.delivery, site.alice, site.other_links[ELSEWHERE] + 1000),
    }

    for ids in foreign.values():
        _assert_not_found(site.http.get(f"/c/{sign_token(SECRET, 'click', *ids)}"))

    assert _count(site.engine) == 0
    own = site.http.get(f"/c/{sign_token(SECRET, 'click', site.other, site.bob, site.other_links[ELSEWHERE])}")
    assert (own.status_code, own.headers["location"]) == (302, ELSEWHERE)  # only with the other delivery's own token


def test_unknown_paths_and_methods_are_refused(site: Site) -> None:
    assert site.http.get("/").status_code == 404
    assert site.http.get("/c/").status_code == 404
    assert site.http.post(f"/o/{site.open()}").status_code == 405
    assert site.http.delete(f"/u/{site.unsubscribe()}").status_code == 405
    for path in ("/docs", "/redoc", "/openapi.json"):  # nothing describes the endpoints to a scanner
        assert site.http.get(path).status_code == 404, path
    assert _count(site.engine) == 0


# ---------------------------------------------------------------- the engine


def test_the_engine_is_made_once_on_first_use(plugin_site: Site) -> None:
    site = plugin_site
    assert site.provider_calls == []
    assert site.http.get(f"/u/{site.unsubscribe()}").status_code == 200  # shows a page, needs no database
    assert site.provider_calls == []

    for _ in range(5):
        assert site.http.get(f"/o/{site.open()}").status_code == 200
        assert site.http.get(f"/c/{site.click(SALE)}").status_code == 302
        assert site.http.get(f"/o/{'1.2.' + '0' * 32}").status_code == 404
    assert site.http.post(f"/u/{site.unsubscribe(site.bob)}").status_code == 200

    assert len(site.provider_calls) == 1
    assert _count(site.engine) == 11


def test_the_engine_is_made_once_under_concurrent_first_requests(sqlite_db) -> None:
    def slow_provider() -> Engine:
        time.sleep(0.25)  # making an engine takes time (Airflow connection lookup)
        return sqlite_db.engine

    with _site(sqlite_db, "plugin", slow_provider) as site:
        tokens = [site.open(site.alice), site.open(site.bob)] * 2
        barrier = threading.Barrier(len(tokens))
        statuses: list[int] = []

        def hit(token: str) -> None:
            with httpx.Client(base_url=site.base_url, timeout=10) as http:
                barrier.wait()
                statuses.append(http.get(f"/o/{token}").status_code)

        threads = [threading.Thread(target=hit, args=(t,)) for t in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)

        assert statuses == [200] * len(tokens)
        assert _count(site.engine) == len(tokens)
        assert len(site.provider_calls) == 1


def test_a_database_error_is_503_not_a_crash(sqlite_db, tmp_path) -> None:
    empty = make_engine(f"sqlite:///{tmp_path / 'no-schema.db'}")  # no tables: every query fails
    try:
        with _site(sqlite_db, "plugin", lambda: empty) as site:
            response = site.http.get(f"/o/{site.open()}")
            assert response.status_code == 503
            assert response.text == "Temporarily unavailable"
            assert site.http.get(f"/c/{site.click(SALE)}").status_code == 503
            assert site.http.get(f"/u/{site.unsubscribe()}").status_code == 200  # the page needs no database
            assert _count(sqlite_db.engine) == 0
    finally:
        empty.dispose()


# ---------------------------------------------------------------- both databases


def test_open_click_unsubscribe_on_each_database(site: Site) -> None:
    assert site.http.get(f"/o/{site.open()}").status_code == 200
    click = site.http.get(f"/c/{site.click(ACCOUNT)}")
    assert (click.status_code, click.headers["location"]) == (302, ACCOUNT)
    _assert_not_found(
        site.http.get(f"/c/{sign_token(SECRET, 'click', site.delivery, site.alice, site.other_links[ELSEWHERE])}")
    )
    assert site.http.post(f"/u/{site.unsubscribe(site.bob)}").status_code == 200

    assert _rows(site.engine) == [
        (site.delivery, site.alice, "open", None, AGENT),
        (site.delivery, site.alice, "click", site.links[ACCOUNT], AGENT),
        (site.delivery, site.bob, "unsubscribe", None, AGENT),
    ]
    assert _blocklisted(site.engine)[site.bob] is True
    assert site.provider_calls is None or len(site.provider_calls) == 1


# ---------------------------------------------------------------- machine opens and clicks (campaign.machine)

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
APPLE_MPP = "Mozilla/5.0"
YAHOO_PROXY = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"


def _sent(site: Site, profile: int, seconds_ago: float) -> None:
    """The recipient's sending-log row, written ``seconds_ago`` (the send the time rules measure from)."""
    with site.engine.begin() as conn:
        conn.execute(
            broad_logs.insert().values(
                delivery_id=site.delivery,
                profile_id=profile,
                seq=1 if profile == site.alice else 2,
                email=f"{profile}@example.test",
                status="sent",
                logged_at=utcnow() - timedelta(seconds=seconds_ago),
            )
        )


def _events(engine: Engine) -> list[tuple]:
    with engine.begin() as conn:
        return [
            (row.profile_id, row.event_type, row.link_id, row.machine, row.machine_rule)
            for row in conn.execute(select(tracking_logs).order_by(tracking_logs.c.id))
        ]


def _hidden(site: Site, profile: int | None = None) -> str:
    return sign_token(SECRET, "hidden", site.delivery, profile or site.alice)


@pytest.mark.parametrize(
    ("user_agent", "rule"),
    [
        (APPLE_MPP, "apple_mpp_proxy"),
        (YAHOO_PROXY, "yahoo_mail_proxy"),
        ("Barracuda Sentinel (EE)", "scanner_user_agent"),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/120.0.0.0 Safari/537.36",
            "headless_browser",
        ),
        ("python-requests/2.32.3", "bot_user_agent"),
        ("", "no_user_agent"),
        (GMAIL_PROXY, None),  # Gmail fetches through its proxy when the person opens the mail
        (BROWSER, None),
    ],
)
def test_user_agent_rules_on_real_requests(site: Site, user_agent: str, rule: str | None) -> None:
    _sent(site, site.alice, seconds_ago=3600)
    headers = {"User-Agent": user_agent}

    assert site.http.get(f"/o/{site.open()}", headers=headers).status_code == 200
    assert site.http.get(f"/c/{site.click(SALE)}", headers=headers).status_code == 302

    assert _events(site.engine) == [
        (site.alice, "open", None, rule is not None, rule),
        (site.alice, "click", site.links[SALE], rule is not None, rule),
    ]


def test_an_open_before_the_sending_log_row_is_written_is_a_machine(site: Site) -> None:
    # alice's message was accepted a moment ago, her row not committed yet; bob's an hour ago
    _sent(site, site.bob, seconds_ago=3600)
    headers = {"User-Agent": BROWSER}
    for profile in (site.alice, site.bob):
        assert site.http.get(f"/o/{site.open(profile)}", headers=headers).status_code == 200
        assert site.http.get(f"/c/{site.click(SALE, profile)}", headers=headers).status_code == 302

    assert _events(site.engine) == [
        (site.alice, "open", None, True, "before_send_logged"),
        (site.alice, "click", site.links[SALE], True, "before_send_logged"),
        (site.bob, "open", None, False, None),
        (site.bob, "click", site.links[SALE], False, None),
    ]


def test_opens_and_clicks_soon_after_the_send_are_machines(campaign_db) -> None:
    with _site(campaign_db) as site:
        _sent(site, site.alice, seconds_ago=2)  # just sent: a prefetch or a gateway's check
        _sent(site, site.bob, seconds_ago=20)  # an open now is a person's, a click not yet
        headers = {"User-Agent": BROWSER}
        for profile in (site.alice, site.bob):
            assert site.http.get(f"/o/{site.open(profile)}", headers=headers).status_code == 200
            assert site.http.get(f"/c/{site.click(SALE, profile)}", headers=headers).status_code == 302

        assert _events(campaign_db.engine) == [
            (site.alice, "open", None, True, "open_after_send"),
            (site.alice, "click", site.links[SALE], True, "click_after_send"),
            (site.bob, "open", None, False, None),
            (site.bob, "click", site.links[SALE], True, "click_after_send"),
        ]


def test_several_links_in_the_same_second_are_a_machine_the_earlier_click_too(campaign_db) -> None:
    with _site(campaign_db) as site:
        _sent(site, site.alice, seconds_ago=3600)
        _sent(site, site.bob, seconds_ago=3600)
        headers = {"User-Agent": BROWSER}
        # alice: a scanner following both links at once; bob: a double click on one link, then
        # the other link after the moment is over: a person
        assert site.http.get(f"/o/{site.open()}", headers=headers).status_code == 200
        assert site.http.get(f"/c/{site.click(SALE)}", headers=headers).status_code == 302
        assert site.http.get(f"/c/{site.click(ACCOUNT)}", headers=headers).status_code == 302
        for _ in range(2):
            assert site.http.get(f"/c/{site.click(SALE, site.bob)}", headers=headers).status_code == 302
        time.sleep(machine.SAME_MOMENT_SECONDS + 0.1)
        assert site.http.get(f"/c/{site.click(ACCOUNT, site.bob)}", headers=headers).status_code == 302

        assert _events(campaign_db.engine) == [
            (site.alice, "open", None, False, None),  # the cluster is of clicks
            (site.alice, "click", site.links[SALE], True, "same_second_clicks"),  # flagged afterwards
            (site.alice, "click", site.links[ACCOUNT], True, "same_second_clicks"),
            (site.bob, "click", site.links[SALE], False, None),
            (site.bob, "click", site.links[SALE], False, None),
            (site.bob, "click", site.links[ACCOUNT], False, None),
        ]


def test_the_hidden_link_marks_the_recipients_events_of_the_moment(campaign_db) -> None:
    with _site(campaign_db) as site:
        _sent(site, site.alice, seconds_ago=3600)
        _sent(site, site.bob, seconds_ago=3600)
        headers = {"User-Agent": BROWSER}
        assert site.http.get(f"/o/{site.open()}", headers=headers).status_code == 200  # before it
        assert site.http.get(f"/o/{site.open(site.bob)}", headers=headers).status_code == 200  # someone else

        hidden = site.http.get(f"/h/{_hidden(site)}", headers=headers)
        assert site.http.get(f"/c/{site.click(SALE)}", headers=headers).status_code == 302  # after it

        assert (hidden.status_code, hidden.content) == (200, b"")
        assert "no-store" in hidden.headers["cache-control"] and "location" not in hidden.headers
        assert _events(campaign_db.engine) == [
            (site.alice, "open", None, True, "hidden_link"),
            (site.bob, "open", None, False, None),
            (site.alice, "hidden_link", None, True, "hidden_link"),
            (site.alice, "click", site.links[SALE], True, "hidden_link"),
        ]
        # later, the person herself
        time.sleep(machine.SAME_MOMENT_SECONDS + 0.1)
        assert site.http.get(f"/c/{site.click(ACCOUNT)}", headers=headers).status_code == 302
        assert _events(campaign_db.engine)[-1] == (site.alice, "click", site.links[ACCOUNT], False, None)


def test_head_on_the_hidden_link_is_recorded_and_bad_hidden_tokens_get_404(site: Site) -> None:
    other_purpose = sign_token(SECRET, "open", site.delivery, site.alice)
    for token in (other_purpose, _hidden(site)[:-1], sign_token(SECRET, "hidden", site.delivery, site.outsider)):
        _assert_not_found(site.http.get(f"/h/{token}"))
        assert site.http.head(f"/h/{token}").status_code == 404
    assert _count(site.engine) == 0

    assert site.http.head(f"/h/{_hidden(site, site.bob)}").status_code == 200

    assert _events(site.engine) == [(site.bob, "hidden_link", None, True, "hidden_link")]


# ---------------------------------------------------------------- the least the service needs (PostgreSQL)


@pytest.mark.postgres
@pytest.mark.parametrize("way", WAYS)
def test_the_endpoints_work_with_only_the_tracking_roles_privileges(postgres_db, way: str) -> None:
    """The internet-facing service logs in as a role with grant_tracking_role's privileges only:
    every endpoint works (open, click, HEAD, the hidden link that flags earlier events,
    unsubscribe), and the role can read no address and change nothing else."""
    owner = postgres_db.engine
    role = f"tracker_{uuid.uuid4().hex[:12]}"
    with owner.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    grant_tracking_role(owner, role)
    url = make_url(postgres_db.url).set(username=role)
    restricted = make_engine(url)
    database = SimpleNamespace(engine=owner, url=url.render_as_string(hide_password=False))
    try:
        with _site(database, way, provider=(lambda: restricted) if way == "plugin" else None) as site:
            _sent(site, site.alice, seconds_ago=3600)
            assert site.http.get(f"/o/{site.open()}").status_code == 200
            assert site.http.head(f"/c/{site.click(ACCOUNT)}").status_code == 302
            assert site.http.get(f"/c/{site.click(ACCOUNT)}").status_code == 302
            hidden = sign_token(SECRET, "hidden", site.delivery, site.alice)
            assert site.http.get(f"/h/{hidden}").status_code in (200, 204, 302)
            assert site.http.post(f"/u/{site.unsubscribe(site.bob)}").status_code == 200

            events = _events(site.engine)
            assert [(kind, rule) for _, kind, _, _, rule in events] == [
                ("open", "hidden_link"), ("click", "head_request"), ("click", "hidden_link"),
                ("hidden_link", "hidden_link"), ("unsubscribe", None),
            ]  # fmt: skip
            assert _blocklisted(site.engine)[site.bob] is True
            delivery, alice = site.delivery, site.alice

        # Row-level security: it may add what its endpoints add, and undo nothing.
        with owner.begin() as conn:
            conn.execute(
                tracking_logs.insert().values(
                    delivery_id=delivery, profile_id=alice, event_type="open", event_at=utcnow() - timedelta(days=1)
                )
            )
        ids = {"d": delivery, "p": alice}
        values_refused = [
            "UPDATE profiles SET blocklisted = FALSE",  # everyone who unsubscribed mailable again
            # the complaint rate is the bounce mailbox's
            "INSERT INTO tracking_logs (delivery_id, profile_id, event_type, event_at) "
            "VALUES (:d, :p, 'complaint', now())",
            "UPDATE tracking_logs SET machine = FALSE",  # a machine verdict taken back
        ]
        for statement in values_refused:
            with pytest.raises(ProgrammingError, match="row-level security"), restricted.begin() as conn:
                conn.execute(text(statement), ids)
        with restricted.begin() as conn:  # yesterday's events are out of its reach
            stale = "UPDATE tracking_logs SET machine = TRUE WHERE event_at < now() - interval '1 hour'"
            assert conn.execute(text(stale)).rowcount == 0

        refused = [
            "SELECT email FROM delivery_targets",
            "SELECT email FROM broad_logs",
            "SELECT email FROM profiles",
            "SELECT user_agent FROM tracking_logs",
            "SELECT * FROM operators",
            "UPDATE deliveries SET label = 'x'",
            "UPDATE profiles SET email = 'x@example.test'",
            "DELETE FROM tracking_logs",
            "INSERT INTO operator_roles (operator_id, role, granted_at) VALUES (1, 'Start deliveries', now())",
        ]
        for statement in refused:
            with pytest.raises(ProgrammingError, match="permission denied"), restricted.begin() as conn:
                conn.execute(text(statement))
    finally:
        restricted.dispose()
