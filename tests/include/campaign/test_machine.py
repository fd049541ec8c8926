"""The machine rules as a table and the one function that applies them (campaign.machine):
every rule on real user agents and timings, their order, what is left human, README in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from campaign import machine, sending, stats
from campaign.machine import RULE_NAMES, RULES, Event, classify

ROOT = Path(__file__).resolve().parents[3]

# Real user agents, as the services and clients send them (see each rule's source).
APPLE_MPP = "Mozilla/5.0"
YAHOO_PROXY = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
APPLE_MAIL = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
OUTLOOK_DESKTOP = "Mozilla/4.0 (compatible; ms-office; MSOffice 16)"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36"
)


@pytest.mark.parametrize(
    ("user_agent", "rule"),
    [
        (APPLE_MPP, "apple_mpp_proxy"),
        (YAHOO_PROXY, "yahoo_mail_proxy"),
        ("Barracuda Sentinel (EE)", "scanner_user_agent"),
        ("Mozilla/5.0 (compatible; Proofpoint URL Defense)", "scanner_user_agent"),
        ("Mimecast URL Protect", "scanner_user_agent"),
        (HEADLESS, "headless_browser"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot_user_agent"),
        ("curl/8.5.0", "bot_user_agent"),
        ("python-requests/2.32.3", "bot_user_agent"),
        ("Go-http-client/1.1", "bot_user_agent"),
        (None, "no_user_agent"),
        ("", "no_user_agent"),
        # people, and the proxy that fetches when a person opens
        (APPLE_MAIL, None),
        (OUTLOOK_DESKTOP, None),
        (FIREFOX, None),
        (CHROME, None),
        (GMAIL_PROXY, None),
        ("Mozilla/5.0 (Linux; Android 13; CUBOT NOTE 7) AppleWebKit/537.36 Chrome/120 Mobile Safari/537.36", None),
    ],
)
@pytest.mark.parametrize("kind", ["open", "click"])
def test_user_agent_rules(user_agent: str | None, rule: str | None, kind: str) -> None:
    assert classify(Event(kind, user_agent=user_agent, seconds_since_send=3600)) == rule


def test_head_is_a_machine_whatever_the_user_agent() -> None:
    assert classify(Event("open", method="HEAD", user_agent=APPLE_MAIL)) == "head_request"
    assert classify(Event("click", method="head", user_agent=CHROME)) == "head_request"
    assert classify(Event("click", method="GET", user_agent=CHROME)) is None


def test_time_since_the_send() -> None:
    limit_open, limit_click = machine.OPEN_AFTER_SEND_SECONDS, machine.CLICK_AFTER_SEND_SECONDS
    assert classify(Event("open", user_agent=APPLE_MAIL, seconds_since_send=limit_open - 0.1)) == "open_after_send"
    assert classify(Event("open", user_agent=APPLE_MAIL, seconds_since_send=limit_open)) is None
    assert classify(Event("click", user_agent=CHROME, seconds_since_send=limit_click - 0.1)) == "click_after_send"
    assert classify(Event("click", user_agent=CHROME, seconds_since_send=limit_click)) is None
    # an open between the two limits is a person's; a click there is not
    assert classify(Event("open", user_agent=CHROME, seconds_since_send=limit_open + 1)) is None
    assert classify(Event("click", user_agent=CHROME, seconds_since_send=limit_open + 1)) == "click_after_send"
    assert classify(Event("open", user_agent=CHROME, seconds_since_send=None)) is None  # time unknown: no rule


@pytest.mark.parametrize("kind", ["open", "click"])
def test_a_target_without_its_sending_log_row_yet_was_sent_moments_ago(kind: str) -> None:
    """A fresh user's find: pixels fetched 0.014-0.45 s after the send, before send_chunk had
    committed the rows, were stored as a person's (290 of 403): without a row no time rule applied."""
    assert classify(Event(kind, user_agent=FIREFOX, send_logged=False)) == "before_send_logged"
    assert classify(Event(kind, user_agent=FIREFOX, seconds_since_send=3600)) is None
    # what names the machine comes first, as for the other timing rules
    assert classify(Event(kind, user_agent=APPLE_MPP, send_logged=False)) == "apple_mpp_proxy"
    assert classify(Event(kind, method="HEAD", user_agent=FIREFOX, send_logged=False)) == "head_request"
    assert classify(Event(kind, user_agent=FIREFOX, send_logged=False, hidden_link=True)) == "hidden_link"
    names = list(RULE_NAMES)
    assert names.index("no_user_agent") < names.index("before_send_logged") < names.index("open_after_send")


def test_a_row_not_written_yet_means_an_open_within_the_open_rule() -> None:
    # send_chunk commits each row within about a look at the controls; for before_send_logged to
    # say no more than open_after_send would, that must stay well inside the open rule's window.
    assert sending.CONTROL_CHECK_SECONDS < machine.OPEN_AFTER_SEND_SECONDS
    assert sending.CONTROL_CHECK_SECONDS < machine.CLICK_AFTER_SEND_SECONDS


def test_several_links_in_the_same_moment() -> None:
    late = 3600.0
    assert classify(Event("click", user_agent=CHROME, seconds_since_send=late, links_this_moment=1)) is None
    assert (
        classify(Event("click", user_agent=CHROME, seconds_since_send=late, links_this_moment=2))
        == "same_second_clicks"
    )
    assert classify(Event("open", user_agent=CHROME, seconds_since_send=late, links_this_moment=5)) is None


def test_the_hidden_link_comes_first_then_the_table_order() -> None:
    assert classify(Event("open", method="HEAD", user_agent=APPLE_MPP, hidden_link=True)) == "hidden_link"
    assert classify(Event("click", method="HEAD", user_agent=YAHOO_PROXY, seconds_since_send=0)) == "head_request"
    assert classify(Event("click", user_agent=YAHOO_PROXY, seconds_since_send=0)) == "yahoo_mail_proxy"
    assert classify(Event("click", user_agent=CHROME, seconds_since_send=0, links_this_moment=3)) == "click_after_send"
    assert RULE_NAMES.index("hidden_link") == 0


def test_only_opens_and_clicks_are_judged() -> None:
    with pytest.raises(ValueError, match="not 'unsubscribe'"):
        classify(Event("unsubscribe"))


def test_the_rules_table() -> None:
    assert len(set(RULE_NAMES)) == len(RULE_NAMES)
    assert all(len(name) <= 64 for name in RULE_NAMES)  # tracking_logs.machine_rule is String(64)
    for rule in RULES:
        assert rule.detects and rule.source and set(rule.events) <= {"open", "click"}, rule
    assert machine.SAME_MOMENT_SECONDS < stats.DEFAULT_LAG_SECONDS


def test_the_readme_shows_the_rules_table() -> None:
    assert machine.rules_table() in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_fold_lag_never_falls_under_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same-second and hidden-link rules flag a recipient's events of the last moment after
    # they were recorded: the fold must not have taken them yet.
    monkeypatch.setenv("CAMPAIGN_TRACKING_LAG_SECONDS", "0")
    assert stats.lag_seconds_from_env() == machine.SAME_MOMENT_SECONDS
    monkeypatch.setenv("CAMPAIGN_TRACKING_LAG_SECONDS", "45")
    assert stats.lag_seconds_from_env() == 45.0
    monkeypatch.delenv("CAMPAIGN_TRACKING_LAG_SECONDS")
    assert stats.lag_seconds_from_env() == stats.DEFAULT_LAG_SECONDS


def test_only_the_head_of_a_huge_user_agent_is_judged() -> None:
    """Fresh-user finding: a 20 KB user agent took 6.5 s of the tracking service's CPU (the
    pattern "\\w*bot/" backtracked quadratically on a long run of letters); 60 KB stalled it.
    The patterns now see the first MAX_JUDGED_USER_AGENT characters only, whatever arrives."""
    head = machine.MAX_JUDGED_USER_AGENT
    assert classify(Event(kind=machine.OPEN, user_agent="A" * head + " Googlebot/2.1")) is None
    assert classify(Event(kind=machine.OPEN, user_agent="Googlebot/2.1 " + "A" * 200_000)) == "bot_user_agent"
    assert classify(Event(kind=machine.CLICK, user_agent="Mozilla/5.0 " + "A" * 200_000)) is None
