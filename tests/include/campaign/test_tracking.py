"""Tracked mail: links found and registered, HTML rewritten with signed URLs, and events recorded
only for genuine tokens of a delivery's own targets and links (on SQLite and PostgreSQL)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from testsupport import add_profile, start_confirmed_send

from campaign import deliveries as delivery_steps
from campaign.clock import utcnow
from campaign.db import make_engine
from campaign.dev.play_recipients import tracked_urls
from campaign.dev.smtp import connection_factory, running_server
from campaign.schema import broad_logs, delivery_links, delivery_targets, profiles, tracking_logs
from campaign.sending import send_chunk
from campaign.tokens import sign_token, tracking_secret, verify_token
from campaign.tracking import (
    MAX_USER_AGENT,
    Tracker,
    extract_links,
    load_links,
    record_click,
    record_open,
    record_unsubscribe,
    register_links,
)

SECRET = b"tracking-test-secret-0123456789"
BASE_URL = "https://track.test/campaign"
SALE = "https://shop.test/sale?utm=spring&x=1"
ACCOUNT = "http://shop.test/account"
ELSEWHERE = "https://elsewhere.test/phish"

TEMPLATE = f"""<html><body><p>Hello {{{{ profile.first_name }}}}</p>
<a href="https://shop.test/sale?utm=spring&amp;x=1">Sale</a>
<A class="button" HREF='{ACCOUNT}'>Account</A>
<a href="mailto:help@shop.test">Write to us</a>
<a href="/relative/page">Relative</a>
<a href="#top">Top</a>
<a href="https://shop.test/u/{{{{ profile.id }}}}">Your page</a>
<a href="https://shop.test/sale?utm=spring&amp;x=1">Sale again</a>
</body></html>"""

# ---------------------------------------------------------------- extract_links


def test_extract_links_finds_literal_http_links_in_order_once_each() -> None:
    assert extract_links(TEMPLATE) == [SALE, ACCOUNT]


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("", []),
        ("<p>No link at all</p>", []),
        ('<a href="mailto:a@shop.test">m</a><a href="tel:+331">t</a>', []),
        ('<a href="page.html">r</a><a href="//cdn.test/x">p</a><a href="ftp://shop.test/f">f</a>', []),
        ('<a href="https://shop.test/{{ profile.id }}">p</a>', []),
        ('<a href="https://shop.test/?a=1&amp;b=&quot;2&quot;">q</a>', ['https://shop.test/?a=1&b="2"']),
        ('<a title="x" href = " https://shop.test/padded ">p</a>', ["https://shop.test/padded"]),
        (
            '<a href="https://b.test/">b</a><a href="https://a.test/">a</a><a href="https://b.test/">b</a>',
            ["https://b.test/", "https://a.test/"],
        ),
    ],
)
def test_extract_links_cases(html: str, expected: list[str]) -> None:
    assert extract_links(html) == expected


# ---------------------------------------------------------------- a delivery with links and targets


@dataclass
class World:
    engine: Engine
    delivery: int  # targets: alice, bob; links SALE, ACCOUNT
    other: int  # another delivery; targets: alice, bob; link ELSEWHERE
    alice: int
    bob: int
    outsider: int  # a target of neither
    links: dict[str, int]
    other_links: dict[str, int]


def _prepared(engine: Engine, html: str) -> int:
    delivery_id = delivery_steps.create_delivery(
        engine,
        {"label": "Spring sale", "sender": "news@shop.test", "subject": "Hi", "text": "Hi\n", "html": html},
    )
    delivery_steps.prepare_delivery(engine, delivery_id, "alice")
    return delivery_id


@pytest.fixture
def world(campaign_db) -> World:
    engine = campaign_db.engine
    alice = add_profile(engine, "alice@example.test")
    bob = add_profile(engine, "bob@example.test")
    delivery = _prepared(engine, TEMPLATE)
    other = _prepared(engine, f'<a href="{ELSEWHERE}">Win</a>')
    outsider = add_profile(engine, "outsider@example.test")
    assert register_links(engine, delivery, TEMPLATE) == 2
    assert register_links(engine, other, f'<a href="{ELSEWHERE}">Win</a>') == 1
    return World(engine, delivery, other, alice, bob, outsider, load_links(engine, delivery), load_links(engine, other))


def _event_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.begin() as conn:
        rows = conn.execute(select(tracking_logs).order_by(tracking_logs.c.id)).mappings().all()
    return [dict(row) for row in rows]


def _event_count(engine: Engine) -> int:
    with engine.begin() as conn:
        return conn.execute(select(func.count()).select_from(tracking_logs)).scalar_one()


def _blocklisted(engine: Engine) -> dict[int, bool]:
    with engine.begin() as conn:
        return {row.id: row.blocklisted for row in conn.execute(select(profiles.c.id, profiles.c.blocklisted))}


# ---------------------------------------------------------------- register_links / load_links


def test_register_links_is_idempotent_and_load_links_maps_url_to_id(world: World) -> None:
    engine = world.engine
    assert set(world.links) == {SALE, ACCOUNT}

    assert register_links(engine, world.delivery, TEMPLATE) == 2
    assert register_links(engine, world.delivery, TEMPLATE) == 2

    with engine.begin() as conn:
        rows = conn.execute(
            select(delivery_links.c.id, delivery_links.c.url).where(delivery_links.c.delivery_id == world.delivery)
        ).all()
    assert {row.url: row.id for row in rows} == world.links
    assert len(rows) == 2
    assert load_links(engine, world.delivery) == world.links
    assert load_links(engine, world.other) == world.other_links == {ELSEWHERE: world.other_links[ELSEWHERE]}
    assert load_links(engine, world.other + 1000) == {}


def test_the_same_url_in_two_deliveries_gets_two_links(world: World) -> None:
    assert register_links(world.engine, world.other, TEMPLATE) == 2

    other_links = load_links(world.engine, world.other)
    assert set(other_links) == {ELSEWHERE, SALE, ACCOUNT}
    assert other_links[SALE] != world.links[SALE]
    assert load_links(world.engine, world.delivery) == world.links


def test_register_links_of_a_template_without_links_writes_nothing(world: World) -> None:
    assert register_links(world.engine, world.delivery, "<p>{{ profile.first_name }}</p>") == 0
    assert load_links(world.engine, world.delivery) == world.links


# ---------------------------------------------------------------- Tracker.rewrite

_HREF = re.compile(r"""<a\b[^>]*?\bhref\s*=\s*(["'])(.*?)\1""", re.IGNORECASE | re.DOTALL)
_PIXEL = re.compile(r'<img src="([^"]+)" width="1" height="1" alt="" style="border:0">')
_HIDDEN = re.compile(r'<a href="([^"]+)" style="display:none" aria-hidden="true" tabindex="-1"></a>')

RENDERED = f"""<html><body><p>Hello Alice</p>
<a href="https://shop.test/sale?utm=spring&amp;x=1">Sale</a>
<A class="button" HREF='{ACCOUNT}'>Account</A>
<a href="mailto:help@shop.test">Write to us</a>
<a href="https://shop.test/u/7">Your page</a>
</body></html>"""


def _token(url: str, prefix: str) -> str:
    assert url.startswith(prefix), url
    return url[len(prefix) :]


def test_rewrite_sends_every_registered_link_through_a_signed_click_url(world: World) -> None:
    tracker = Tracker(SECRET, BASE_URL, world.delivery, world.links)

    html = tracker.rewrite(RENDERED, world.alice)

    hrefs = [m.group(2) for m in _HREF.finditer(html)]
    assert len(hrefs) == 5  # the four of the mail, then the hidden link
    assert verify_token(SECRET, "hidden", _token(hrefs[4], f"{BASE_URL}/h/")) == (world.delivery, world.alice)
    sale_token, account_token = _token(hrefs[0], f"{BASE_URL}/c/"), _token(hrefs[1], f"{BASE_URL}/c/")
    assert verify_token(SECRET, "click", sale_token) == (world.delivery, world.alice, world.links[SALE])
    assert verify_token(SECRET, "click", account_token) == (world.delivery, world.alice, world.links[ACCOUNT])
    assert hrefs[2:4] == ["mailto:help@shop.test", "https://shop.test/u/7"]  # not registered: untouched
    assert "shop.test/sale" not in html
    assert f"HREF='{BASE_URL}/c/{account_token}'>Account</A>" in html  # its quotes kept
    assert "<p>Hello Alice</p>" in html


def test_rewrite_puts_the_open_pixel_before_the_end_of_the_body(world: World) -> None:
    tracker = Tracker(SECRET, BASE_URL, world.delivery, world.links)

    html = tracker.rewrite(RENDERED, world.bob)

    [pixel] = _PIXEL.findall(html)
    assert verify_token(SECRET, "open", _token(pixel, f"{BASE_URL}/o/")) == (world.delivery, world.bob)
    assert html.endswith(f'<img src="{pixel}" width="1" height="1" alt="" style="border:0"></body></html>')


def test_rewrite_appends_the_pixel_when_there_is_no_body(world: World) -> None:
    tracker = Tracker(SECRET, BASE_URL, world.delivery, world.links)

    html = tracker.rewrite(f'<p>Hi</p><a href="{ACCOUNT}">x</a>', world.alice)

    assert html.startswith(f'<p>Hi</p><a href="{BASE_URL}/c/')
    [pixel] = _PIXEL.findall(html)
    assert html.endswith(f'<img src="{pixel}" width="1" height="1" alt="" style="border:0">')
    assert verify_token(SECRET, "open", _token(pixel, f"{BASE_URL}/o/")) == (world.delivery, world.alice)


def test_rewrite_with_no_registered_link_only_adds_the_hidden_link_and_the_pixel(world: World) -> None:
    tracker = Tracker(SECRET, BASE_URL, world.delivery, {})

    html = tracker.rewrite(RENDERED, world.alice)

    [pixel] = _PIXEL.findall(html)
    [hidden] = _HIDDEN.findall(html)
    assert html == RENDERED.replace(
        "</body>",
        f'<a href="{hidden}" style="display:none" aria-hidden="true" tabindex="-1"></a>'
        f'<img src="{pixel}" width="1" height="1" alt="" style="border:0"></body>',
    )


def test_the_hidden_link_is_hidden_from_people_and_signed_for_its_own_purpose(world: World) -> None:
    # No text to see or read aloud, display:none, aria-hidden, out of the tab order: only a
    # machine following every anchor requests it (machine rule hidden_link).
    html = Tracker(SECRET, BASE_URL, world.delivery, world.links).rewrite(RENDERED, world.bob)

    [hidden] = _HIDDEN.findall(html)
    token = _token(hidden, f"{BASE_URL}/h/")
    assert verify_token(SECRET, "hidden", token) == (world.delivery, world.bob)
    assert verify_token(SECRET, "click", token) is None and verify_token(SECRET, "open", token) is None
    assert html.count("/h/") == 1 and hidden not in RENDERED


# ---------------------------------------------------------------- recording genuine events


def test_record_open_of_a_target(world: World) -> None:
    token = sign_token(SECRET, "open", world.delivery, world.alice)

    assert record_open(world.engine, SECRET, token, "Mail/1.0") is True

    [row] = _event_rows(world.engine)
    assert (row["delivery_id"], row["profile_id"], row["event_type"], row["link_id"], row["user_agent"]) == (
        world.delivery,
        world.alice,
        "open",
        None,
        "Mail/1.0",
    )
    assert row["event_at"] is not None


def test_record_click_returns_the_deliverys_own_url(world: World) -> None:
    token = sign_token(SECRET, "click", world.delivery, world.bob, world.links[SALE])

    assert record_click(world.engine, SECRET, token, "Browser") == SALE

    [row] = _event_rows(world.engine)
    assert (row["delivery_id"], row["profile_id"], row["event_type"], row["link_id"]) == (
        world.delivery,
        world.bob,
        "click",
        world.links[SALE],
    )


def test_record_unsubscribe_blocklists_the_profile(world: World) -> None:
    token = sign_token(SECRET, "unsubscribe", world.delivery, world.alice)

    assert record_unsubscribe(world.engine, SECRET, token, None) is True

    [row] = _event_rows(world.engine)
    assert (row["delivery_id"], row["profile_id"], row["event_type"], row["user_agent"]) == (
        world.delivery,
        world.alice,
        "unsubscribe",
        None,
    )
    assert _blocklisted(world.engine) == {world.alice: True, world.bob: False, world.outsider: False}


def test_a_second_unsubscribe_of_the_same_recipient_changes_nothing(world: World) -> None:
    token = sign_token(SECRET, "unsubscribe", world.delivery, world.alice)
    assert record_unsubscribe(world.engine, SECRET, token, "Mail/1.0") is True
    first = _event_rows(world.engine)

    assert record_unsubscribe(world.engine, SECRET, token, "Scanner/2.0") is True  # still a genuine token

    assert _event_rows(world.engine) == first
    assert _blocklisted(world.engine) == {world.alice: True, world.bob: False, world.outsider: False}


def test_concurrent_unsubscribes_of_one_recipient_record_one_event(world: World) -> None:
    # Mail clients and link scanners fire the one-click POST in parallel; the database decides.
    token = sign_token(SECRET, "unsubscribe", world.delivery, world.bob)
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def unsubscribe() -> None:
        barrier.wait()
        results.append(record_unsubscribe(world.engine, SECRET, token, None))

    threads = [threading.Thread(target=unsubscribe) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert results == [True] * 8
    assert [(r["profile_id"], r["event_type"]) for r in _event_rows(world.engine)] == [(world.bob, "unsubscribe")]
    assert _blocklisted(world.engine)[world.bob] is True


def test_unsubscribing_through_another_delivery_is_that_deliverys_event(world: World) -> None:
    for delivery in (world.delivery, world.other, world.delivery, world.other):
        assert record_unsubscribe(world.engine, SECRET, sign_token(SECRET, "unsubscribe", delivery, world.alice), None)

    assert [(r["delivery_id"], r["profile_id"]) for r in _event_rows(world.engine)] == [
        (world.delivery, world.alice),
        (world.other, world.alice),
    ]


def test_opens_and_clicks_are_recorded_every_time(world: World) -> None:
    # Only the unsubscribe is one per recipient: repeated opens and clicks are what the KPIs count.
    for _ in range(2):
        assert record_open(world.engine, SECRET, sign_token(SECRET, "open", world.delivery, world.alice), None)
        click = sign_token(SECRET, "click", world.delivery, world.alice, world.links[SALE])
        assert record_click(world.engine, SECRET, click, None) == SALE

    assert [r["event_type"] for r in _event_rows(world.engine)] == ["open", "click", "open", "click"]


def test_the_user_agent_is_stored_truncated(world: World) -> None:
    token = sign_token(SECRET, "open", world.delivery, world.bob)
    user_agents = ["x" * 600, "y" * MAX_USER_AGENT, "", None]

    for user_agent in user_agents:
        assert record_open(world.engine, SECRET, token, user_agent) is True

    assert [row["user_agent"] for row in _event_rows(world.engine)] == ["x" * 500, "y" * 500, None, None]


# ---------------------------------------------------------------- anything else writes nothing


def _genuine(world: World, purpose: str, delivery: int | None = None, profile: int | None = None) -> str:
    delivery = world.delivery if delivery is None else delivery
    profile = world.alice if profile is None else profile
    if purpose == "click":
        return sign_token(SECRET, "click", delivery, profile, world.links[SALE])
    return sign_token(SECRET, purpose, delivery, profile)


def _tampered(world: World, purpose: str) -> str:
    """Alice's genuine token with Bob's id put in place of hers."""
    token = _genuine(world, purpose)
    pieces = token.split(".")
    pieces[1] = str(world.bob)
    return ".".join(pieces)


def _forged(world: World, purpose: str) -> str:
    payload = _genuine(world, purpose).rsplit(".", 1)[0]
    return f"{payload}.{'0' * 32}"


def _wrong_purpose(world: World, purpose: str) -> str:
    return {
        "open": sign_token(SECRET, "unsubscribe", world.delivery, world.alice),
        "unsubscribe": sign_token(SECRET, "open", world.delivery, world.alice),
        "click": sign_token(SECRET, "open", world.delivery, world.alice),
    }[purpose]


def _other_secret(world: World, purpose: str) -> str:
    ids = (world.delivery, world.alice, world.links[SALE])[: 3 if purpose == "click" else 2]
    return sign_token(b"another-secret-of-enough-length", purpose, *ids)


BAD_TOKENS: dict[str, Callable[[World, str], str]] = {
    "forged": _forged,
    "tampered": _tampered,
    "truncated": lambda w, p: _genuine(w, p)[:-1],
    "mac_only": lambda w, p: _genuine(w, p).rsplit(".", 1)[1],
    "extra_field": lambda w, p: "1." + _genuine(w, p),
    "signed_with_another_secret": _other_secret,
    "other_purpose": _wrong_purpose,
    "not_a_target": lambda w, p: _genuine(w, p, profile=w.outsider),
    "unknown_delivery": lambda w, p: _genuine(w, p, delivery=w.other + 1000),
    "unknown_profile": lambda w, p: _genuine(w, p, profile=w.outsider + 1000),
    "empty": lambda w, p: "",
    "not_ascii_digit": lambda w, p: "\u0661." + _genuine(w, p).split(".", 1)[1],
}


def _record(world: World, purpose: str, token: str) -> Any:
    recorder = {"open": record_open, "click": record_click, "unsubscribe": record_unsubscribe}[purpose]
    return recorder(world.engine, SECRET, token, "Mail/1.0")


@pytest.mark.parametrize("purpose", ["open", "click", "unsubscribe"])
def test_a_bad_token_records_nothing(world: World, purpose: str) -> None:
    refused = None if purpose == "click" else False
    blocklisted = _blocklisted(world.engine)

    results = {case: _record(world, purpose, make(world, purpose)) for case, make in BAD_TOKENS.items()}

    assert results == dict.fromkeys(BAD_TOKENS, refused)
    assert _event_count(world.engine) == 0
    assert _blocklisted(world.engine) == blocklisted
    assert _record(world, purpose, _genuine(world, purpose)) not in (None, False)  # the same world accepts a good one
    assert _event_count(world.engine) == 1


def test_a_click_token_for_a_link_outside_its_delivery_records_nothing(world: World) -> None:
    cases = {
        "link_of_another_delivery": (world.delivery, world.alice, world.other_links[ELSEWHERE]),
        "own_link_under_another_delivery": (world.other, world.alice, world.links[SALE]),
        "unknown_link": (world.delivery, world.alice, max(world.other_links.values()) + 1000),
        "link_zero": (world.delivery, world.alice, 0),
    }

    results = {
        case: record_click(world.engine, SECRET, sign_token(SECRET, "click", *ids), "B") for case, ids in cases.items()
    }

    assert results == dict.fromkeys(cases)
    assert _event_count(world.engine) == 0


def test_a_genuine_token_of_the_other_delivery_goes_to_its_own_link(world: World) -> None:
    token = sign_token(SECRET, "click", world.other, world.bob, world.other_links[ELSEWHERE])

    assert record_click(world.engine, SECRET, token, None) == ELSEWHERE
    assert [(r["delivery_id"], r["link_id"]) for r in _event_rows(world.engine)] == [
        (world.other, world.other_links[ELSEWHERE])
    ]


def test_a_bad_token_after_genuine_ones_adds_no_row(world: World) -> None:
    assert record_open(world.engine, SECRET, _genuine(world, "open"), None) is True
    assert record_click(world.engine, SECRET, _genuine(world, "click", profile=world.bob), None) == SALE

    assert record_open(world.engine, SECRET, _genuine(world, "open", profile=world.outsider), None) is False
    assert record_click(world.engine, SECRET, _tampered(world, "click"), None) is None

    assert [(r["profile_id"], r["event_type"]) for r in _event_rows(world.engine)] == [
        (world.alice, "open"),
        (world.bob, "click"),
    ]


def test_only_the_href_attribute_of_an_anchor_is_tracked() -> None:
    html = '<a data-href="https://shop.test/data" href="https://shop.test/real">Real</a>'

    assert extract_links(html) == ["https://shop.test/real"]
    rewritten = Tracker(SECRET, BASE_URL, 1, {"https://shop.test/real": 5, "https://shop.test/data": 6}).rewrite(
        html, 2
    )
    [href, hidden] = re.findall(r'\shref="([^"]+)"', rewritten)
    assert hidden.startswith(f"{BASE_URL}/h/")
    assert verify_token(SECRET, "click", _token(href, f"{BASE_URL}/c/")) == (1, 2, 5)
    assert 'data-href="https://shop.test/data"' in rewritten


# ---------------------------------------------------------------- before the sending-log row is written

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def _verdicts(engine: Engine) -> list[tuple[int, str, bool | None, str | None]]:
    return [(r["profile_id"], r["event_type"], r["machine"], r["machine_rule"]) for r in _event_rows(engine)]


def _logged(engine: Engine, delivery: int, profile: int, seconds_ago: float) -> None:
    """The recipient's sending-log row, written ``seconds_ago``."""
    with engine.begin() as conn:
        seq = conn.execute(
            select(delivery_targets.c.seq).where(
                delivery_targets.c.delivery_id == delivery, delivery_targets.c.profile_id == profile
            )
        ).scalar_one()
        conn.execute(
            broad_logs.insert().values(
                delivery_id=delivery,
                profile_id=profile,
                seq=seq,
                email=f"{profile}@example.test",
                status="sent",
                logged_at=utcnow() - timedelta(seconds=seconds_ago),
            )
        )


def test_an_open_or_click_of_a_target_whose_row_is_not_written_yet_is_recorded_as_a_machines(world: World) -> None:
    """The relay accepted alice's message a moment ago and send_chunk has not committed her row:
    her pixel fetched now is a prefetch on arrival (rule before_send_logged), recorded, not
    dropped. Bob's row was written an hour ago: the same requests are a person's."""
    _logged(world.engine, world.delivery, world.bob, seconds_ago=3600)
    for profile in (world.alice, world.bob):
        assert record_open(world.engine, SECRET, sign_token(SECRET, "open", world.delivery, profile), FIREFOX)
        click = sign_token(SECRET, "click", world.delivery, profile, world.links[SALE])
        assert record_click(world.engine, SECRET, click, FIREFOX) == SALE
    assert record_open(world.engine, SECRET, sign_token(SECRET, "open", world.delivery, world.alice), "Mozilla/5.0")

    assert _verdicts(world.engine) == [
        (world.alice, "open", True, "before_send_logged"),
        (world.alice, "click", True, "before_send_logged"),
        (world.bob, "open", False, None),
        (world.bob, "click", False, None),
        (world.alice, "open", True, "apple_mpp_proxy"),  # what names the machine comes first
    ]

    _logged(world.engine, world.delivery, world.alice, seconds_ago=0.5)  # now committed: the time rules measure
    assert record_open(world.engine, SECRET, sign_token(SECRET, "open", world.delivery, world.alice), FIREFOX)
    assert _verdicts(world.engine)[-1] == (world.alice, "open", True, "open_after_send")


def test_pixels_fetched_as_the_mail_reaches_the_relay_are_machines_whatever_the_commit(
    campaign_db, tmp_path, add_profiles, new_delivery
) -> None:
    """The fresh user's test, in small: each pixel fetched with a browser's user agent as soon as
    the mail reached the relay (before it even answered: the row cannot be written yet), and again
    ten messages later (about a second at 36,000 an hour: the row written or not), through another
    engine, as the tracking service would. Every open is a machine's: before_send_logged while
    the row is missing, open_after_send once it is there; none is taken for a person."""
    engine = campaign_db.engine
    addresses = [f"r{i:02}@example.test" for i in range(40)]
    add_profiles(engine, addresses)
    delivery_id = new_delivery(engine, max_rate=36_000)
    delivery_steps.prepare_delivery(engine, delivery_id, prepared_by="alice")
    delivery_steps.approve_delivery(engine, delivery_id, approved_by="alice")
    start_confirmed_send(engine, delivery_id, "alice", "run-1")
    tracking_engine = make_engine(campaign_db.url)
    secret = tracking_secret()
    pixels: list[str] = []
    immediate: list[int] = []  # profile ids whose pixel was fetched on arrival
    problems: list[BaseException] = []

    def fetch(pixel: str, user_agent: str = FIREFOX) -> None:
        assert record_open(tracking_engine, secret, pixel.rsplit("/o/", 1)[1], user_agent)

    def on_message(_total: int, _peer: object) -> None:
        try:
            with server.lock:
                raw = server.received[-1].raw
            pixel, _links = tracked_urls(raw)
            pixels.append(pixel)
            immediate.append(verify_token(secret, "open", pixel.rsplit("/o/", 1)[1])[1])
            fetch(pixel)
            if len(pixels) > 10:
                fetch(pixels[-11])
        except BaseException as exc:  # the relay's thread: keep it for the test's own
            problems.append(exc)
            raise

    try:
        with running_server(tmp_path / "maildir") as (port, server):
            server.on_message = on_message
            result = send_chunk(engine, delivery_id, "run-1", 1, 40, connection_factory(port))
    finally:
        tracking_engine.dispose()

    assert not problems, problems
    assert result.counts == {"sent": 40}
    verdicts = _verdicts(engine)
    assert len(verdicts) == 40 + 30
    assert all(machine_ is True for _profile, _kind, machine_, _rule in verdicts), verdicts
    assert {rule for *_, rule in verdicts} <= {"before_send_logged", "open_after_send"}
    first_opens: dict[int, str] = {}
    for profile, _kind, _machine, rule in verdicts:
        first_opens.setdefault(profile, rule)
    assert sorted(first_opens) == sorted(immediate)
    assert set(first_opens.values()) == {"before_send_logged"}, "on arrival, before the relay answered"
