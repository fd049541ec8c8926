"""Bounces and complaints as real servers write them, made in the tests (no fixtures on disk).

Each builder returns the raw bytes a mailbox would hold (CRLF line ends), in the shape the named
software writes: Postfix (bounce(8)), Exim (its RFC 3464 bounce and the older text one), Gmail,
Microsoft 365 / Exchange Online, and RFC 5965 feedback reports (Yahoo's CFL, Microsoft's JMRP).
The headers, part structure and field spellings follow messages those servers sent (folded
lines, comments, "smtp;" without a space, 3-digit status details), since the parser must cope
with exactly those. Plus the bad ones: an auto-reply, a truncated DSN, a forged return path.
"""

from __future__ import annotations

from dataclasses import dataclass

DATE = "Mon, 30 Nov 2026 10:15:02 +0000"


@dataclass(frozen=True)
class Sent:
    """What the send put on the wire for one recipient: the envelope sender (return path), the
    recipient, the Message-ID, the subject."""

    delivery_id: int
    profile_id: int
    email: str
    return_path: str
    message_id: str
    subject: str = "Spring sale"
    sender: str = "Shop News <news@shop.test>"


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def original_headers(sent: Sent) -> str:
    """The original's header block as the receiving server saw it (Return-Path added on delivery)."""
    return (
        f"Return-Path: <{sent.return_path}>\n"
        "Received: from relay.shop.test (relay.shop.test [192.0.2.10])\n"
        "\tby mail.example.test (Postfix) with ESMTPS id 4Yb2kQ0x3Fz9vF\n"
        f"\tfor <{sent.email}>; {DATE}\n"
        f"From: {sent.sender}\n"
        f"To: {sent.email}\n"
        f"Subject: {sent.subject}\n"
        f"Date: {DATE}\n"
        f"Message-ID: {sent.message_id}\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
        f"X-Campaign-Delivery: {sent.delivery_id}\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/alternative; boundary="=_campaign_0123456789abcdef01234567"\n'
    )


def original_message(sent: Sent) -> str:
    return (
        original_headers(sent)
        + "\n--=_campaign_0123456789abcdef01234567\n"
        + 'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: 7bit\n\n'
        + "Hello, the sale starts today.\n"
        + "--=_campaign_0123456789abcdef01234567--\n"
    )


# ---------------------------------------------------------------- Postfix


def postfix_dsn(
    sent: Sent,
    kind: str = "hard",
    to: str | None = None,
    status: str | None = None,
    diagnostic: str | None = None,
    forwarded_to: str | None = None,
) -> bytes:
    """Postfix's bounce(8): ``hard`` 550 5.1.1 user unknown; ``soft`` a message that stayed 5 days
    in the queue (``Action: failed``, ``Status: 4.4.1``); ``delayed`` the delay warning.
    ``status`` and ``diagnostic`` (the remote server's reply, ``550 5.7.1 …``) replace the
    kind's own, as Postfix writes a remote refusal: ``Status: 5.7.1``, ``Diagnostic-Code: smtp;
    550 5.7.1 …``. ``forwarded_to``: the recipient's mailbox forwarded the message there, and
    that address failed: it is the Final-Recipient, the recipient's own the Original-Recipient."""
    to = to or sent.return_path
    boundary = "8C2E41A07B.1796033702/mx1.example.test"
    subject, action, status_of_kind, diagnostic_of_kind, human = {
        "hard": (
            "Undelivered Mail Returned to Sender",
            "failed",
            "5.1.1",
            f"smtp; 550 5.1.1 <{sent.email}>: Recipient address rejected: User\n    unknown in virtual mailbox table",
            "I'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients.",
        ),
        "soft": (
            "Undelivered Mail Returned to Sender",
            "failed",
            "4.4.1",
            "X-Postfix; connect to mail.example.test[192.0.2.25]:25: Connection\n    timed out",
            "I'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients.",
        ),
        "delayed": (
            "Delayed Mail (still being retried)",
            "delayed",
            "4.4.1",
            "X-Postfix; connect to mail.example.test[192.0.2.25]:25: Connection\n    timed out",
            "####################################################################\n"
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
            "####################################################################",
        ),
    }[kind]
    status = status or status_of_kind
    diagnostic = f"smtp; {diagnostic}" if diagnostic else diagnostic_of_kind
    retry = "Will-Retry-Until: Sat, 5 Dec 2026 10:14:58 +0000 (UTC)\n" if kind == "delayed" else ""
    return _crlf(
        f"Return-Path: <>\n"
        f"Delivered-To: {to}\n"
        "Received: by mx1.example.test (Postfix)\n"
        f"\tid 8C2E41A07B; {DATE}\n"
        f"Date: {DATE}\n"
        "From: MAILER-DAEMON@mx1.example.test (Mail Delivery System)\n"
        f"Subject: {subject}\n"
        f"To: {to}\n"
        "Auto-Submitted: auto-replied\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=delivery-status;\n"
        f'\tboundary="{boundary}"\n'
        "Content-Transfer-Encoding: 8bit\n"
        "Message-Id: <20261130101502.8C2E41A07B@mx1.example.test>\n"
        "\n"
        "This is a MIME-encapsulated message.\n"
        "\n"
        f"--{boundary}\n"
        "Content-Description: Notification\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "This is the mail system at host mx1.example.test.\n"
        "\n"
        f"{human}\n"
        "\n"
        "                   The mail system\n"
        "\n"
        f"<{sent.email}>: host mail.example.test[192.0.2.25] said: 550\n"
        f"    5.1.1 <{sent.email}>: Recipient address rejected (in reply to RCPT TO command)\n"
        "\n"
        f"--{boundary}\n"
        "Content-Description: Delivery report\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; mx1.example.test\n"
        "X-Postfix-Queue-ID: 8C2E41A07B\n"
        f"X-Postfix-Sender: rfc822; {sent.return_path}\n"
        "Arrival-Date: Mon, 30 Nov 2026 10:14:58 +0000 (UTC)\n"
        "\n"
        f"Final-Recipient: rfc822; {forwarded_to or sent.email}\n"
        f"Original-Recipient: rfc822;{sent.email}\n"
        f"Action: {action}\n"
        f"Status: {status}\n"
        "Remote-MTA: dns; mail.example.test\n"
        f"Diagnostic-Code: {diagnostic}\n"
        f"{retry}"
        "\n"
        f"--{boundary}\n"
        "Content-Description: Undelivered Message Headers\n"
        "Content-Type: text/rfc822-headers\n"
        "\n"
        f"{original_headers(sent)}"
        "\n"
        f"--{boundary}--\n"
    )


# ---------------------------------------------------------------- Exim


def exim_dsn(sent: Sent) -> bytes:
    """Exim 4's bounce: multipart/report with the whole original as message/rfc822, 5.0.0 status
    (Exim writes the class only) and the remote server's words in Diagnostic-Code."""
    boundary = "1796033702-eximdsn-1804289383"
    return _crlf(
        f"Return-path: <>\n"
        f"Envelope-to: {sent.return_path}\n"
        f"Delivery-date: {DATE}\n"
        "Received: from Debian-exim by mx.exim.test with local (Exim 4.96)\n"
        "\tid 1vQz3K-0004Ab-2x\n"
        f"\tfor {sent.return_path}; {DATE}\n"
        "X-Failed-Recipients: " + sent.email + "\n"
        "Auto-Submitted: auto-replied\n"
        "From: Mail Delivery System <Mailer-Daemon@mx.exim.test>\n"
        f"To: {sent.return_path}\n"
        f"References: {sent.message_id}\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=" + boundary + "\n"
        "MIME-Version: 1.0\n"
        "Subject: Mail delivery failed: returning message to sender\n"
        "Message-Id: <E1vQz3K-0004Ab-2x@mx.exim.test>\n"
        f"Date: {DATE}\n"
        "\n"
        f"--{boundary}\n"
        "Content-type: text/plain; charset=us-ascii\n"
        "\n"
        "This message was created automatically by mail delivery software.\n"
        "\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n"
        "\n"
        f"  {sent.email}\n"
        "    host mail.example.test [192.0.2.25]\n"
        f"    SMTP error from remote mail server after RCPT TO:<{sent.email}>:\n"
        "    550 5.2.1 The email account that you tried to reach is disabled.\n"
        "\n"
        f"--{boundary}\n"
        "Content-type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; mx.exim.test\n"
        "\n"
        "Action: failed\n"
        f"Final-Recipient: rfc822;{sent.email}\n"
        "Status: 5.0.0\n"
        "Remote-MTA: dns; mail.example.test\n"
        "Diagnostic-Code: smtp; 550 5.2.1 The email account that you tried to reach is disabled.\n"
        "\n"
        f"--{boundary}\n"
        "Content-type: message/rfc822\n"
        "\n"
        f"{original_message(sent)}"
        f"--{boundary}--\n"
    )


def exim_text_bounce(sent: Sent) -> bytes:
    """The older Exim bounce, plain text without a delivery-status part: only a detector that
    knows Exim (``X-Failed-Recipients``) recognises it; the copy of the message follows."""
    return _crlf(
        "Return-path: <>\n"
        f"Envelope-to: {sent.return_path}\n"
        "X-Failed-Recipients: " + sent.email + "\n"
        "From: Mail Delivery System <Mailer-Daemon@old.exim.test>\n"
        f"To: {sent.return_path}\n"
        "Subject: Mail delivery failed: returning message to sender\n"
        "Message-Id: <E1aBcDe-0001Xy-9Q@old.exim.test>\n"
        f"Date: {DATE}\n"
        "\n"
        "This message was created automatically by mail delivery software.\n"
        "\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n"
        "\n"
        f"  {sent.email}\n"
        "    SMTP error from remote mail server after RCPT TO:<" + sent.email + ">:\n"
        "    host mail.example.test [192.0.2.25]: 550 No such user here\n"
        "\n"
        "------ This is a copy of the message, including all the headers. ------\n"
        "\n"
        f"{original_message(sent)}"
    )


# ---------------------------------------------------------------- Gmail


def gmail_dsn(sent: Sent, kind: str = "hard") -> bytes:
    """Gmail's "Delivery Status Notification": multipart/related human part, X-Original-Message-ID
    in the per-message fields, a diagnostic folded over four lines; ``delayed`` is the (Delay) one."""
    outer, related, alternative = "000000000000a1b2c3d4e5f60718", "000000000000a1b2c3d4e5f60719", "000000000000a1b2c"
    if kind == "delayed":
        subject, action, status = "Delivery Status Notification (Delay)", "delayed", "4.2.2"
        diagnostic = "smtp; 452 4.2.2 The email account that you tried to reach is over quota."
    else:
        subject, action, status = "Delivery Status Notification (Failure)", "failed", "5.1.1"
        diagnostic = (
            "smtp; The email account that you tried to reach does not exist. Please try\n"
            " double-checking the recipient's email address for typos or\n"
            " unnecessary spaces. For more information, go to\n"
            " https://support.google.com/mail/?p=NoSuchUser a640c23a62f3a-b7a1e; - gsmtp"
        )
    return _crlf(
        f"Delivered-To: {sent.return_path}\n"
        "Return-Path: <>\n"
        "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\n"
        f"To: {sent.return_path}\n"
        "Auto-Submitted: auto-replied\n"
        f"Subject: {subject}\n"
        f"References: {sent.message_id}\n"
        f"In-Reply-To: {sent.message_id}\n"
        "X-Failed-Recipients: " + sent.email + "\n"
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; boundary="{outer}"; report-type=delivery-status\n'
        "Message-ID: <6749f0a6.050a0220.2c7e5d.0000.GMR@mx.google.com>\n"
        f"Date: {DATE}\n"
        "\n"
        f"--{outer}\n"
        f'Content-Type: multipart/related; boundary="{related}"\n'
        "\n"
        f"--{related}\n"
        f'Content-Type: multipart/alternative; boundary="{alternative}"\n'
        "\n"
        f"--{alternative}\n"
        'Content-Type: text/plain; charset="UTF-8"\n'
        "\n"
        "\n** Address not found **\n\n"
        f"Your message wasn't delivered to {sent.email} because the address couldn't be found.\n"
        "\n"
        f"--{alternative}\n"
        'Content-Type: text/html; charset="UTF-8"\n'
        "\n"
        "<html><body><h2>Address not found</h2></body></html>\n"
        "\n"
        f"--{alternative}--\n"
        f"--{related}--\n"
        f"--{outer}\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; googlemail.com\n"
        "Received-From-MTA: dns; relay.shop.test\n"
        "Arrival-Date: Mon, 30 Nov 2026 02:14:58 -0800 (PST)\n"
        f"X-Original-Message-ID: {sent.message_id}\n"
        "\n"
        f"Final-Recipient: rfc822; {sent.email}\n"
        f"Action: {action}\n"
        f"Status: {status}\n"
        "Remote-MTA: dns; gmail-smtp-in.l.google.com. (2a00:1450:4013:c00::1a, the server for the domain gmail.com.)\n"
        f"Diagnostic-Code: {diagnostic}\n"
        "Last-Attempt-Date: Mon, 30 Nov 2026 02:15:02 -0800 (PST)\n"
        "\n"
        f"--{outer}\n"
        "Content-Type: text/rfc822-headers\n"
        "\n"
        f"{original_headers(sent)}"
        f"--{outer}--\n"
    )


# ---------------------------------------------------------------- Microsoft


def microsoft_dsn(sent: Sent, kind: str = "hard") -> bytes:
    """Exchange Online's NDR ("Undeliverable: …"): "dns;" and "smtp;" without spaces, a 3-digit
    status detail (5.1.10), the original as message/rfc822; ``soft`` is 4.4.7, message expired."""
    boundary = "_004_AM7PR01MB12345C0FFEEeurprd01prod_"
    if kind == "soft":
        status = "4.4.7"
        diagnostic = "smtp;400 4.4.7 Message delayed"
    else:
        status = "5.1.10"
        diagnostic = "smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    return _crlf(
        f"Delivered-To: {sent.return_path}\n"
        "From: Microsoft Outlook\n"
        "\t<MAILER-DAEMON@AM7PR01MB12345.eurprd01.prod.exchangelabs.com>\n"
        f"To: <{sent.return_path}>\n"
        f"Date: {DATE}\n"
        "Content-Type: multipart/report; report-type=delivery-status;\n"
        f'\tboundary="{boundary}"\n'
        "X-MS-Exchange-Message-Is-Ndr:\n"
        "Content-Language: en-US\n"
        f"Message-ID: <1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809@AM7PR01MB12345.eurprd01.prod.exchangelabs.com>\n"
        f"In-Reply-To: {sent.message_id}\n"
        f"References: {sent.message_id}\n"
        "Thread-Topic: " + sent.subject + "\n"
        f"Subject: Undeliverable: {sent.subject}\n"
        "Auto-Submitted: auto-replied\n"
        "MIME-Version: 1.0\n"
        "\n"
        f"--{boundary}\n"
        'Content-Type: multipart/alternative; boundary="_000_AM7PR01MB12345_"\n'
        "\n"
        "--_000_AM7PR01MB12345_\n"
        'Content-Type: text/plain; charset="us-ascii"\n'
        "\n"
        "Your message to " + sent.email + " couldn't be delivered.\n"
        "\n"
        "--_000_AM7PR01MB12345_\n"
        'Content-Type: text/html; charset="us-ascii"\n'
        "\n"
        "<html><body><b>Your message couldn't be delivered.</b></body></html>\n"
        "\n"
        "--_000_AM7PR01MB12345_--\n"
        "\n"
        f"--{boundary}\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns;AM7PR01MB12345.eurprd01.prod.exchangelabs.com\n"
        "Received-From-MTA: dns;relay.shop.test\n"
        "Arrival-Date: Mon, 30 Nov 2026 10:14:58 +0000\n"
        "\n"
        f"Original-Recipient: rfc822;{sent.email}\n"
        f"Final-Recipient: rfc822;{sent.email}\n"
        "Action: failed\n"
        f"Status: {status}\n"
        f"Diagnostic-Code: {diagnostic}\n"
        "\n"
        f"--{boundary}\n"
        "Content-Type: message/rfc822\n"
        "\n"
        f"{original_message(sent)}"
        f"--{boundary}--\n"
    )


# ---------------------------------------------------------------- feedback reports (RFC 5965)


def feedback_report(
    sent: Sent,
    feedback_type: str = "abuse",
    user_agent: str = "Yahoo!-Mail-Feedback/2.0",
    original_mail_from: bool = True,
    return_path_in_original: bool = True,
    original_rcpt_to: str | None = "redacted@example.test",
) -> bytes:
    """An ARF report as a mailbox provider's feedback loop sends it to the sender's FBL address
    (not to the return path): the report fields, then the original, its recipient redacted as
    Microsoft's JMRP does. ``original_mail_from``/``return_path_in_original`` take away the
    return path, leaving only the Message-ID to map by. ``original_rcpt_to``: the recipient the
    report names, None when the provider leaves the field out."""
    boundary = "----=_Part_1247863_1918416612.1796033702"
    headers = original_headers(sent)
    if not return_path_in_original:
        headers = "\n".join(line for line in headers.split("\n") if not line.startswith("Return-Path:"))
    headers = headers.replace(f"To: {sent.email}", "To: redacted@example.test")
    mail_from = f"Original-Mail-From: <{sent.return_path}>\n" if original_mail_from else ""
    rcpt_to = f"Original-Rcpt-To: <{original_rcpt_to}>\n" if original_rcpt_to else ""
    return _crlf(
        "Return-Path: <feedback@arf.mail.example.test>\n"
        "Delivered-To: fbl@shop.test\n"
        "From: Mail Feedback <feedback@arf.mail.example.test>\n"
        "To: fbl@shop.test\n"
        f"Subject: FW: {sent.subject}\n"
        f"Date: {DATE}\n"
        "Message-ID: <1796033702.1247863@arf.mail.example.test>\n"
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type=feedback-report;\n\tboundary="{boundary}"\n'
        "\n"
        f"--{boundary}\n"
        'Content-Type: text/plain; charset="US-ASCII"\n'
        "Content-Transfer-Encoding: 7bit\n"
        "\n"
        "This is an email abuse report for an email message received from IP\n"
        "192.0.2.10 on Mon, 30 Nov 2026 10:14:58 +0000.\n"
        "For more information about this format please see http://www.mipassoc.org/arf/.\n"
        "\n"
        f"--{boundary}\n"
        "Content-Type: message/feedback-report\n"
        "\n"
        f"Feedback-Type: {feedback_type}\n"
        f"User-Agent: {user_agent}\n"
        "Version: 1\n"
        f"{mail_from}"
        f"{rcpt_to}"
        "Arrival-Date: Mon, 30 Nov 2026 10:14:58 +0000\n"
        "Reported-Domain: shop.test\n"
        "Source-IP: 192.0.2.10\n"
        "Authentication-Results: mta1.arf.mail.example.test; dkim=pass header.d=shop.test; spf=pass\n"
        "\n"
        f"--{boundary}\n"
        "Content-Type: message/rfc822\n"
        "Content-Disposition: inline\n"
        "\n"
        f"{headers}\n"
        "--=_campaign_0123456789abcdef01234567\n"
        'Content-Type: text/plain; charset="utf-8"\n'
        "\n"
        "Hello, the sale starts today.\n"
        "--=_campaign_0123456789abcdef01234567--\n"
        "\n"
        f"--{boundary}--\n"
    )


# ---------------------------------------------------------------- bad ones


def auto_reply(sent: Sent) -> bytes:
    """An out-of-office answer sent to the return path: not a bounce, though it names the message."""
    return _crlf(
        f"Delivered-To: {sent.return_path}\n"
        f"From: Sam Person <{sent.email}>\n"
        f"To: {sent.return_path}\n"
        f"Subject: Automatic reply: {sent.subject}\n"
        "Auto-Submitted: auto-replied\n"
        "X-Auto-Response-Suppress: All\n"
        f"In-Reply-To: {sent.message_id}\n"
        f"References: {sent.message_id}\n"
        f"Date: {DATE}\n"
        "Message-ID: <oof.1796033702@example.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        "Hello,\n\nI am out of the office until 7 December with limited access to email.\n"
        "For urgent matters please contact my colleague.\n\nSam\n"
    )


def truncated(data: bytes, marker: bytes = b"Action:") -> bytes:
    """``data`` cut just before ``marker``, as a full disk or a size limit leaves it."""
    return data[: data.index(marker)]
