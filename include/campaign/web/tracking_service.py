"""The tracking endpoints served on their own, apart from Airflow: an ASGI app for uvicorn.

Recipients' mail clients and link scanners on the internet fetch the open pixel and the tracked
links. Served by this process, they never reach Airflow's API server, whose UI and REST API can
then stay on the internal network. It is the very app the plugin mounts
(``campaign.web.tracking_app.create_app``) and needs only the campaign database and the tracking
secret, from environment variables; it imports nothing of Airflow.

``CAMPAIGN_DB_URL``
    SQLAlchemy URL of the campaign database (the database of Connection ``campaign_db``; the
    command-line tool reads the same variable).
``CAMPAIGN_TRACKING_SECRET``
    The secret that signs the tokens (16+ characters), the same as the Airflow workers'.
``CAMPAIGN_TRACKING_PATH``
    URL path the endpoints are served under; default: the path of ``CAMPAIGN_TRACKING_BASE_URL``
    (``/campaign`` when unset), so the links already sent keep working. ``/`` serves them at the root.
``CAMPAIGN_TRACKING_DB_POOL_SIZE``, ``CAMPAIGN_TRACKING_DB_MAX_OVERFLOW``
    Database connections kept open and allowed on top, per worker process (default 5 and 5).

Run it with uvicorn (the process and HTTP options are uvicorn's own)::

    uvicorn campaign.web.tracking_service:app --host 0.0.0.0 --port 8081 --workers 2 \\
        --proxy-headers --forwarded-allow-ips 10.0.0.5 --no-access-log --no-server-header

or ``python -m campaign.web.tracking_service --host 0.0.0.0 --port 8081``, which checks the settings
before uvicorn starts and has those options on by default. Either way the settings and the database
are checked when it starts; each problem is one sentence and the process exits. ``GET /healthz``
answers 200 while the database answers (for the orchestrator's health check; it is outside the
tracking path, so a proxy that forwards only that path keeps it internal).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from campaign import settings as env_settings
from campaign.db import make_engine
from campaign.errors import ConfigurationError
from campaign.rendering import tracking_base_url
from campaign.schema import tracking_privileges_missing
from campaign.tokens import tracking_secret
from campaign.web.tracking_app import NO_STORE, create_app

DB_URL_ENV = "CAMPAIGN_DB_URL"  # the command-line tool's name for the same database
PATH_ENV = "CAMPAIGN_TRACKING_PATH"
POOL_SIZE_ENV = "CAMPAIGN_TRACKING_DB_POOL_SIZE"
MAX_OVERFLOW_ENV = "CAMPAIGN_TRACKING_DB_MAX_OVERFLOW"
APP = "campaign.web.tracking_service:app"
# What the endpoints read and write (campaign.tracking); a database without them would answer 503
# to every recipient, so the service refuses to start on it instead.
TRACKING_TABLES = ("profiles", "delivery_targets", "delivery_links", "tracking_logs")

log = logging.getLogger("uvicorn.error")  # uvicorn's configured logger: the lines reach its output

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ServiceSettings:
    """What the service needs, read from the environment by ``load_settings``."""

    db_url: URL
    secret: bytes = field(repr=False)
    path: str  # "" for the root, else "/segment[/segment…]" without a trailing slash
    pool_size: int = 5
    max_overflow: int = 5


def load_settings() -> ServiceSettings:
    """The service's settings from the environment; every problem at once, one sentence a line,
    in one ``ConfigurationError`` (no value of a secret or password is repeated in it)."""
    problems: list[str] = []

    def check(read: Callable[[], Any]) -> Any:
        try:
            return read()
        except ConfigurationError as exc:
            problems.append(str(exc))
            return None

    db_url = check(_db_url)
    secret = check(tracking_secret)
    path = check(_mount_path)
    pool_size = check(
        lambda: env_settings.whole_number(POOL_SIZE_ENV, 5, minimum=1, what="a whole number of connections, at least 1")
    )
    max_overflow = check(
        lambda: env_settings.whole_number(MAX_OVERFLOW_ENV, 5, minimum=0, what="a whole number of connections")
    )
    if problems:
        raise ConfigurationError("\n".join(problems))
    return ServiceSettings(db_url, secret, path, pool_size, max_overflow)


def _db_url() -> URL:
    text_url = os.environ.get(DB_URL_ENV, "").strip()
    if not text_url:
        raise ConfigurationError(
            f"No campaign database: set {DB_URL_ENV} to its SQLAlchemy URL "
            "(postgresql+psycopg://user:password@host/campaign or sqlite:////path/to/campaign.db)."
        )
    try:
        url = make_url(text_url)
    except ArgumentError:
        # The text may hold a password: it is not repeated.
        raise ConfigurationError(
            f"{DB_URL_ENV} is not a SQLAlchemy URL; write it as postgresql+psycopg://user:password@host/campaign "
            "or sqlite:////path/to/campaign.db."
        ) from None
    if url.get_backend_name() not in ("postgresql", "sqlite"):
        raise ConfigurationError(
            f"{DB_URL_ENV} names a {url.get_backend_name()!r} database; the campaign database is PostgreSQL or SQLite."
        )
    return url


def _mount_path() -> str:
    explicit = os.environ.get(PATH_ENV, "").strip()
    path = explicit if explicit else urlsplit(tracking_base_url()).path
    path = path.rstrip("/")
    if path and (not path.startswith("/") or "//" in path or any(c in path for c in "?# \t")):
        source = PATH_ENV if explicit else "the path of CAMPAIGN_TRACKING_BASE_URL"
        raise ConfigurationError(f"{source} must be a URL path such as /campaign, got {path!r}.")
    return path


def open_database(settings: ServiceSettings) -> Engine:
    """An engine for the campaign database, once it answered and holds the tracking tables;
    otherwise ``ConfigurationError``, one sentence naming the database (password hidden)."""
    shown = settings.db_url.render_as_string(hide_password=True)
    if settings.db_url.get_backend_name() == "sqlite":
        # SQLite would create a missing file, and the service would start on an empty database.
        database = settings.db_url.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise ConfigurationError(
                f"The campaign database file {database or '(none)'} does not exist: "
                f"point {DB_URL_ENV} at the file the Airflow workers write (bin/campaign init-db creates one)."
            )
    try:
        engine = make_engine(settings.db_url, pool_size=settings.pool_size, max_overflow=settings.max_overflow)
    except (ArgumentError, ImportError) as exc:
        raise ConfigurationError(f"{DB_URL_ENV} needs a database driver that is not installed: {exc}.") from None
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT 1"))
            missing = [name for name in TRACKING_TABLES if not inspect(conn).has_table(name)]
    except SQLAlchemyError as exc:
        engine.dispose()
        raise ConfigurationError(f"Cannot reach the campaign database {shown}: {_reason(exc)}.") from None
    if missing:
        engine.dispose()
        raise ConfigurationError(
            f"The campaign database {shown} has no table {', '.join(missing)}: create the tables with "
            "bin/campaign init-db (docker compose: the airflow-init service)."
        )
    with engine.connect() as conn:
        lacking = tracking_privileges_missing(conn)
    if lacking:
        # Otherwise the service would start, answer /healthz, and 503 every pixel and click.
        engine.dispose()
        role = settings.db_url.username or "(the connecting role)"
        raise ConfigurationError(
            f"The campaign database role {role} lacks {'; '.join(lacking)}: run bin/campaign grant-tracking "
            f"{role} as the owner of the tables (docker compose: the airflow-init service)."
        )
    return engine


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's first line (psycopg adds hints on further lines), without a trailing period."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__).rstrip(".")


def database_problem(engine: Engine) -> str | None:
    """Why the service cannot serve now, or None (the health check): the database does not
    answer, or the role lacks a privilege the endpoints need (a grant revoked, a column added by
    an upgrade without grant-tracking run again must turn the service unhealthy, not 503 every
    recipient behind a green check)."""
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT 1"))
            lacking = tracking_privileges_missing(conn)
    except SQLAlchemyError as exc:
        log.warning("tracking service: campaign database unreachable: %s", _reason(exc))
        return "campaign database unreachable"
    if lacking:
        log.warning("tracking service: the campaign database role lacks %s", "; ".join(lacking))
        return "campaign database role lacks privileges: run bin/campaign grant-tracking"
    return None


def build_app(settings: ServiceSettings, engine: Engine) -> Starlette:
    """The tracking app under ``settings.path`` and ``/healthz``; a bare Starlette router, so no
    documentation or OpenAPI route exists beside them (the tracking app exposes none either)."""

    def healthz(_request: Request) -> Response:
        problem = database_problem(engine)
        if problem is None:
            return PlainTextResponse("ok", headers=NO_STORE)
        return PlainTextResponse(problem, status_code=503, headers=NO_STORE)

    tracking = create_app(lambda: engine, lambda: settings.secret)
    # /healthz first: a tracking app mounted at the root would take every path otherwise.
    return Starlette(routes=[Route("/healthz", healthz, methods=["GET", "HEAD"]), Mount(settings.path, app=tracking)])


class TrackingService:
    """The ASGI app uvicorn serves. Settings and database are checked at start-up (the ASGI
    lifespan), so that a problem stops the start with its sentences instead of a traceback, or
    worse, a 503 to every recipient; the engine is closed at shutdown."""

    def __init__(self) -> None:
        self._app: Starlette | None = None
        self._engine: Engine | None = None

    def start(self) -> None:
        """Read the settings, open the database, build the app (``ConfigurationError`` otherwise)."""
        settings = load_settings()
        self._engine = open_database(settings)
        self._app = build_app(settings, self._engine)
        log.info(
            "campaign tracking service: %s/ from %s (pool %d + %d per process)",
            settings.path,
            settings.db_url.render_as_string(hide_password=True),
            settings.pool_size,
            settings.max_overflow,
        )

    def stop(self) -> None:
        """Close the database connections."""
        if self._engine is not None:
            self._engine.dispose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._app is None:  # uvicorn --lifespan off: never started, never checked
            response = PlainTextResponse("Not started (run uvicorn with --lifespan on)", status_code=503)
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await asyncio.to_thread(self.start)
                except ConfigurationError as exc:
                    # uvicorn logs the message as it is, then "Application startup failed. Exiting."
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.stop)
                await send({"type": "lifespan.shutdown.complete"})
                return


app = TrackingService()


def main(argv: list[str] | None = None) -> int:
    """``python -m campaign.web.tracking_service``: check the settings and the database, then run
    uvicorn with what a service behind a TLS proxy needs. Exit code 2 and one sentence per problem
    on stderr when they are wrong."""
    parser = argparse.ArgumentParser(
        prog="python -m campaign.web.tracking_service",
        description="Serve the campaign tracking endpoints (open pixel, click, unsubscribe) without Airflow.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port to listen on (default 8081)")
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY") or 1),
        help="worker processes (default $WEB_CONCURRENCY or 1); each holds its own database pool",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        default=os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1",
        help="the TLS proxy's addresses, whose X-Forwarded-For/-Proto are trusted "
        "(default $FORWARDED_ALLOW_IPS or 127.0.0.1)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log every request; off by default: each path carries a token naming a recipient",
    )
    args = parser.parse_args(argv)
    try:
        open_database(load_settings()).dispose()
    except ConfigurationError as exc:
        for line in str(exc).splitlines():
            print(f"tracking service: {line}", file=sys.stderr)
        return 2

    import uvicorn  # here, not at import: the ASGI app itself does not need it

    uvicorn.run(
        APP,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        access_log=args.access_log,
        server_header=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
