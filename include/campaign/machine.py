"""Machine opens and clicks: the rules that tell a proxy, prefetcher or link scanner from a person.

Every open and click event is classified once, when the tracking endpoint records it, by
``classify``: ``tracking_logs.machine`` is TRUE with the name of the first rule of ``RULES`` that
matched in ``tracking_logs.machine_rule``, or FALSE (and no rule) for an estimated human. Events
recorded before the rules existed have ``machine`` NULL and are counted as human: nothing says
otherwise. The KPIs show both figures side by side: all opens and clicks (every request of the
mail's pixel and visible links, people and machines), and those made by people.

The rules are data: the tables below (``RULES``, ``USER_AGENTS`` and the numbers under them) are
the one place to change them, and README's "Machine opens and clicks" repeats them. The sources
are public descriptions of each machine's behaviour; none of them is exact, which is why the
human figure is called an estimate.

Two rules look at a recipient's other events of the same moment (``SAME_MOMENT_SECONDS``): several
links clicked in the same second, and the hidden link. They flag the earlier events too, after
they were recorded. That is safe because the hourly fold only takes events older than its lag
(``CAMPAIGN_TRACKING_LAG_SECONDS``, default 30 s): ``stats.lag_seconds_from_env`` never lets the
lag fall under ``SAME_MOMENT_SECONDS``, so an event is never folded before its moment is over.
Were one flagged later anyway (a clock far off), Compute stats finds the human counts disagreeing
with the events and rebuilds them.

The timing rules measure from the recipient's sending-log row (``broad_logs.logged_at``, written
when the relay accepted the message). ``send_chunk`` commits that row within about a second
(``campaign.sending.CONTROL_CHECK_SECONDS``, kept under ``OPEN_AFTER_SEND_SECONDS`` by a test), so
an open or click of a target whose row is not there yet was made moments after its message was
accepted: ``before_send_logged`` says so, where the time rules cannot measure. A target whose
message never left (no row ever: the send has not reached it, or stopped before) can only be
requested by someone holding the tracking secret; that is a machine's too. Such events are
recorded like any other, never dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPEN = "open"
CLICK = "click"


@dataclass(frozen=True)
class Rule:
    """One machine rule: ``name`` is what ``tracking_logs.machine_rule`` stores (at most 64 characters)."""

    name: str
    events: tuple[str, ...]  # the event types it judges: "open", "click"
    detects: str
    source: str
    parameter: str = ""  # what it compares with: a user-agent pattern, a number of seconds


@dataclass(frozen=True)
class UserAgentRule:
    """A user agent that names a machine: ``pattern`` is searched in the header, case-insensitively."""

    name: str
    pattern: str
    who: str
    source: str


# The user agents that give a machine away. A person's mail client or browser sends neither of these.
# Google's image proxy ("… (via ggpht.com GoogleImageProxy)") is deliberately absent: Gmail fetches
# the pixel through it when the person opens the mail (and caches it, so later opens are not seen),
# which is a human open; WURFL reclassified it from robot to e-mail client in 2018 for that reason.
USER_AGENTS: tuple[UserAgentRule, ...] = (
    UserAgentRule(
        "apple_mpp_proxy",
        r"\AMozilla/5\.0\Z",
        "Apple Mail Privacy Protection: Apple's servers fetch every remote image of a mail as it arrives, "
        "opened or not, with the bare user agent Mozilla/5.0 (a real Apple Mail or browser names its engine)",
        "Apple, Mail Privacy Protection (iOS 15, macOS 12); SocketLabs, 'Identifying Apple MPP opens'",
    ),
    UserAgentRule(
        "yahoo_mail_proxy",
        r"YahooMailProxy",
        "Yahoo Mail's content fetch proxy, which retrieves the URLs embedded in mails sent to Yahoo users: "
        "'YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html'",
        "Yahoo, help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
    ),
    UserAgentRule(
        "scanner_user_agent",
        r"Barracuda|Proofpoint|Mimecast|CiscoSecureEmail",
        "mail security gateways that name themselves when they follow a link to check it: Barracuda link "
        "protection, Proofpoint URL Defense, Mimecast URL Protect, Cisco Secure Email (Microsoft Safe Links "
        "sends a browser's user agent: the timing rules catch it; Outlook's own 'ms-office' is a person)",
        "Barracuda Campus, 'Unwanted link clicks'; senders' field reports of scanner user agents",
    ),
    UserAgentRule(
        "headless_browser",
        r"HeadlessChrome|PhantomJS",
        "a browser without a screen: the sandboxes of Defender Safe Attachments and other gateways render "
        "the mail and click its links in one",
        "Microsoft Defender for Office 365, Safe Attachments (dynamic delivery sandbox)",
    ),
    UserAgentRule(
        "bot_user_agent",
        r"bot/|\bbot\b|crawler|spider|\Acurl/|\AWget/|python-requests|python-httpx|python-urllib|Go-http-client|\AJava/|libwww-perl",
        "crawlers and HTTP libraries: a mail client never sends these",
        "the user agents of HTTP libraries and the 'bot' convention (RFC 9309 crawlers)",
    ),
    UserAgentRule(
        "no_user_agent",
        r"\A\Z",
        "no user agent at all: every mail client and browser sends one",
        "RFC 9110 10.1.5 (a user agent SHOULD send User-Agent)",
    ),
)

# An open this soon after the message was accepted by the relay (broad_logs.logged_at) is a
# prefetch: mail must still reach the mailbox, sync to a client and be noticed. Apple's proxy and
# security gateways fetch on arrival, within seconds.
OPEN_AFTER_SEND_SECONDS = 10.0
# A click this soon after the send: a person must also open and read first. Gateways such as
# Defender's sandbox click within a minute of delivery, most within seconds.
CLICK_AFTER_SEND_SECONDS = 30.0
# The moment of the same-second and hidden-link rules. A person cannot click two different links
# of a mail within one second (each opens a page); a scanner clicks every link at once. Clicks on
# the same link are not counted: a double click sends two. Must stay under the fold's lag.
SAME_MOMENT_SECONDS = 1.0
SAME_MOMENT_LINKS = 2  # distinct links (the hidden one included) clicked in that moment

RULES: tuple[Rule, ...] = (
    Rule(
        "hidden_link",
        (OPEN, CLICK),
        "a request for the mail's hidden link (no text, display:none, aria-hidden, tabindex=-1, absent from the "
        "text part), which no person can see or reach: it and the recipient's opens and clicks of the same "
        f"moment ({SAME_MOMENT_SECONDS:g} s before or after) are a machine's",
        "the honeypot link senders use against link scanners (Barracuda's and Proofpoint's follow every anchor)",
        f"SAME_MOMENT_SECONDS = {SAME_MOMENT_SECONDS:g}",
    ),
    Rule(
        "head_request",
        (OPEN, CLICK),
        "HEAD on the pixel or a link: a scanner or proxy checking the URL; mail clients and browsers GET",
        "RFC 9110 9.3.2; link scanners' URL checks (senders' reports of HEAD requests with no page assets)",
        "method HEAD",
    ),
    *(
        Rule(agent.name, (OPEN, CLICK), agent.who, agent.source, f"user agent ~ {agent.pattern}")
        for agent in USER_AGENTS
    ),
    Rule(
        "before_send_logged",
        (OPEN, CLICK),
        "an open or click of a target whose sending-log row is not written yet: send_chunk commits each row "
        "within about a second of the relay's acceptance, so the message arrived moments ago, sooner than "
        "open_after_send and click_after_send measure (a target never sent to has no row either: only someone "
        "holding the tracking secret requests its URLs)",
        "the same prefetches on arrival as open_after_send and click_after_send; campaign.sending commits the "
        "rows at each look at the controls (CONTROL_CHECK_SECONDS)",
        "no broad_logs row yet",
    ),
    Rule(
        "open_after_send",
        (OPEN,),
        f"an open within {OPEN_AFTER_SEND_SECONDS:g} s of the send (broad_logs.logged_at): a prefetch on arrival",
        "Apple MPP preloads on arrival; gateways scan before delivery (SocketLabs, Apple)",
        f"OPEN_AFTER_SEND_SECONDS = {OPEN_AFTER_SEND_SECONDS:g}",
    ),
    Rule(
        "click_after_send",
        (CLICK,),
        f"a click within {CLICK_AFTER_SEND_SECONDS:g} s of the send: a gateway checking the links on delivery",
        "Microsoft Safe Links delivery-time scan; Defender Safe Attachments sandbox",
        f"CLICK_AFTER_SEND_SECONDS = {CLICK_AFTER_SEND_SECONDS:g}",
    ),
    Rule(
        "same_second_clicks",
        (CLICK,),
        f"{SAME_MOMENT_LINKS} or more different links clicked by one recipient within {SAME_MOMENT_SECONDS:g} s; "
        "the earlier clicks of that second are flagged too",
        "scanners follow every link of a mail at once (Barracuda intent analysis, Defender sandbox)",
        f"SAME_MOMENT_LINKS = {SAME_MOMENT_LINKS}, SAME_MOMENT_SECONDS = {SAME_MOMENT_SECONDS:g}",
    ),
)
RULE_NAMES = tuple(rule.name for rule in RULES)
_USER_AGENT_PATTERNS = tuple((agent.name, re.compile(agent.pattern, re.IGNORECASE)) for agent in USER_AGENTS)


@dataclass(frozen=True)
class Event:
    """What is known of one open or click when it is recorded.

    ``kind`` is "open" or "click"; ``method`` the HTTP method ("GET" or "HEAD"); ``user_agent`` the
    header as received (None when absent); ``seconds_since_send`` the time since the recipient's
    sending-log row was written (None when unknown); ``send_logged`` False for a target whose
    sending-log row is not written yet (rule ``before_send_logged``); ``hidden_link`` whether the
    request is for the hidden link, or one came from that recipient in the moment before;
    ``links_this_moment`` the distinct links this recipient clicked in the last
    ``SAME_MOMENT_SECONDS``, this one included.
    """

    kind: str
    method: str = "GET"
    user_agent: str | None = None
    seconds_since_send: float | None = None
    hidden_link: bool = False
    links_this_moment: int = 0
    send_logged: bool = True


MAX_JUDGED_USER_AGENT = 512


def classify(event: Event) -> str | None:
    """The name of the first rule of ``RULES`` the event matches, or None for an estimated human.

    Raises ValueError for an event type the rules do not judge (only opens and clicks are).
    """
    if event.kind not in (OPEN, CLICK):
        raise ValueError(f"machine rules judge opens and clicks, not {event.kind!r}")
    if event.hidden_link:
        return "hidden_link"
    if event.method.upper() == "HEAD":
        return "head_request"
    # Judged on its head only: a user agent is short, and patterns run on a URL anyone with a
    # mailed link can request must cost the same whatever the request sends (a fresh user's
    # 60 KB user agent held the tracking service's worker for seconds).
    agent = (event.user_agent or "")[:MAX_JUDGED_USER_AGENT]
    for name, pattern in _USER_AGENT_PATTERNS:
        if pattern.search(agent):
            return name
    if not event.send_logged:
        return "before_send_logged"
    since = event.seconds_since_send
    if since is not None:
        if event.kind == OPEN and since < OPEN_AFTER_SEND_SECONDS:
            return "open_after_send"
        if event.kind == CLICK and since < CLICK_AFTER_SEND_SECONDS:
            return "click_after_send"
    if event.kind == CLICK and event.links_this_moment >= SAME_MOMENT_LINKS:
        return "same_second_clicks"
    return None


def rules_table() -> str:
    """The rules in order as a Markdown table (name, events judged, what it detects, its parameter,
    source): README's, kept in step by a test."""
    lines = ["| rule | judges | detects | parameter | source |", "| --- | --- | --- | --- | --- |"]
    for rule in RULES:
        parameter = f"`{rule.parameter.replace('|', chr(92) + '|')}`"
        lines.append(f"| `{rule.name}` | {', '.join(rule.events)} | {rule.detects} | {parameter} | {rule.source} |")
    return "\n".join(lines)
