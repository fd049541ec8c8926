"""Tracked mail: the open pixel, click redirects through registered links, the hidden link, unsubscribe.

Rendering side (used by ``send_chunk``) and recording side (used by the tracking endpoints of
the Airflow plugin). Each recorded event is one short transaction; every open and click is
recorded with the machine rules' verdict (campaign.machine).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, Engine

from campaign import machine
from campaign.clock import as_datetime, utcnow
from campaign.db import sql
from campaign.tokens import sign_token, verify_token

# Links worth tracking are literal http(s) URLs in an anchor; a URL built from template
# variables is personal and is left as it is (a link row per recipient would be meaningless).
_ANCHOR_HREF = re.compile(r"""(<a\b[^>]*?\shref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
MAX_USER_AGENT = 500


def extract_links(html_template: str) -> list[str]:
    """The distinct literal http(s) URLs of the anchors of an HTML template, in order."""
    links: list[str] = []
    for match in _ANCHOR_HREF.finditer(html_template):
        url = html.unescape(match.group(3).strip())
        if url.lower().startswith(("http://", "https://")) and "{" not in url and url not in links:
            links.append(url)
    return links


def register_links(engine: Engine, delivery_id: int, html_template: str) -> int:
    links = extract_links(html_template)
    if links:
        with engine.begin() as conn:
            conn.execute(
                sql("insert_delivery_link"), [{"delivery_id": delivery_id, "url": u, "label": None} for u in links]
            )
    return len(links)


def load_links(engine: Engine, delivery_id: int) -> dict[str, int]:
    with engine.begin() as conn:
        return {row.url: row.id for row in conn.execute(sql("select_delivery_links"), {"delivery_id": delivery_id})}


@dataclass(frozen=True)
class Tracker:
    """Rewrites one delivery's rendered HTML for one recipient."""

    secret: bytes
    base_url: str
    delivery_id: int
    links: dict[str, int]

    def open_url(self, profile_id: int) -> str:
        return f"{self.base_url}/o/{sign_token(self.secret, 'open', self.delivery_id, profile_id)}"

    def click_url(self, profile_id: int, link_id: int) -> str:
        return f"{self.base_url}/c/{sign_token(self.secret, 'click', self.delivery_id, profile_id, link_id)}"

    def hidden_url(self, profile_id: int) -> str:
        return f"{self.base_url}/h/{sign_token(self.secret, 'hidden', self.delivery_id, profile_id)}"

    def rewrite(self, rendered_html: str, profile_id: int) -> str:
        """The HTML with its registered links sent through signed click URLs, and, before the end of
        its body, the hidden link and the open pixel of the recipient.

        The hidden link (machine rule ``hidden_link``) has no text and is hidden from every person:
        ``display:none`` for the eye, ``aria-hidden`` for screen readers, ``tabindex=-1`` for the
        keyboard; the text part has no such link. Only a machine that follows every anchor requests it.
        """

        def tracked(match: re.Match) -> str:
            url = html.unescape(match.group(3).strip())
            link_id = self.links.get(url)
            if link_id is None:
                return match.group(0)
            quote = match.group(2)
            return f"{match.group(1)}{quote}{html.escape(self.click_url(profile_id, link_id))}{quote}"

        body = _ANCHOR_HREF.sub(tracked, rendered_html)
        # Signed ids are digits and dots and the base URL is the operator's: no escaping needed
        # beyond the open pixel's, which keeps its former form.
        tail = (
            f'<a href="{html.escape(self.hidden_url(profile_id))}" style="display:none" aria-hidden="true" '
            f'tabindex="-1"></a><img src="{html.escape(self.open_url(profile_id))}" width="1" height="1" alt="" '
            'style="border:0">'
        )
        if _BODY_END.search(body):
            return _BODY_END.sub(lambda m: tail + m.group(0), body, count=1)
        return body + tail


# ---------------------------------------------------------------- recording (tracking endpoints)


def _record(
    conn: Connection,
    delivery_id: int,
    profile_id: int,
    event_type: str,
    link_id: int | None,
    user_agent: str | None,
    method: str = "GET",
) -> bool:
    """Record one open, click or hidden-link request of a target with the machine rules' verdict.

    False (nothing written) when the profile is not a target of the delivery. One read gives what
    the rules need (``select_recipient_moment.sql``: target, send time, the recipient's events of
    the moment), then one insert; a same-second cluster or the hidden link also flags the
    recipient's earlier events of the moment (``flag_moment_as_machine.sql``).
    """
    now = utcnow()
    since = now - timedelta(seconds=machine.SAME_MOMENT_SECONDS)
    moment = conn.execute(
        sql("select_recipient_moment"),
        {"delivery_id": delivery_id, "profile_id": profile_id, "link_id": link_id or 0, "since": since},
    ).first()
    if moment is None:
        return False
    if event_type == "hidden_link":
        rule: str | None = "hidden_link"
    else:
        sent_at = as_datetime(moment.sent_at)
        rule = machine.classify(
            machine.Event(
                kind=event_type,
                method=method,
                user_agent=user_agent,
                seconds_since_send=(now - sent_at).total_seconds() if sent_at else None,
                send_logged=sent_at is not None,  # no row yet: accepted moments ago (or never sent)
                hidden_link=moment.hidden_requests > 0,
                links_this_moment=moment.other_links + 1 if event_type == "click" else 0,
            )
        )
    conn.execute(
        sql("insert_judged_event"),
        {
            "delivery_id": delivery_id,
            "profile_id": profile_id,
            "event_type": event_type,
            "link_id": link_id,
            "user_agent": _stored_user_agent(user_agent),
            "event_at": now,
            "machine": rule is not None,
            "machine_rule": rule,
        },
    )
    flag = None
    if event_type == "hidden_link":
        flag = ("hidden_link", "open", "click")
    elif event_type == "click" and moment.other_links + 1 >= machine.SAME_MOMENT_LINKS:
        flag = ("same_second_clicks", "click", "click")
    if flag is not None:
        conn.execute(
            sql("flag_moment_as_machine"),
            {
                "delivery_id": delivery_id,
                "profile_id": profile_id,
                "machine_rule": flag[0],
                "first_type": flag[1],
                "second_type": flag[2],
                "since": since,
            },
        )
    return True


def _stored_user_agent(user_agent: str | None) -> str | None:
    return (user_agent or "")[:MAX_USER_AGENT] or None


def _is_target(conn, delivery_id: int, profile_id: int) -> bool:
    return (
        conn.execute(sql("select_is_target"), {"delivery_id": delivery_id, "profile_id": profile_id}).first()
        is not None
    )


def _target(conn, ids: tuple[int, ...] | None) -> tuple[int, int] | None:
    """(delivery, profile) of a verified token when the profile is a recipient of the delivery."""
    if ids is None:
        return None
    delivery_id, profile_id = ids[:2]
    return (delivery_id, profile_id) if _is_target(conn, delivery_id, profile_id) else None


def record_open(engine: Engine, secret: bytes, token: str, user_agent: str | None, method: str = "GET") -> bool:
    """True when the token is genuine and the open was recorded (with its machine verdict).

    ``method`` is the HTTP method: a HEAD is recorded too, as a machine's (rule ``head_request``).
    """
    ids = verify_token(secret, "open", token)
    if ids is None:
        return False
    with engine.begin() as conn:
        return _record(conn, ids[0], ids[1], "open", None, user_agent, method)


def record_click(engine: Engine, secret: bytes, token: str, user_agent: str | None, method: str = "GET") -> str | None:
    """The delivery's own URL for a genuine click token (the event recorded, with its machine
    verdict), else None. A HEAD is recorded too, as a machine's (rule ``head_request``)."""
    ids = verify_token(secret, "click", token)
    if ids is None:
        return None
    delivery_id, profile_id, link_id = ids
    with engine.begin() as conn:
        url = conn.execute(sql("select_delivery_link"), {"link_id": link_id, "delivery_id": delivery_id}).scalar()
        if url is None or not _record(conn, delivery_id, profile_id, "click", link_id, user_agent, method):
            return None
    return url


def record_hidden_link(engine: Engine, secret: bytes, token: str, user_agent: str | None) -> bool:
    """True when the hidden-link token is genuine and the request was recorded.

    Recorded as a ``hidden_link`` event (a machine's, never an open or a click) which flags that
    recipient's opens and clicks of the same moment as a machine's (campaign.machine).
    """
    ids = verify_token(secret, "hidden", token)
    if ids is None:
        return False
    with engine.begin() as conn:
        return _record(conn, ids[0], ids[1], "hidden_link", None, user_agent)


def check_unsubscribe(secret: bytes, token: str) -> bool:
    return verify_token(secret, "unsubscribe", token) is not None


def record_unsubscribe(engine: Engine, secret: bytes, token: str, user_agent: str | None) -> bool:
    """True when the token is genuine: the profile is blocklisted, the event recorded once.

    Idempotent: a repeated request, or one racing another (clients retry the RFC 8058 one-click
    POST, scanners replay it), adds no second event; the unique index
    ``tracking_logs_one_unsubscribe`` decides, so it holds between concurrent transactions too.
    """
    ids = verify_token(secret, "unsubscribe", token)
    if ids is None:
        return False
    with engine.begin() as conn:
        target = _target(conn, ids)
        if target is None:
            return False
        delivery_id, profile_id = target
        conn.execute(
            sql("insert_unsubscribe_event"),
            {
                "delivery_id": delivery_id,
                "profile_id": profile_id,
                "user_agent": _stored_user_agent(user_agent),
                "event_at": utcnow(),
            },
        )
        # Blocklisted on every genuine request, the repeated one too: had an operator lifted the
        # blocklist meanwhile, the person asking again to leave is what counts.
        conn.execute(sql("unsubscribe_profile"), {"profile_id": profile_id})
    return True
