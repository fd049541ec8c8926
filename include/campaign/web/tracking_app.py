"""The public tracking endpoints (open pixel, click redirect, hidden link, unsubscribe) as a FastAPI app.

Served by the Airflow API server through the project's plugin under ``/campaign``. Tokens are
verified before the database is touched; anything forged or unknown gets 404 and writes nothing.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from html import escape

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from campaign import tracking
from campaign.db import LazyEngine

log = logging.getLogger(__name__)

# The smallest transparent GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Referrer-Policy": "no-referrer"}

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:32rem;margin:3rem auto">{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=escape(title), body=body), status_code=status, headers=NO_STORE)


def _not_found() -> Response:
    return PlainTextResponse("Not found", status_code=404, headers=NO_STORE)


def create_app(engine_provider: Callable[[], Engine], secret_provider: Callable[[], bytes]) -> FastAPI:
    """The app; the engine is made once, on first use, not per request."""
    app = FastAPI(title="campaign-send tracking", docs_url=None, redoc_url=None, openapi_url=None)
    engine = LazyEngine(engine_provider)

    def user_agent(request: Request) -> str | None:
        return request.headers.get("user-agent")

    @app.exception_handler(SQLAlchemyError)
    async def database_unavailable(_request: Request, exc: SQLAlchemyError) -> Response:
        # The driver's first line says what (permission denied for table …); its further lines
        # and SQLAlchemy's text can carry the statement's values, tokens among them: not logged.
        first = (str(getattr(exc, "orig", None) or "").strip().splitlines() or [""])[0]
        log.error("tracking: campaign database error: %s%s", exc.__class__.__name__, f": {first}" if first else "")
        return PlainTextResponse("Temporarily unavailable", status_code=503, headers=NO_STORE)

    # HEAD answers as GET would (status and headers; the server sends no body) and is recorded as
    # a machine's open or click (rule head_request, campaign.machine): it comes from link scanners
    # and proxies checking a URL, never from a mail client showing the pixel or a person following
    # a link (both GET). Recorded, so that "all opens" counts every request of the pixel, as a
    # tracker that knows no machines would, and the human figure shows what the machines added.
    @app.api_route("/o/{token}", methods=["GET", "HEAD"])
    def open_pixel(token: str, request: Request) -> Response:
        if not tracking.record_open(engine(), secret_provider(), token, user_agent(request), request.method):
            return _not_found()
        return Response(PIXEL, media_type="image/gif", headers=NO_STORE)

    @app.api_route("/c/{token}", methods=["GET", "HEAD"])
    def click(token: str, request: Request) -> Response:
        url = tracking.record_click(engine(), secret_provider(), token, user_agent(request), request.method)
        if url is None:
            return _not_found()
        return RedirectResponse(url, status_code=302, headers=NO_STORE)

    # The mail's hidden link (Tracker.rewrite): no person sees or reaches it, so whatever requests
    # it is a machine; its answer is an empty page, GET or HEAD alike.
    @app.api_route("/h/{token}", methods=["GET", "HEAD"])
    def hidden_link(token: str, request: Request) -> Response:
        if not tracking.record_hidden_link(engine(), secret_provider(), token, user_agent(request)):
            return _not_found()
        return PlainTextResponse("", headers=NO_STORE)

    @app.api_route("/u/{token}", methods=["GET", "HEAD"])
    def unsubscribe_page(token: str) -> Response:
        # GET and HEAD only show the button: mail scanners follow links, and must not unsubscribe anyone.
        if not tracking.check_unsubscribe(secret_provider(), token):
            return _not_found()
        return _page(
            "Unsubscribe",
            "<h1>Unsubscribe</h1><p>You will receive no more mail from these campaigns.</p>"
            f'<form method="post" action="{escape(token)}"><button type="submit">Unsubscribe</button></form>',
        )

    @app.post("/u/{token}")
    def unsubscribe(token: str, request: Request) -> Response:
        # Idempotent (tracking.record_unsubscribe): a repeated one-click POST gets the same page.
        if not tracking.record_unsubscribe(engine(), secret_provider(), token, user_agent(request)):
            return _not_found()
        return _page("Unsubscribed", "<h1>You are unsubscribed</h1><p>No further campaign will be sent to you.</p>")

    return app
