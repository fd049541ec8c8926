"""Bounces and complaints: reading DSNs and feedback reports as real servers write them, applying
them on both databases, and the bounce mailbox over IMAP against a real Dovecot."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from bounce_mail import (
    Sent,
    auto_reply,
    exim_dsn,
    exim_text_bounce,
    feedback_report,
    gmail_dsn,
    microsoft_dsn,
    postfix_dsn,
    truncated,
)
from sqlalchemy import Engine, text

from campaign import bounces, deployment, stats
from campaign.bounces import (
    COMPLAINT,
    DELAYED,
    FORGED_MESSAGE_ID,
    FORGED_RETURN_PATH,
    HARD,
    NOT_A_BOUNCE,
    NOT_A_COMPLAINT,
    NOT_SENT,
    RECIPIENT_MISMATCH,
    SOFT,
    TRUNCATED,
    UNKNOWN_DELIVERY,
    UNUSABLE,
    apply_report,
    process_mailbox,
    read_report,
)
from campaign.clock import utcnow
from campaign.db import sql
from campaign.profiles import profile_history
from campaign.rendering import message_id
from campaign.return_path import ReturnPath
from campaign.schema import profiles

SECRET = b"bounce-test-secret-0123456789"
RETURN_PATH = ReturnPath("bounces", "bounce.shop.test")


def sent(delivery_id: int = 7, profile_id: int = 42, email: str = "sam@example.test") -> Sent:
    return Sent(
        delivery_id,
        profile_id,
        email,
        RETURN_PATH.address(SECRET, delivery_id, profile_id),
        message_id(SECRET, delivery_id, profile_id, "shop.test"),
    )


def without_return_path(one: Sent) -> Sent:
    """The same message sent before CAMPAIGN_RETURN_PATH was set: envelope sender = From."""
    return Sent(one.delivery_id, one.profile_id, one.email, "news@shop.test", one.message_id)


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize(
    ("shape", "build", "kind", "status", "diagnostic_start"),
    [
        ("Postfix user unknown", lambda s: postfix_dsn(s), HARD, "5.1.1", "550 5.1.1 <sam@example.test>: Recipient"),
        ("Postfix queue expired", lambda s: postfix_dsn(s, "soft"), SOFT, "4.4.1", "connect to mail.example.test"),
        ("Postfix delay warning", lambda s: postfix_dsn(s, "delayed"), DELAYED, "4.4.1", "connect to"),
        ("Exim", exim_dsn, HARD, "5.0.0", "550 5.2.1 The email account"),
        ("Gmail no such user", lambda s: gmail_dsn(s), HARD, "5.1.1", "The email account that you tried"),
        ("Gmail delay", lambda s: gmail_dsn(s, "delayed"), DELAYED, "4.2.2", "452 4.2.2"),
        ("Microsoft recipient not found", lambda s: microsoft_dsn(s), HARD, "5.1.10", "550 5.1.10 RESOLVER.ADR"),
        ("Microsoft expired", lambda s: microsoft_dsn(s, "soft"), SOFT, "4.4.7", "400 4.4.7 Message delayed"),
    ],
)
def test_dsns_of_common_servers_map_by_return_path(shape, build, kind, status, diagnostic_start):
    report = read_report(build(sent()), SECRET)

    assert (report.kind, report.dsn_status) == (kind, status), shape
    assert (report.delivery_id, report.profile_id, report.mapped_by) == (7, 42, "return_path")
    assert report.diagnostic.startswith(diagnostic_start)
    assert "\n" not in report.diagnostic and "  " not in report.diagnostic  # unfolded
    assert report.recipient == "sam@example.test"
    assert report.message_id == message_id(SECRET, 7, 42, "shop.test")
    assert re.fullmatch(r"<campaign\.7\.42\.[0-9a-f]{32}@shop\.test>", report.message_id)


def test_a_text_bounce_without_delivery_status_is_recognised_by_the_detector():
    report = read_report(exim_text_bounce(sent()), SECRET)

    assert (report.kind, report.delivery_id, report.profile_id) == (HARD, 7, 42)
    assert report.dsn_status is None and report.recipient == "sam@example.test"
    # The reply its text gives for the failed recipient, not the words around it.
    assert report.diagnostic == "550 No such user here"


def test_a_text_bounce_is_qualified_by_the_reply_it_quotes():
    # The same permanent text bounce (Exim's X-Failed-Recipients) for a full mailbox: the
    # enhanced code in the quoted reply (RFC 2034) makes it soft, as it would a DSN.
    full = exim_text_bounce(sent()).replace(b"550 No such user here", b"552 5.2.2 Mailbox full, try later")
    bare = exim_text_bounce(sent()).replace(b": 550 No such user here", b": no such user here")

    soft = read_report(full, SECRET)
    hard = read_report(bare, SECRET)

    assert (soft.kind, soft.dsn_status, soft.diagnostic) == (SOFT, "5.2.2", "552 5.2.2 Mailbox full, try later")
    assert (hard.kind, hard.dsn_status, hard.diagnostic) == (HARD, None, None)  # permanent, no code: hard


@pytest.mark.parametrize(
    ("status", "diagnostic", "kind"),
    [
        # RFC 3463 3.2, addressing: the address takes no mail.
        ("5.1.1", "550 5.1.1 <sam@example.test>: Recipient address rejected: User unknown", HARD),
        ("5.1.2", "550 5.1.2 Host unknown: domain example.test has no MX", HARD),
        ("5.1.3", "501 5.1.3 Bad recipient address syntax", HARD),
        ("5.1.6", "550 5.1.6 Recipient no longer on server", HARD),
        ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound", HARD),
        ("5.2.1", "550 5.2.1 The email account that you tried to reach is disabled.", HARD),
        ("5.0.0", "550 Requested action not taken: mailbox unavailable", HARD),
        (None, "550 Requested action not taken: mailbox unavailable", HARD),  # no Status field
        # The message, the sender or a server, not the address.
        ("5.2.2", "552 5.2.2 The email account that you tried to reach is over quota.", SOFT),
        ("5.2.3", "552 5.2.3 Message size exceeds maximum permitted", SOFT),
        ("5.3.4", "552 5.3.4 Message too big for system", SOFT),
        ("5.4.4", "550 5.4.4 Unable to route: no MX for example.test", SOFT),
        ("5.5.0", "550 5.5.0 Requested action not taken", SOFT),
        ("5.6.0", "550 5.6.0 Message content rejected", SOFT),
        ("5.7.1", "550 5.7.1 Message rejected as spam by Content Filtering.", SOFT),
        ("5.1.8", "553 5.1.8 Sender address rejected: Domain not found", SOFT),  # our sender, not them
        ("4.2.2", "452 4.2.2 Mailbox full", SOFT),
        # Exim's subject-less 5.0.0: the reply's own code decides (RFC 2034).
        ("5.0.0", "550 5.2.2 Mailbox full", SOFT),
        ("5.0.0", "550 5.1.1 User unknown", HARD),
    ],
)
def test_a_failed_dsn_is_hard_only_when_its_status_says_the_address_takes_no_mail(status, diagnostic, kind):
    data = postfix_dsn(sent(), status=status or "5.9.9", diagnostic=diagnostic)
    if status is None:
        data = data.replace(b"Status: 5.9.9\r\n", b"")

    report = read_report(data, SECRET)

    assert (report.kind, report.dsn_status, report.diagnostic) == (kind, status, diagnostic)


def test_a_failure_with_a_success_status_is_not_a_bounce():
    # "Action: failed" with "Status: 2.0.0" (RFC 3463 3.1: class 2 is success) contradicts itself:
    # no bounce, no quarantine; the message is filed as unusable for a person to read.
    for data in (postfix_dsn(sent(), status="2.0.0", diagnostic="250 2.0.0 Ok: queued as 4Yb2kQ"),
                 postfix_dsn(sent(), status="2.0.0").replace(b"Action: failed", b"Action: delivered")):  # fmt: skip
        report = read_report(data, SECRET)

        assert (report.kind, report.reason) == (UNUSABLE, NOT_A_BOUNCE)


@pytest.mark.parametrize("build", [postfix_dsn, gmail_dsn, microsoft_dsn, exim_dsn])
def test_without_return_path_the_enclosed_message_id_maps_it(build):
    report = read_report(build(without_return_path(sent())), SECRET)

    assert (report.kind, report.delivery_id, report.profile_id, report.mapped_by) == (HARD, 7, 42, "message_id")


def test_feedback_reports_are_complaints():
    yahoo = read_report(feedback_report(sent()), SECRET)
    jmrp = read_report(
        feedback_report(sent(), user_agent="Microsoft JMRP", original_mail_from=False, return_path_in_original=False),
        SECRET,
    )

    assert (yahoo.kind, yahoo.delivery_id, yahoo.profile_id, yahoo.mapped_by) == (COMPLAINT, 7, 42, "return_path")
    assert (yahoo.feedback_type, yahoo.user_agent) == ("abuse", "Yahoo!-Mail-Feedback/2.0")
    assert yahoo.recipient == "redacted@example.test"
    assert (jmrp.kind, jmrp.delivery_id, jmrp.profile_id, jmrp.mapped_by) == (COMPLAINT, 7, 42, "message_id")
    assert read_report(feedback_report(sent(), "fraud"), SECRET).kind == COMPLAINT


@pytest.mark.parametrize(
    ("what", "data", "reason"),
    [
        ("an out-of-office reply", auto_reply(sent()), NOT_A_BOUNCE),
        ("a person's mail", b"From: a@example.test\r\nTo: bounces@bounce.shop.test\r\n\r\nhi\r\n", NOT_A_BOUNCE),
        ("a DSN of mail not ours", postfix_dsn(Sent(1, 1, "x@e.test", "x@o.test", "<a@b>")), UNKNOWN_DELIVERY),
        ("a DSN cut in its delivery-status part", truncated(postfix_dsn(sent())), TRUNCATED),
        ("a DSN cut in its per-recipient fields", truncated(microsoft_dsn(sent()), b"Status:"), TRUNCATED),
        ("a feedback report cut before its fields", truncated(feedback_report(sent()), b"Feedback-Type"), TRUNCATED),
        ("a not-spam feedback report", feedback_report(sent(), "not-spam"), NOT_A_COMPLAINT),
        ("garbage", b"\x00\xff" * 100, NOT_A_BOUNCE),
        ("nothing", b"", NOT_A_BOUNCE),
    ],
)  # fmt: skip
def test_unusable_mail_says_why(what, data, reason):
    report = read_report(data, SECRET)

    assert (report.kind, report.reason) == (UNUSABLE, reason), what
    assert report.outcome == f"unusable: {reason}"


def test_a_forged_or_altered_return_path_never_maps_not_even_by_message_id():
    real = sent()
    altered = Sent(7, 43, real.email, real.return_path.replace("+7.42.", "+7.43."), real.message_id)
    other_key = Sent(
        7, 42, real.email, ReturnPath("bounces", "bounce.shop.test").address(b"x" * 20, 7, 42), real.message_id
    )

    for forged in (altered, other_key):
        for data in (postfix_dsn(forged), feedback_report(forged), microsoft_dsn(forged)):
            report = read_report(data, SECRET)
            assert (report.kind, report.reason, report.delivery_id) == (UNUSABLE, FORGED_RETURN_PATH, None)


def test_a_return_path_in_capitals_still_maps():
    one = sent()
    shouted = Sent(7, 42, one.email, one.return_path.upper(), one.message_id)

    assert read_report(postfix_dsn(shouted), SECRET).delivery_id == 7


# ---------------------------------------------------------------- applying, on both databases


def _sent_delivery(engine: Engine, count: int, ready_delivery) -> tuple[int, list[Sent]]:
    """A delivery whose ``count`` recipients were all accepted by the relay: 'sent' rows with
    their Message-IDs, KPIs aggregated as at the end of the send."""
    delivery_id = ready_delivery(engine, recipients=count)
    now = utcnow()
    with engine.begin() as conn:
        targets = conn.execute(
            text("SELECT seq, profile_id, email FROM delivery_targets WHERE delivery_id = :d ORDER BY seq"),
            {"d": delivery_id},
        ).all()
        conn.execute(
            sql("insert_broad_log"),
            [
                {
                    "delivery_id": delivery_id, "profile_id": t.profile_id, "seq": t.seq, "email": t.email,
                    "status": "sent", "failure_type": None, "reason": None, "smtp_code": 250, "smtp_reply": "ok",
                    "message_id": message_id(SECRET, delivery_id, t.profile_id, "shop.test"), "attempts": 1,
                    "worker": "test", "run_id": "r", "logged_at": now - timedelta(minutes=5),
                }
                for t in targets
            ],
        )  # fmt: skip
    stats.compute_kpis(engine, delivery_id)
    return delivery_id, [sent(delivery_id, t.profile_id, t.email) for t in targets]


def _log(engine: Engine, one: Sent) -> dict:
    with engine.begin() as conn:
        return dict(
            conn.execute(
                text("SELECT * FROM broad_logs WHERE delivery_id = :d AND profile_id = :p"),
                {"d": one.delivery_id, "p": one.profile_id},
            )
            .mappings()
            .one()
        )


def _profile(engine: Engine, profile_id: int) -> dict:
    with engine.begin() as conn:
        return dict(conn.execute(profiles.select().where(profiles.c.id == profile_id)).mappings().one())


def _kpis(engine: Engine, delivery_id: int) -> dict:
    with engine.begin() as conn:
        return stats.stored_kpis(conn, delivery_id)


def _complaints(engine: Engine, delivery_id: int) -> int:
    with engine.begin() as conn:
        return conn.execute(
            text("SELECT COUNT(*) FROM tracking_logs WHERE delivery_id = :d AND event_type = 'complaint'"),
            {"d": delivery_id},
        ).scalar_one()


def test_bounces_and_complaints_move_the_rows_the_profiles_and_the_kpis(campaign_db, ready_delivery):
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 10, ready_delivery)
    hard, soft, delayed, complainer = recipients[0], recipients[1], recipients[2], recipients[3]
    assert _kpis(engine, delivery_id)["delivered"] == 10

    reports = [
        postfix_dsn(hard),
        microsoft_dsn(soft, "soft"),
        gmail_dsn(delayed, "delayed"),
        feedback_report(complainer),
    ]
    outcomes = [apply_report(engine, read_report(data, SECRET)) for data in reports]
    for delivery in {delivery_id}:
        stats.compute_kpis(engine, delivery)

    assert [(a.report.kind, a.changed, a.quarantined, a.blocklisted) for a in outcomes] == [
        (HARD, True, True, False),
        (SOFT, True, False, False),
        (DELAYED, False, False, False),
        (COMPLAINT, True, False, True),
    ]
    row = _log(engine, hard)
    assert (row["status"], row["failure_type"], row["dsn_status"]) == ("bounced", "hard", "5.1.1")
    assert row["dsn_diagnostic"].startswith("550 5.1.1") and row["bounced_at"] is not None
    assert row["smtp_code"] == 250, "what the relay said at send time stays"
    assert _profile(engine, hard.profile_id)["quarantine_reason"].startswith("hard bounce (DSN) 5.1.1: 550 5.1.1")
    row = _log(engine, soft)
    assert (row["status"], row["failure_type"], row["dsn_status"]) == ("bounced", "soft", "4.4.7")
    assert _profile(engine, soft.profile_id)["quarantine_reason"] is None, "a soft bounce does not quarantine"
    assert _log(engine, delayed)["status"] == "sent" and _log(engine, delayed)["bounced_at"] is None
    assert _log(engine, complainer)["status"] == "sent"
    assert _profile(engine, complainer.profile_id)["blocklisted"] is True
    assert _complaints(engine, delivery_id) == 1

    kpis = _kpis(engine, delivery_id)
    assert (kpis["delivered"], kpis["hard_bounces"], kpis["soft_bounces"], kpis["bounces_errors"]) == (8, 1, 1, 2)
    assert kpis["processed"] == 10
    assert kpis["delivered_rate"] == pytest.approx(0.8)
    assert kpis["complaints"] == 1 and kpis["complaint_rate"] == pytest.approx(1 / 8)
    # Compute stats recomputes the same figures from the logs: nothing to change.
    recomputed = stats.recompute_delivery(engine, delivery_id)
    assert {k: recomputed.before[k] for k in stats.KPI_COLUMNS} == {k: recomputed.after[k] for k in stats.KPI_COLUMNS}


def test_applying_again_changes_nothing(campaign_db, ready_delivery):
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 3, ready_delivery)
    reports = [read_report(postfix_dsn(recipients[0]), SECRET), read_report(feedback_report(recipients[1]), SECRET)]
    first = [apply_report(engine, report) for report in reports]
    before = (_log(engine, recipients[0]), _profile(engine, recipients[0].profile_id))

    again = [apply_report(engine, report) for report in reports]
    # A later soft DSN for the row that hard-bounced leaves it hard.
    later_soft = apply_report(engine, read_report(microsoft_dsn(recipients[0], "soft"), SECRET)).changed

    assert [(a.changed, a.quarantined or a.blocklisted) for a in first] == [(True, True)] * 2
    assert [(a.changed, a.quarantined or a.blocklisted) for a in again] == [(False, False)] * 2
    assert later_soft is False
    assert (_log(engine, recipients[0]), _profile(engine, recipients[0].profile_id)) == before
    assert _complaints(engine, delivery_id) == 1


def test_a_hard_dsn_after_a_soft_one_makes_the_row_hard(campaign_db, ready_delivery):
    # The mailbox was full (soft), then the account was closed (hard): row and profile agree.
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 3, ready_delivery)
    one = recipients[0]
    full = postfix_dsn(one, status="5.2.2", diagnostic="552 5.2.2 Over quota")
    soft = apply_report(engine, read_report(full, SECRET))
    assert (soft.report.kind, soft.changed, soft.quarantined) == (SOFT, True, False)
    first_bounce = _log(engine, one)["bounced_at"]

    hard = apply_report(engine, read_report(postfix_dsn(one), SECRET))
    again = apply_report(engine, read_report(postfix_dsn(one), SECRET))
    kpis = stats.compute_kpis(engine, delivery_id)

    assert (hard.report.kind, hard.changed, hard.quarantined) == (HARD, True, True)
    assert (again.changed, again.quarantined) == (False, False), "the same hard DSN again: already applied"
    row = _log(engine, one)
    assert (row["status"], row["failure_type"], row["dsn_status"]) == ("bounced", "hard", "5.1.1")
    assert row["reason"] == "hard bounce reported by DSN 5.1.1" and row["dsn_diagnostic"].startswith("550 5.1.1")
    assert row["bounced_at"] == first_bounce, "it bounced when the first DSN said so"
    assert _profile(engine, one.profile_id)["quarantine_reason"].startswith("hard bounce (DSN) 5.1.1: 550 5.1.1")
    assert (kpis["hard_bounces"], kpis["soft_bounces"], kpis["delivered"]) == (1, 0, 2)


@pytest.mark.parametrize(
    ("status", "diagnostic"),
    [
        ("5.2.2", "552 5.2.2 The email account that you tried to reach is over quota."),
        ("5.7.1", "550 5.7.1 Message rejected as spam by Content Filtering."),
        ("4.4.1", "421 4.4.1 Connection timed out"),
    ],
)
def test_a_soft_bounce_never_quarantines(campaign_db, ready_delivery, status, diagnostic):
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 2, ready_delivery)
    one = recipients[0]

    applied = apply_report(engine, read_report(postfix_dsn(one, status=status, diagnostic=diagnostic), SECRET))

    assert (applied.report.kind, applied.changed, applied.quarantined) == (SOFT, True, False)
    assert (_log(engine, one)["failure_type"], _log(engine, one)["dsn_status"]) == ("soft", status)
    assert _profile(engine, one.profile_id)["quarantine_reason"] is None


def test_a_text_bounce_quarantines_with_the_reply_it_quotes_or_a_plain_reason(campaign_db, ready_delivery):
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 2, ready_delivery)
    quoted, bare = recipients
    no_reply = exim_text_bounce(bare).replace(b": 550 No such user here", b": no such user here")

    applied = [apply_report(engine, read_report(data, SECRET)) for data in (exim_text_bounce(quoted), no_reply)]

    assert [(a.report.kind, a.changed, a.quarantined) for a in applied] == [(HARD, True, True)] * 2
    assert _profile(engine, quoted.profile_id)["quarantine_reason"] == "hard bounce (DSN): 550 No such user here"
    assert _profile(engine, bare.profile_id)["quarantine_reason"] == "hard bounce (DSN)"
    assert _log(engine, quoted)["dsn_diagnostic"] == "550 No such user here"
    assert _log(engine, bare)["reason"] == "hard bounce reported by DSN"


@pytest.mark.parametrize(
    ("status", "failure_type"),
    [
        ("failed", None),  # an error at send time: no message left
        ("bounced", "hard"),  # refused at RCPT at send time, with its SMTP reply
        ("ignored", None),  # never sent: blocklisted or quarantined before the send
        ("cancelled", None),  # the delivery was stopped before its turn
    ],
)
def test_a_report_for_a_message_that_never_left_changes_nothing(campaign_db, ready_delivery, status, failure_type):
    # Only a message the relay accepted can bounce later or be complained about; a report naming
    # any other row (a leaked secret, a confused relay) must not quarantine, blocklist or count.
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 2, ready_delivery)
    one = recipients[0]
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE broad_logs SET status = :s, failure_type = :f, reason = 'at send time' WHERE profile_id = :p"),
            {"s": status, "f": failure_type, "p": one.profile_id},
        )
    before = (_log(engine, one), _profile(engine, one.profile_id))

    results = [
        apply_report(engine, read_report(data, SECRET))
        for data in (postfix_dsn(one), microsoft_dsn(one, "soft"), feedback_report(one))
    ]

    assert [(a.report.kind, a.report.reason, a.report.delivery_id, a.changed) for a in results] == [
        (UNUSABLE, NOT_SENT, delivery_id, False)
    ] * 3
    assert (_log(engine, one), _profile(engine, one.profile_id)) == before
    assert _complaints(engine, delivery_id) == 0


@pytest.mark.parametrize("dsn_first", [True, False], ids=["dsn-then-complaint", "complaint-then-dsn"])
def test_a_complaint_and_a_dsn_for_one_message_blocklist_but_leave_the_rate(campaign_db, ready_delivery, dsn_first):
    # The message was accepted, complained about and bounced by DSN, in either order: the person
    # is blocklisted, but the complaint rate divides by delivered, which no longer holds them.
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 4, ready_delivery)
    one = recipients[0]
    reports = [postfix_dsn(one), feedback_report(one)]

    results = [apply_report(engine, read_report(data, SECRET)) for data in (reports if dsn_first else reports[::-1])]
    kpis = stats.compute_kpis(engine, delivery_id)

    assert sorted((a.report.kind, a.changed) for a in results) == [(COMPLAINT, True), (HARD, True)]
    assert _profile(engine, one.profile_id)["blocklisted"] is True and _complaints(engine, delivery_id) == 1
    assert (kpis["delivered"], kpis["complaints"], kpis["complaint_rate"]) == (3, 0, 0.0)


def test_8bit_text_in_a_diagnostic_code_is_kept_as_the_server_wrote_it(campaign_db, ready_delivery):
    # Servers write their own language there (RFC 6533 allows UTF-8); older ones write Latin-1.
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 2, ready_delivery)
    words = "Benutzer unbekannt, Postfach gelöscht"
    for one, encoding in zip(recipients, ("utf-8", "latin-1"), strict=True):
        data = postfix_dsn(one).replace(b"Recipient address rejected: User\r\n    unknown", words.encode(encoding))
        assert words.encode(encoding) in data

        report, changed, *_ = apply_report(engine, read_report(data, SECRET))

        assert changed is True
        assert f"<{one.email}>: {words} in virtual mailbox table" in report.diagnostic, report.diagnostic
        assert _log(engine, one)["dsn_diagnostic"] == report.diagnostic
        assert words in _profile(engine, one.profile_id)["quarantine_reason"]


def test_a_report_naming_no_row_we_sent_is_unknown(campaign_db, ready_delivery):
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 1, ready_delivery)
    one = recipients[0]
    cases = [
        sent(delivery_id + 99, one.profile_id),  # a signed return path of a delivery that does not exist (any more)
        without_return_path(sent(delivery_id + 99, one.profile_id)),  # a Message-ID of no delivery
        # The right row's signed id with another domain: not the Message-ID the row was sent with.
        Sent(delivery_id, one.profile_id, one.email, "news@shop.test",
             message_id(SECRET, delivery_id, one.profile_id, "evil.test")),
    ]  # fmt: skip

    outcomes = [apply_report(engine, read_report(postfix_dsn(case), SECRET)) for case in cases]

    assert [(a.report.kind, a.report.reason, a.changed) for a in outcomes] == [(UNUSABLE, UNKNOWN_DELIVERY, False)] * 3
    assert _log(engine, one)["status"] == "sent"
    assert _profile(engine, one.profile_id)["quarantine_reason"] is None


def test_a_guessed_message_id_touches_nothing(campaign_db, ready_delivery):
    # Fresh-user finding: without a return path, a DSN or feedback report naming
    # <campaign.{delivery}.{profile}@domain> (sequential, guessable) quarantined or blocklisted any
    # recipient for anyone who can mail the bounce mailbox. Message-IDs are signed now.
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 3, ready_delivery)
    victim = recipients[0]
    signed = victim.message_id
    guesses = [
        f"<campaign.{delivery_id}.{victim.profile_id}@shop.test>",  # the unsigned shape
        signed.replace(f".{victim.profile_id}.", f".{recipients[1].profile_id}."),  # another recipient, same MAC
        signed[:-15] + ("0" if signed[-15] != "0" else "1") + signed[-14:],  # one digit of the MAC changed
    ]
    forged = [
        build(Sent(delivery_id, victim.profile_id, victim.email, "news@shop.test", guess))
        for guess in guesses
        for build in (postfix_dsn, feedback_report)
    ]

    results = [apply_report(engine, read_report(data, SECRET)) for data in forged]

    assert [(a.report.kind, a.report.reason, a.changed) for a in results] == [(UNUSABLE, FORGED_MESSAGE_ID, False)] * 6
    assert _log(engine, victim)["status"] == "sent"
    assert _profile(engine, victim.profile_id)["blocklisted"] is False
    assert _profile(engine, victim.profile_id)["quarantine_reason"] is None
    assert _complaints(engine, delivery_id) == 0
    # The real one still maps without a return path.
    real = apply_report(
        engine, read_report(feedback_report(without_return_path(victim), original_rcpt_to=victim.email), SECRET)
    )
    assert (real.report.kind, real.report.mapped_by) == (COMPLAINT, "message_id")
    assert (real.changed, real.blocklisted) == (True, True)


def test_a_forged_return_path_touches_nothing(campaign_db, ready_delivery):
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 2, ready_delivery)
    victim = recipients[0]
    forged = Sent(
        delivery_id, victim.profile_id, victim.email,
        RETURN_PATH.address(SECRET, delivery_id, recipients[1].profile_id).replace(
            f".{recipients[1].profile_id}.", f".{victim.profile_id}."
        ),
        victim.message_id,
    )  # fmt: skip

    results = [
        apply_report(engine, read_report(data, SECRET)) for data in (postfix_dsn(forged), feedback_report(forged))
    ]

    assert [(a.report.reason, a.changed) for a in results] == [(FORGED_RETURN_PATH, False)] * 2
    assert _log(engine, victim)["status"] == "sent"
    assert _profile(engine, victim.profile_id)["blocklisted"] is False
    assert _complaints(engine, delivery_id) == 0


def test_a_report_about_another_recipient_enclosing_a_real_message_id_touches_nothing(campaign_db, ready_delivery):
    # User-test finding: without a return path, a DSN about B (Final-Recipient) or a feedback
    # report naming B (Original-Rcpt-To) that enclosed A's real signed Message-ID quarantined or
    # blocklisted A.
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 3, ready_delivery)
    victim, other = recipients[0], recipients[1]
    about_other = Sent(delivery_id, victim.profile_id, other.email, "news@shop.test", victim.message_id)
    reports = [
        postfix_dsn(about_other),
        microsoft_dsn(about_other),
        feedback_report(without_return_path(victim), original_rcpt_to=other.email),
    ]

    results = [apply_report(engine, read_report(data, SECRET)) for data in reports]

    assert [(a.report.kind, a.report.reason, a.changed) for a in results] == [(UNUSABLE, RECIPIENT_MISMATCH, False)] * 3
    assert all(not (a.quarantined or a.blocklisted) for a in results)
    assert _log(engine, victim)["status"] == "sent"
    assert _profile(engine, victim.profile_id)["quarantine_reason"] is None
    assert _profile(engine, victim.profile_id)["blocklisted"] is False
    assert _complaints(engine, delivery_id) == 0


def test_a_report_naming_the_recipient_or_no_one_still_maps_by_message_id(campaign_db, ready_delivery, add_profiles):
    engine = campaign_db.engine
    add_profiles(engine, ["ann@bücher.test"])
    delivery_id, recipients = _sent_delivery(engine, 3, ready_delivery)
    ann = next(one for one in recipients if one.email == "ann@bücher.test")
    forwarder, complainer = [without_return_path(one) for one in recipients if one is not ann][:2]
    # Ann's address as a server writes it: in capitals, its domain as the A-label (RFC 5891).
    ann_on_the_wire = Sent(delivery_id, ann.profile_id, "ANN@XN--BCHER-KVA.test", "news@shop.test", ann.message_id)

    results = [
        apply_report(engine, read_report(data, SECRET))
        for data in (
            postfix_dsn(ann_on_the_wire),
            # Forwarded: the address it was forwarded to failed; Original-Recipient is ours.
            postfix_dsn(forwarder, forwarded_to="elsewhere@forward.test"),
            feedback_report(complainer, original_rcpt_to=None),  # the provider left the recipient out
        )
    ]

    assert [(a.report.kind, a.report.mapped_by, a.changed) for a in results] == [
        (HARD, "message_id", True),
        (HARD, "message_id", True),
        (COMPLAINT, "message_id", True),
    ]
    assert _profile(engine, ann.profile_id)["quarantine_reason"].startswith("hard bounce (DSN) 5.1.1")
    assert _profile(engine, complainer.profile_id)["blocklisted"] is True


def test_the_recipients_history_shows_the_dsn_and_the_complaint(campaign_db, ready_delivery):
    # Each delivery shows in every recipient's history: what came back after the send too.
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 2, ready_delivery)
    bounced, complainer = recipients
    for data in (postfix_dsn(bounced), feedback_report(complainer)):
        assert apply_report(engine, read_report(data, SECRET)).changed is True

    _, bounced_history = profile_history(engine, bounced.email)
    _, complainer_history = profile_history(engine, complainer.email)

    row = bounced_history.iloc[0]
    assert (row["send_status"], row["failure_type"], row["dsn_status"]) == ("bounced", "hard", "5.1.1")
    assert row["bounced_at"] is not None and row["complained_at"] is None
    row = complainer_history.iloc[0]
    assert (row["send_status"], row["bounced_at"], row["complained_at"] is not None) == ("sent", None, True)


def test_the_profile_page_says_both_states_and_no_send_time_for_a_message_that_never_left(campaign_db, ready_delivery):
    # Fresh-user findings: a profile quarantined and blocklisted read "blocklisted" only; a row
    # refused at the send showed a send time; SQLite's blocklisted came out as 1 in the JSON.
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 2, ready_delivery)
    both, refused = recipients
    for data in (postfix_dsn(both), feedback_report(both)):
        assert apply_report(engine, read_report(data, SECRET)).changed is True
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE broad_logs SET status = 'bounced', failure_type = 'hard' WHERE profile_id = :p"),
            {"p": refused.profile_id},
        )

    page = deployment.profile_page(engine, both.email)
    never_left = deployment.profile_page(engine, refused.email)["deliveries"][0]

    assert page["profile"]["blocklisted"] is True
    assert page["profile"]["state"].startswith("blocklisted · quarantined: hard bounce (DSN) 5.1.1")
    assert page["deliveries"][0]["sent_at"] is not None  # accepted, then bounced by DSN
    assert (never_left["send_status"], never_left["sent_at"]) == ("bounced", None)


# ---------------------------------------------------------------- the mailbox, against a real Dovecot


def test_the_mailbox_round_trip_files_everything_and_deletes_nothing(campaign_db, ready_delivery, imap_server, caplog):
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 8, ready_delivery)
    good = [
        postfix_dsn(recipients[0]),
        exim_dsn(recipients[1]),
        gmail_dsn(recipients[2]),
        microsoft_dsn(recipients[3], "soft"),
        postfix_dsn(recipients[4], "delayed"),
        feedback_report(recipients[5]),
        feedback_report(recipients[5]),  # the same complaint twice: one event
    ]
    forged = Sent(delivery_id, recipients[6].profile_id, recipients[6].email,
                  recipients[6].return_path.replace(".", ".0", 1), recipients[6].message_id)  # fmt: skip
    bad = [
        auto_reply(recipients[7]),
        postfix_dsn(without_return_path(sent(delivery_id + 5, 1))),
        truncated(gmail_dsn(recipients[7])),
        postfix_dsn(forged),
    ]
    for data in good + bad:
        imap_server.append(data)

    with imap_server.client() as client, caplog.at_level(logging.INFO):
        summary = process_mailbox(client, engine, SECRET)

    assert summary.read == 11
    # Each message counted once: the second copy of the complaint is "already applied".
    assert (summary.count(HARD), summary.count(SOFT), summary.count(DELAYED), summary.count(COMPLAINT)) == (3, 1, 1, 1)
    assert summary.unusable() == {
        NOT_A_BOUNCE: 1, UNKNOWN_DELIVERY: 1, TRUNCATED: 1, FORGED_RETURN_PATH: 1, NOT_A_COMPLAINT: 0, "unreadable": 0,
        NOT_SENT: 0, FORGED_MESSAGE_ID: 0, RECIPIENT_MISMATCH: 0,
    }  # fmt: skip
    assert summary.unchanged == 1 and summary.deliveries == {delivery_id}
    assert (summary.quarantined, summary.blocklisted) == (3, 1)
    line = summary.summary_line()
    assert line.startswith("process_bounces: 11 messages read, 5 DSNs (hard 3, soft 1, delayed 1), 1 complaints, ")
    assert ", 1 already applied, profiles quarantined 3 and blocklisted 1," in line
    assert "4 unusable (not a bounce 1, unknown delivery 1, truncated 1, forged return path 1)" in line
    assert f"KPIs recomputed for delivery {delivery_id}, moved 7 to Processed and 4 to Unusable" in line

    # Every message is kept, byte for byte, in the folder it belongs to; the inbox holds no
    # message at all, not even one flagged \Deleted: Dovecot offers MOVE once logged in, and
    # the run asked it then (imaplib's list from before the login has no MOVE).
    assert imap_server.messages("INBOX") == []  # SEARCH ALL
    assert sorted(imap_server.messages("Processed")) == sorted(good)
    assert sorted(imap_server.messages("Unusable")) == sorted(bad)
    assert {"Processed", "Unusable"} <= imap_server.folders()
    sent_commands = imap_server.commands()
    assert [c.split()[:2] for c in sent_commands if c.startswith(("UID MOVE", "UID COPY", "UID STORE"))] == [
        ["UID", "MOVE"]
    ] * 2

    kpis = _kpis(engine, delivery_id)
    assert (kpis["delivered"], kpis["hard_bounces"], kpis["soft_bounces"], kpis["complaints"]) == (4, 3, 1, 1)
    assert kpis["complaint_rate"] == pytest.approx(1 / 4)

    # The next run finds nothing; mail put back into the inbox (a crash before the move) changes nothing.
    with imap_server.client() as client:
        assert process_mailbox(client, engine, SECRET).read == 0
    for data in good:
        imap_server.append(data)
    with imap_server.client() as client:
        again = process_mailbox(client, engine, SECRET)
    assert (again.read, again.unchanged, again.deliveries) == (7, 6, set())  # all but the delay
    assert _kpis(engine, delivery_id)["delivered"] == 4 and _complaints(engine, delivery_id) == 1


def test_each_unusable_message_gets_a_log_line_saying_why_up_to_a_cap(campaign_db, ready_delivery, imap_server, caplog):
    # User-test finding: only the summary counted unusable mail; nothing said which message went
    # to Unusable and why. Junk by the thousand must not fill the task log, though.
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 2, ready_delivery)
    victim = recipients[0]
    forged = Sent(delivery_id, victim.profile_id, victim.email, victim.return_path.replace(".", ".0", 1),
                  victim.message_id)  # fmt: skip
    about_other = Sent(delivery_id, victim.profile_id, recipients[1].email, "news@shop.test", victim.message_id)
    imap_server.append(postfix_dsn(forged))
    imap_server.append(postfix_dsn(about_other))
    imap_server.append(auto_reply(victim))
    junk = [f"From: Bot {n} <bot{n}@spam.test>\r\nSubject: offer {n}\r\n\r\nbuy\r\n".encode() for n in range(19)]
    for data in junk:
        imap_server.append(data)
    imap_server.append(postfix_dsn(forged))  # the 23rd: past the cap

    with imap_server.client() as client, caplog.at_level(logging.INFO, logger="campaign.bounces"):
        summary = process_mailbox(client, engine, SECRET)

    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "campaign.bounces"]
    assert summary.moved[bounces.UNUSABLE_FOLDER] == 23
    assert lines[:3] == [
        ("WARNING", "unusable message UID 1, Message-ID <20261130101502.8C2E41A07B@mx1.example.test>, "
                    "From MAILER-DAEMON@mx1.example.test: forged return path"),
        ("WARNING", "unusable message UID 2, Message-ID <20261130101502.8C2E41A07B@mx1.example.test>, "
                    "From MAILER-DAEMON@mx1.example.test: recipient mismatch"),
        ("INFO", f"unusable message UID 3, Message-ID <oof.1796033702@example.test>, From {victim.email}: "
                 "not a bounce"),
    ]  # fmt: skip
    assert lines[3] == ("INFO", "unusable message UID 4, Subject 'offer 0', From bot0@spam.test: not a bounce")
    assert len(lines) == 21
    assert lines[19][1].startswith("unusable message UID 20, Subject 'offer 16',")
    # Three not listed, a forged one among them: the line is a warning too.
    assert lines[20] == ("WARNING", "and 3 more unusable messages not listed")


def test_the_summary_line_says_when_a_hard_dsn_upgraded_a_soft_bounce(campaign_db, ready_delivery, imap_server):
    # User-test finding: a soft then a hard DSN for one recipient in one run read "hard 1, soft 1"
    # while one row bounced; the line now says the hard one upgraded the soft one.
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 2, ready_delivery)
    imap_server.append(microsoft_dsn(recipients[0], "soft"))
    imap_server.append(postfix_dsn(recipients[0]))
    imap_server.append(postfix_dsn(recipients[1]))

    with imap_server.client() as client:
        summary = process_mailbox(client, engine, SECRET)

    assert (summary.count(HARD), summary.count(SOFT), summary.upgraded) == (2, 1, 1)
    assert "3 DSNs (hard 2 (1 upgraded from soft), soft 1, delayed 0)" in summary.summary_line()
    assert summary.as_dict()["upgraded_from_soft"] == 1
    kpis = _kpis(engine, delivery_id)
    assert (kpis["hard_bounces"], kpis["soft_bounces"]) == (2, 0)


def _filing_commands(server) -> list[str]:
    """What the product sent to file mail: its MOVE, COPY, STORE and EXPUNGE commands, verb only."""
    verbs = ("UID MOVE", "UID COPY", "UID STORE", "UID EXPUNGE", "MOVE", "COPY", "STORE", "EXPUNGE")
    return [next(v for v in verbs if c.startswith(v + " ") or c == v) for c in server.commands() if c.startswith(verbs)]


def test_without_move_the_run_copies_and_expunges_only_its_own_messages(campaign_db, dovecot_without):
    # A real Dovecot that does not announce MOVE (RFC 6851) but UIDPLUS (RFC 4315): COPY, flag
    # \Deleted and UID EXPUNGE of those UIDs; a message someone else flagged \Deleted stays.
    server = dovecot_without("MOVE")
    for number in range(3):
        server.append(f"Subject: {number}\r\n\r\nbody {number}\r\n".encode())
    with server.client() as client:
        client.append("INBOX", r"(\Deleted)", None, b"Subject: theirs\r\n\r\nflagged by someone else\r\n")

    with server.client() as client:
        summary = process_mailbox(client, campaign_db.engine, SECRET)

    assert (summary.read, summary.moved[bounces.UNUSABLE_FOLDER]) == (3, 3)
    assert server.messages("INBOX") == [b"Subject: theirs\r\n\r\nflagged by someone else\r\n"]
    assert len(server.messages("Unusable")) == 3
    assert _filing_commands(server) == ["UID COPY", "UID STORE", "UID EXPUNGE"]


def test_without_uidplus_filed_mail_stays_flagged_and_the_next_run_skips_it(campaign_db, dovecot_without):
    # A real Dovecot announcing neither MOVE nor UIDPLUS: no UID EXPUNGE, and a plain EXPUNGE would
    # also remove what someone else flagged. The copies are filed, the originals stay flagged
    # \Deleted (never removed by us), and the next run does not read them again.
    server = dovecot_without("MOVE", "UIDPLUS")
    for number in range(3):
        server.append(f"Subject: {number}\r\n\r\nbody {number}\r\n".encode())
    with server.client() as client:
        first = process_mailbox(client, campaign_db.engine, SECRET)
    with server.client() as client:
        second = process_mailbox(client, campaign_db.engine, SECRET)

    assert (first.read, first.moved[bounces.UNUSABLE_FOLDER], second.read) == (3, 3, 0)
    assert server.messages("INBOX", "UNDELETED") == []
    assert len(server.messages("INBOX", "DELETED")) == 3  # still there, flagged: nothing expunged
    assert len(server.messages("Unusable")) == 3
    assert _filing_commands(server) == ["UID COPY", "UID STORE"]


def test_a_database_error_stops_the_run_and_files_only_what_was_committed(campaign_db, ready_delivery, imap_server):
    engine = campaign_db.engine
    delivery_id, recipients = _sent_delivery(engine, 2, ready_delivery)
    imap_server.append(postfix_dsn(recipients[0]))
    imap_server.append(postfix_dsn(recipients[1]))
    calls = []
    real_apply = bounces.apply_report

    def failing_second(engine_, report, now=None):
        calls.append(report)
        if len(calls) == 2:
            raise bounces.MailboxUnavailable("simulated: the database went away")
        return real_apply(engine_, report, now)

    with imap_server.client() as client, pytest.MonkeyPatch.context() as patch:
        patch.setattr(bounces, "apply_report", failing_second)
        with pytest.raises(bounces.MailboxUnavailable):
            process_mailbox(client, engine, SECRET)

    assert len(imap_server.messages("Processed")) == 1 and len(imap_server.messages("INBOX")) == 1
    assert _log(engine, recipients[0])["status"] == "bounced" and _log(engine, recipients[1])["status"] == "sent"
    # The filed bounce is in the stored KPIs already: the next run finds it filed, not to apply.
    with engine.begin() as conn:
        kpis = stats.stored_kpis(conn, delivery_id)
    assert (kpis["delivered"], kpis["hard_bounces"]) == (1, 1)


def test_the_summary_line_names_the_deliveries_and_counts_the_profiles():
    summary = bounces.MailboxSummary(read=14, quarantined=2, blocklisted=1, seconds=0.5)
    summary.outcomes.update({HARD: 2, COMPLAINT: 1, f"{UNUSABLE}: {NOT_A_BOUNCE}": 11})

    named = []
    for deliveries in (set(), {12}, {3, 5, 7}, set(range(1, 14))):
        summary.deliveries = deliveries
        named.append(summary.summary_line())

    assert named[0] == (
        "process_bounces: 14 messages read, 2 DSNs (hard 2, soft 0, delayed 0), 1 complaints, 11 unusable "
        "(not a bounce 11), 0 already applied, profiles quarantined 2 and blocklisted 1, KPIs recomputed for "
        "no delivery, moved 0 to Processed and 0 to Unusable (0.50s)"
    )
    assert "KPIs recomputed for delivery 12, moved" in named[1]
    assert "KPIs recomputed for deliveries 3, 5, 7, moved" in named[2]
    assert "KPIs recomputed for deliveries 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 3 more, moved" in named[3]
    assert all("\n" not in line for line in named)
