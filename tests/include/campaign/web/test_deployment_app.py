"""The Deployment app's send controls (pause, resume, stop) over HTTP, on real SQLite and PostgreSQL.

Airflow's authenticated-user dependency is replaced by one that reads the user from a header:
the app only asks it for the user's name; the role is checked in the campaign database.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import Header, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy import text
from testsupport import start_confirmed_send

from campaign import controls, operators
from campaign.schema import ROLE_START_DELIVERIES
from campaign.web.deployment_app import create_app


def _user(x_user: str | None = Header(default=None)) -> SimpleNamespace:
    if not x_user:
        raise HTTPException(status_code=401, detail="Not authenticated")
    return SimpleNamespace(get_name=lambda: x_user)


@pytest.fixture
def sending(campaign_db, ready_delivery):
    """(HTTP client, delivery id) of a delivery that is sending; alice holds Start deliveries."""
    engine = campaign_db.engine
    for login in ("alice", "bob"):
        operators.create_operator(engine, login)
    operators.grant_role(engine, "alice", ROLE_START_DELIVERIES)
    delivery_id = ready_delivery(engine)
    start_confirmed_send(engine, delivery_id, "alice", "run-1")
    return TestClient(create_app(lambda: engine, _user)), delivery_id


def _post(client, delivery_id: int, action: str, user: str = "alice", **body):
    return client.post(f"/api/deliveries/{delivery_id}/{action}", json=body, headers={"X-User": user})


def _status(engine, delivery_id: int) -> str:
    with engine.begin() as conn:
        return conn.execute(text("SELECT status FROM deliveries WHERE id = :d"), {"d": delivery_id}).scalar_one()


def test_an_operator_with_the_role_pauses_resumes_and_stops_recorded_under_their_name(campaign_db, sending) -> None:
    client, delivery_id = sending

    paused = _post(client, delivery_id, "pause", reason="  relay maintenance ")
    assert (paused.status_code, paused.json()) == (
        200,
        {"detail": f"Delivery {delivery_id} paused by alice: relay maintenance.", "status": "paused"},
    )
    page = client.get(f"/deliveries/{delivery_id}", headers={"X-User": "alice"}).text
    assert '<b>Paused</b>: paused by alice: relay maintenance <span class="muted">(alice, ' in page
    assert 'id="resume-send"' in page and 'id="stop-send"' in page and 'id="pause-send"' not in page

    assert _post(client, delivery_id, "resume").json()["status"] == "sending"
    assert _post(client, delivery_id, "stop").json()["status"] == "stopping"
    trail = client.get(f"/api/deliveries/{delivery_id}", headers={"X-User": "bob"}).json()["audit"]
    assert [(row["action"], row["actor"]) for row in trail if row["action"] != "confirmed"] == [
        ("paused", "alice"), ("resumed", "alice"), ("stopped", "alice"),
    ]  # fmt: skip


def test_without_the_role_the_page_has_no_controls_and_a_post_is_refused(campaign_db, sending) -> None:
    client, delivery_id = sending

    page = client.get(f"/deliveries/{delivery_id}", headers={"X-User": "bob"}).text
    assert 'id="controls"' not in page
    refused = _post(client, delivery_id, "pause", user="bob")
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith(f"User 'bob' may not pause delivery {delivery_id}")
    assert _status(campaign_db.engine, delivery_id) == "sending"
    assert client.post(f"/api/deliveries/{delivery_id}/pause", json={}).status_code == 401


def test_a_control_that_does_not_apply_is_409_with_its_sentence(campaign_db, sending) -> None:
    client, delivery_id = sending
    refused = _post(client, delivery_id, "resume")
    assert (refused.status_code, refused.json()["detail"]) == (
        409,
        f"Delivery {delivery_id} is sending: only a paused delivery can be resumed. Nothing was changed.",
    )
    assert _post(client, 999, "pause").status_code == 404
    assert _post(client, delivery_id, "explode").status_code == 404
    assert _post(client, delivery_id, "pause", reason=["not", "text"]).status_code == 400
    assert _status(campaign_db.engine, delivery_id) == "sending"


def test_a_form_post_from_another_site_cannot_pause(campaign_db, sending) -> None:
    """A cross-site form can send form-encoded bodies without asking the server first; only
    JSON, which a browser only sends cross-site after a CORS preflight, is taken."""
    client, delivery_id = sending
    forged = client.post(f"/api/deliveries/{delivery_id}/pause", data={"reason": "x"}, headers={"X-User": "alice"})
    assert forged.status_code == 415
    assert _status(campaign_db.engine, delivery_id) == "sending"


def test_an_automatic_pause_shows_its_reason_and_figures_on_the_page(campaign_db, sending) -> None:
    client, delivery_id = sending
    engine = campaign_db.engine
    with engine.begin() as conn:
        reading = controls.BrakeReading(processed=500, bounces_errors=212, threshold=30.0, window=500)
        assert controls._change(conn, delivery_id, "auto_paused", None, reading.sentence(), "run-1")

    page = client.get(f"/deliveries/{delivery_id}", headers={"X-User": "alice"}).text
    assert (
        "<b>Paused</b>: automatic brake: 212 of the last 500 processed messages bounced or failed "
        "(42.4 % &gt; 30 %, window 500)"
    ) in page
    assert "(automatic, " in page
