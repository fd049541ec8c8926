"""Confirm send as an operator does it, in a headless Chromium: the Deployment page's button starts
the run, and the approval is answered in Airflow's own UI (Required actions of the run's
approve_send task). Keeps a screenshot of that dialog for the README (test-artifacts/)."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

import pytest
from e2e_support import PASSWORDS, delivery_row, fresh_delivery, mails_per_recipient
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from campaign import approval

pytestmark = pytest.mark.airflow_server

PREFIX = "/campaign-deployment"
VIEWPORT = {"width": 1366, "height": 860}
SPEC = {
    "label": "Winter sale",
    "sender": "Shop <news@shop.test>",
    "subject": "{{ profile.first_name }}, the winter sale starts today",
    "text": "Hello {{ profile.first_name }}, see https://shop.test/winter",
    "html": '<p>Hello {{ profile.first_name }}, see <a href="https://shop.test/winter">the sale</a>.</p>',
}
# The run's approval page, where Confirm send takes the operator: the run id is the one path
# segment Airflow's UI may show percent-encoded.
APPROVAL_URL = re.compile(r"/dags/confirm_send/runs/(?P<run_id>[^/]+)/tasks/approve_send/required_actions$")
# Long enough for a slow scheduler to run check_role and validate, short of the run's own timeout.
STEP_MS = 180_000
# Airflow 3.3.2's scheduler loses an answer given within about a second of the task entering
# awaiting_input (see AirflowClient.wait_for_approval): wait as long as the REST tests do.
SETTLE_MS = 2_500


def logged_in_page(browser, live_airflow, user: str, path: str):
    """A new page of ``user``, logged in through Airflow's login form, showing ``path``."""
    page = browser.new_page(viewport=VIEWPORT)
    target = f"{live_airflow.base_url}{path}"
    page.goto(f"{live_airflow.base_url}/auth/login/?next={quote(target, safe='')}")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.keyboard.press("Enter")
    page.wait_for_url(target, timeout=30_000)
    return page


def confirm_send_until_asked(page) -> str:
    """Click Confirm send on the Deployment page; wait for Airflow's approval page of the run it
    started, showing the options; return the run id."""
    button = page.get_by_role("button", name="Confirm send")
    button.click()
    expect(button).to_be_disabled()  # the first poll of the run comes a second after the trigger
    try:
        page.wait_for_url(APPROVAL_URL, timeout=STEP_MS)
    except PlaywrightTimeout as exc:  # say what the page said, not only that it timed out
        said = page.locator("#message").inner_text()
        raise AssertionError(f"Confirm send did not lead to the approval; the page says {said!r}") from exc
    run_id = unquote(APPROVAL_URL.search(page.url)["run_id"])
    for option in approval.OPTIONS:
        page.get_by_role("button", name=option, exact=True).wait_for(state="visible", timeout=STEP_MS)
    page.wait_for_timeout(SETTLE_MS)
    return run_id


def answer_in_ui(page, live_airflow, run_id: str, option: str, attempts: int = 3) -> None:
    """Click ``option`` on the approval page and make sure Airflow acted on it. When Airflow 3.3.2
    loses the answer (see AirflowClient.wait_for_approval) the run asks again, and the operator
    answers again on the reloaded page, as a person would."""
    for _ in range(attempts):
        asked_in = live_airflow.wait_for_approval(run_id, "alice", settle=0)["task_instance"]["try_number"]
        page.get_by_role("button", name=option, exact=True).click()
        # Airflow says it took the answer, and whose it is.
        page.get_by_text("approve_send response successful").wait_for(state="visible", timeout=30_000)
        page.get_by_text(re.compile(r"^Response received at .* from alice$")).wait_for(state="visible", timeout=30_000)
        if live_airflow.answer_took(run_id, "alice", asked_in):
            return
        live_airflow.wait_for_approval(run_id, "alice", timeout=STEP_MS / 1000)
        page.reload()
        page.get_by_role("button", name=option, exact=True).wait_for(state="visible", timeout=STEP_MS)
    raise AssertionError(f"Airflow lost {attempts} answers in a row to the approval of run {run_id}")


def answered_once(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The audit rows with the questions asked again after an answer Airflow lost folded into the
    first: what the operator decided, once."""
    return [row for i, row in enumerate(rows) if not (i and row[0] == "approval_asked" == rows[i - 1][0])]


def audit_rows(page) -> list[tuple[str, str, str]]:
    """(action, who, run) of each row of the Deployment page's audit table, oldest first."""
    rows = page.locator("#audit tbody tr[data-action]")
    return [
        (row.get_attribute("data-action"), row.locator("td").nth(2).inner_text(), row.locator("td").nth(3).inner_text())
        for row in rows.all()
    ]


def mails_to(live_airflow, addresses: list[str]) -> dict[str, int]:
    received = mails_per_recipient(live_airflow.maildir)
    return {address: received[address] for address in addresses}


def test_alice_confirms_in_airflow_ui_and_the_delivery_is_sent(live_airflow, browser, artifacts):
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=12, spec=SPEC)
    delivery_page = f"{PREFIX}/deliveries/{audience.delivery_id}"
    page = logged_in_page(browser, live_airflow, "alice", delivery_page)

    run_id = confirm_send_until_asked(page)

    # Airflow's own dialog shows what confirm_send asks: the headline and the table of the send.
    headline = f"Send delivery {audience.delivery_id} 'Winter sale' to 12 recipients?"
    page.get_by_text(headline, exact=True).wait_for(state="visible")
    dialog = page.locator("table", has_text="Will be sent to")
    assert dialog.locator("tr", has_text="Will be sent to").inner_text().split() == [
        "Will", "be", "sent", "to", "12", "recipients",
    ]  # fmt: skip
    assert "First0, the winter sale starts today" in dialog.inner_text()
    assert "on, 1 tracked link" in dialog.inner_text()
    # A path: the browser keeps the host it reached Airflow with.
    assert dialog.get_by_role("link", name="Deployment page").get_attribute("href") == delivery_page
    assert "Only alice, who started this run, can answer." in page.inner_text("body")
    assert delivery_row(engine, audience.delivery_id)["status"] == "ready", "nothing goes before the OK"
    assert mails_to(live_airflow, audience.good) == {address: 0 for address in audience.good}
    page.screenshot(path=str(artifacts / "approval-dialog.png"), full_page=True)

    answer_in_ui(page, live_airflow, run_id, approval.OK)

    run = live_airflow.wait_for_run(run_id)
    assert run["state"] == "success", live_airflow.log_path.read_text()[-3000:]
    answered = live_airflow.api("GET", live_airflow.approval_path(run_id), "alice").json()
    assert (answered["chosen_options"], answered["responded_by_user"]["name"]) == ([approval.OK], "alice")
    assert mails_to(live_airflow, audience.good) == {address: 1 for address in audience.good}
    delivery = delivery_row(engine, audience.delivery_id)
    assert (delivery["status"], delivery["confirmed_by"], delivery["run_id"]) == ("sent", "alice", run_id)

    page.goto(f"{live_airflow.base_url}{delivery_page}")
    assert page.locator("h1 .status").inner_text() == "sent"
    assert f"Delivery {audience.delivery_id} · email · confirmed by alice at " in page.inner_text("body")
    assert answered_once(audit_rows(page)) == [("approval_asked", "alice", run_id), ("confirmed", "alice", run_id)]
    assert page.get_by_role("button", name="Confirm send").count() == 0
    page.close()


def test_bob_without_the_role_is_told_the_send_was_refused(live_airflow, browser):
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=4, spec=SPEC)
    page = logged_in_page(browser, live_airflow, "bob", f"{PREFIX}/deliveries/{audience.delivery_id}")

    button = page.get_by_role("button", name="Confirm send")
    button.click()
    expect(button).to_be_disabled()  # while the run checks: a second click would start a second run
    message = page.locator("#message")
    refusal = "confirm_send did not ask for the OK: the send was refused; see the log of check_role."
    page.get_by_text(refusal).wait_for(state="visible", timeout=STEP_MS)
    expect(button).to_be_enabled()
    assert message.inner_text() == refusal
    link = message.get_by_role("link", name="the log of check_role")
    run_id = unquote(link.get_attribute("href").split("/runs/", 1)[1].split("/", 1)[0])
    assert link.get_attribute("href") == f"/dags/confirm_send/runs/{quote(run_id, safe='')}/tasks/check_role"
    assert "/tasks/approve_send/required_actions" not in page.url

    run = live_airflow.wait_for_run(run_id)
    assert (run["state"], run["triggering_user_name"]) == ("failed", "bob")
    states = {name: ti["state"] for name, ti in live_airflow.task_instances(run_id).items()}
    assert (states["check_role[-1]"], states["approve_send[-1]"]) == ("failed", "upstream_failed")
    assert mails_to(live_airflow, audience.good) == {address: 0 for address in audience.good}
    assert delivery_row(engine, audience.delivery_id)["status"] == "ready"
    page.close()


def test_alice_cancels_in_airflow_ui_and_nothing_is_sent(live_airflow, browser):
    engine = live_airflow.engine
    audience = fresh_delivery(engine, good=3, spec=SPEC)
    delivery_page = f"{PREFIX}/deliveries/{audience.delivery_id}"
    page = logged_in_page(browser, live_airflow, "alice", delivery_page)

    run_id = confirm_send_until_asked(page)
    answer_in_ui(page, live_airflow, run_id, approval.CANCEL)

    run = live_airflow.wait_for_run(run_id)
    assert run["state"] == "success", "a Cancel is an answer, not a failure"
    states = {name: ti["state"] for name, ti in live_airflow.task_instances(run_id).items()}
    assert (states["approve_send[-1]"], states["start_send[-1]"], states["send_chunk[-1]"]) == (
        "success", "skipped", "skipped",
    )  # fmt: skip
    assert mails_to(live_airflow, audience.good) == {address: 0 for address in audience.good}
    assert delivery_row(engine, audience.delivery_id)["status"] == "ready"

    page.goto(f"{live_airflow.base_url}{delivery_page}")
    assert page.locator("h1 .status").inner_text() == "ready"
    assert answered_once(audit_rows(page)) == [("approval_asked", "alice", run_id), ("cancelled", "alice", run_id)]
    assert page.get_by_role("button", name="Confirm send").is_visible(), "it can be confirmed again"
    page.close()
