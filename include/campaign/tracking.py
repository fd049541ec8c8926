"""Tracked mail: the open pixel, click redirects through registered links, unsubscribe.

Rendering side (used by ``send_chunk``) and recording side (used by the tracking endpoints of
the Airflow plugin). Each recorded event is one short transaction.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from sqlalchemy import Engine

from campaign.clock import utcnow
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

    def rewrite(self, rendered_html: str, profile_id: int) -> str:
        def tracked(match: re.Match) -> str:
            url = html.unescape(match.group(3).strip())
            link_id = self.links.get(url)
            if link_id is None:
                return match.group(0)
            quote = match.group(2)
            return f"{match.group(1)}{quote}{html.escape(self.click_url(profile_id, link_id))}{quote}"

        body = _ANCHOR_HREF.sub(tracked, rendered_html)
        pixel = f'<img src="{html.escape(self.open_url(profile_id))}" width="1" height="1" alt="" style="border:0">'
        if _BODY_END.search(body):
            return _BODY_END.sub(lambda m: pixel + m.group(0), body, count=1)
        return body + pixel


# ---------------------------------------------------------------- recording (tracking endpoints)


def _record(conn, delivery_id: int, profile_id: int, event_type: str, link_id: int | None, user_agent: str | None):
    conn.execute(
        sql("insert_tracking_event"),
        {
            "delivery_id": delivery_id,
            "profile_id": profile_id,
            "event_type": event_type,
            "link_id": link_id,
            "user_agent": _stored_user_agent(user_agent),
            "event_at": utcnow(),
        },
    )


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


def record_open(engine: Engine, secret: bytes, token: str, user_agent: str | None) -> bool:
    """True when the token is genuine and the open was recorded."""
    ids = verify_token(secret, "open", token)
    if ids is None:
        return False
    with engine.begin() as conn:
        target = _target(conn, ids)
        if target is None:
            return False
        _record(conn, *target, "open", None, user_agent)
    return True


def check_open(engine: Engine, secret: bytes, token: str) -> bool:
    """What ``record_open`` would answer for the token, recording nothing (a HEAD request)."""
    ids = verify_token(secret, "open", token)
    if ids is None:
        return False
    with engine.begin() as conn:
        return _target(conn, ids) is not None


def _click_url(conn, ids: tuple[int, ...] | None) -> str | None:
    """The URL of a verified click token: its link must be one of its delivery's, for a recipient."""
    if ids is None:
        return None
    delivery_id, profile_id, link_id = ids
    url = conn.execute(sql("select_delivery_link"), {"link_id": link_id, "delivery_id": delivery_id}).scalar()
    if url is None or not _is_target(conn, delivery_id, profile_id):
        return None
    return url


def record_click(engine: Engine, secret: bytes, token: str, user_agent: str | None) -> str | None:
    """The delivery's own URL for a genuine click token (the event recorded), else None."""
    ids = verify_token(secret, "click", token)
    if ids is None:
        return None
    with engine.begin() as conn:
        url = _click_url(conn, ids)
        if url is None:
            return None
        delivery_id, profile_id, link_id = ids
        _record(conn, delivery_id, profile_id, "click", link_id, user_agent)
    return url


def click_target(engine: Engine, secret: bytes, token: str) -> str | None:
    """What ``record_click`` would answer for the token, recording nothing (a HEAD request)."""
    ids = verify_token(secret, "click", token)
    if ids is None:
        return None
    with engine.begin() as conn:
        return _click_url(conn, ids)


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
