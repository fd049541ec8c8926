"""The Deployment view: deliveries with progress and KPIs, a page per delivery and per profile,
and a JSON API with the same figures. Every route needs an authenticated Airflow user.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import Engine

from campaign import charts, controls, deployment
from campaign.db import LazyEngine
from campaign.errors import DeliveryNotFound, DeliveryStateError, InvalidInput, RoleDenied

URL_PREFIX = "/campaign-deployment"
SENDING_REFRESH_SECONDS = 5
# A page showing one of these refreshes itself: the send moves, or another operator may resume it.
LIVE_STATUSES = ("sending", "paused", "stopping")
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")), autoescape=select_autoescape(["html"])
)


# Drawing a send of two hours and two days of events takes about half a second: the last drawing
# of each delivery is kept while its figures stay the same (they are kept a while themselves,
# campaign.deployment.delivery_charts), so a page refreshed every 5 s does not draw every time.
_DRAWN_KEPT = 64
_drawn: OrderedDict[int, tuple[str, dict[str, Markup | None]]] = OrderedDict()
_drawn_lock = threading.Lock()


def _charts(delivery_id: int, series: dict[str, list[dict[str, Any]]]) -> dict[str, Markup | None]:
    """The delivery page's two charts as SVG markup (None: nothing to draw yet)."""
    figures = json.dumps(series, sort_keys=True)
    with _drawn_lock:
        kept = _drawn.get(delivery_id)
    if kept is not None and kept[0] == figures:
        return kept[1]
    svgs = {
        "messages_chart": charts.messages_chart(series["messages_per_minute"]),
        "events_chart": charts.events_chart(series["events_per_hour"]),
    }
    # Markup: the SVG is made here from numbers and fixed labels, it has to reach the page unescaped.
    drawn = {name: Markup(svg) if svg else None for name, svg in svgs.items()}
    with _drawn_lock:
        _drawn[delivery_id] = (figures, drawn)
        _drawn.move_to_end(delivery_id)
        while len(_drawn) > _DRAWN_KEPT:
            _drawn.popitem(last=False)
    return drawn


def create_app(engine_provider: Callable[[], Engine], user_dependency: Callable[..., Any]) -> FastAPI:
    """The app; ``user_dependency`` is Airflow's authenticated-user dependency (401 without login)."""
    app = FastAPI(
        title="campaign-send Deployment",
        dependencies=[Depends(user_dependency)],
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    engine = LazyEngine(engine_provider)

    def roots(request: Request) -> tuple[str, str]:
        """This app's root and Airflow's, both as the browser sees them (proxies included)."""
        root = request.scope.get("root_path", "").rstrip("/")
        airflow = root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else ""
        return root, airflow

    def page(request: Request, template: str, title: str, status: int = 200, **values: Any) -> HTMLResponse:
        root, airflow = roots(request)
        html = _templates.get_template(template).render(root=root, airflow=airflow, title=title, **values)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    @app.exception_handler(DeliveryNotFound)
    async def delivery_not_found(request: Request, exc: DeliveryNotFound) -> Response:
        if "/api/" in request.url.path:
            return JSONResponse({"detail": str(exc)}, status_code=404)
        return page(request, "profile.html", "Not found", status=404, error=str(exc))

    # ------------------------------------------------------------------ JSON API

    @app.get("/api/deliveries")
    def api_deliveries(limit: int = 200) -> dict[str, Any]:
        return {"deliveries": deployment.list_deliveries(engine(), min(max(limit, 1), 1000))}

    @app.get("/api/deliveries/{delivery_id}")
    def api_delivery(delivery_id: int) -> dict[str, Any]:
        return deployment.delivery_detail(engine(), delivery_id)

    @app.get("/api/profiles")
    def api_profile(email: str) -> dict[str, Any]:
        try:
            return deployment.profile_page(engine(), email)
        except InvalidInput as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None

    @app.post("/api/deliveries/{delivery_id}/{action}")
    async def api_control(
        request: Request, delivery_id: int, action: str, user: Any = Depends(user_dependency)
    ) -> JSONResponse:
        """Pause, resume or stop a send as the logged-in Airflow user (who must hold Start
        deliveries). JSON only: a form on another site cannot post JSON without the browser
        asking this server first (CORS), so a cross-site request cannot act for the user."""
        control = {"pause": controls.pause, "resume": controls.resume, "stop": controls.stop}.get(action)
        if control is None:
            return JSONResponse({"detail": f"No control {action!r}: pause, resume or stop."}, status_code=404)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"detail": "Send the control as application/json."}, status_code=415)
        try:
            body = await request.json()
        except ValueError:
            body = None
        reason = body.get("reason") if isinstance(body, dict) else None
        if reason is not None and not isinstance(reason, str):
            return JSONResponse({"detail": "reason must be text."}, status_code=400)
        try:
            said = control(engine(), delivery_id, _login(user), (reason or "").strip()[:500] or None)
        except RoleDenied as exc:
            return JSONResponse({"detail": str(exc)}, status_code=403)
        except (DeliveryStateError, InvalidInput) as exc:
            return JSONResponse({"detail": str(exc)}, status_code=409)
        return JSONResponse({"detail": said, "status": deployment.delivery_detail(engine(), delivery_id)["status"]})

    # ------------------------------------------------------------------ pages

    @app.get("/", response_class=HTMLResponse)
    def deliveries_page(request: Request) -> HTMLResponse:
        return page(request, "deliveries.html", "Deliveries", deliveries=deployment.list_deliveries(engine()))

    @app.get("/deliveries/{delivery_id}", response_class=HTMLResponse)
    def delivery_page(request: Request, delivery_id: int, user: Any = Depends(user_dependency)) -> HTMLResponse:
        detail = deployment.delivery_detail(engine(), delivery_id)
        refresh = SENDING_REFRESH_SECONDS if detail["status"] in LIVE_STATUSES else None
        allowed = deployment.delivery_controls(engine(), detail["status"], _login(user))
        drawn = _charts(delivery_id, detail["charts"])
        return page(request, "delivery.html", detail["label"], d=detail, refresh=refresh, controls=allowed, **drawn)

    @app.get("/runs/{run_id}")
    def run_page(request: Request, run_id: str) -> Response:
        """Target of the task instances' extra link: the delivery a confirm_send run sends."""
        delivery_id = deployment.delivery_for_run(engine(), run_id)
        if delivery_id is None:
            return page(request, "profile.html", "Not found", status=404, error=f"Run {run_id} sent no delivery.")
        root, _ = roots(request)
        return RedirectResponse(f"{root}/deliveries/{delivery_id}", status_code=302)

    @app.get("/profiles", response_class=HTMLResponse)
    def profiles_page(request: Request, email: str | None = None) -> HTMLResponse:
        if not email:
            return page(request, "profile.html", "Profiles")
        try:
            found = deployment.profile_page(engine(), email)
        except InvalidInput as exc:
            return page(request, "profile.html", "Profiles", status=404, email=email, error=str(exc))
        return page(request, "profile.html", email, email=email, page=found)

    return app


def _login(user: Any) -> str | None:
    """The Airflow user's name (what runs record as their triggering user), None if unknown."""
    get_name = getattr(user, "get_name", None)
    return get_name() if callable(get_name) else None
