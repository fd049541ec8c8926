"""Hard or soft: what the status code of a failed delivery says about the address.

One rule for every bounce the product qualifies. A **hard** bounce says the address will never
take mail: the profile is quarantined and no later delivery targets it. A **soft** bounce says
this message did not arrive (a full mailbox, a refusal of the message or of our sender, trouble
on the way): the row counts as a bounce in the KPIs and the profile stays. The rule follows the
subjects of RFC 3463 (Enhanced Mail System Status Codes, ``class.subject.detail``, IANA's "SMTP
Enhanced Status Codes" registry of RFC 5248), and Adobe Campaign's bounce qualification
("Understand delivery failures", Campaign v8: hard for an address that does not exist, a bad
domain, a disabled account, bad syntax; soft for a full mailbox; Campaign Standard's failure
reasons: "Refused", a message refused as spam, soft unless the provider's error says more).

=================================  ======  ==================================================
status (``Action: failed``)        type    why
=================================  ======  ==================================================
none (no Status field, a text      hard    the server says the delivery failed for good and
bounce without a code)                     gives no reason (RFC 3464 2.3.3 "failed")
2.x.x                              none    class 2 is success (RFC 3463 3.1): a report that
                                           contradicts itself is not taken as a bounce
4.x.x                              soft    persistent transient failure (RFC 3463 3.1): the
                                           reporting server gave up retrying, the address
                                           may well work tomorrow
5.0.x                              hard    "other undefined status" (RFC 3463 3.1): permanent
                                           with no subject; Exim writes 5.0.0 for every
                                           permanent failure, so a more precise code in the
                                           Diagnostic-Code's reply (RFC 2034 4) decides first
5.1.0 5.1.1 5.1.2 5.1.3 5.1.4      hard    addressing status (RFC 3463 3.2): other address
5.1.6 5.1.10                               status, no such mailbox, no such system (domain),
                                           bad syntax, ambiguous, moved without a forwarding
                                           address, null MX (RFC 7505; Microsoft 365 also
                                           writes it for an unknown recipient)
5.1.5 5.1.7 5.1.8 5.1.9            soft    X.1.5 says the address is valid, X.1.7 and X.1.8
other 5.1.x                                are about the *sender's* address (our return path
                                           or From refused, not the recipient's fault), X.1.9
                                           (RFC 3886) is a relay notice
5.2.1                              hard    mailbox disabled (RFC 3463 3.3 allows permanent or
                                           temporary): Adobe Campaign counts a disabled
                                           account as hard, and the providers that write it
                                           (Gmail's "account … is disabled") mean a closed
                                           account; an operator can lift the quarantine
5.2.0 5.2.2 5.2.3 5.2.4            soft    the mailbox exists (RFC 3463 3.3): full, message
                                           too long, a list's expansion failed
5.3.x 5.4.x 5.5.x 5.6.x 5.7.x      soft    mail system, network and routing, protocol,
                                           content, security or policy (RFC 3463 3.4-3.8):
                                           about the message, our sender or a server, not
                                           the address; 5.7.1 refused as spam is Adobe's
                                           "refused", soft; 5.4.4 "unable to route" is also
                                           what a DNS outage at the recipient gives
other subjects                     soft    a code the registry does not define says nothing
                                           sure about the address
=================================  ======  ==================================================

The send (``campaign.sending``) qualifies a synchronous permanent refusal (5xx at RCPT or DATA)
by this rule too, from the reply's enhanced code (a bare 5xx without one is hard); a 4xx is
retried, then soft.
"""

from __future__ import annotations

import re

HARD, SOFT = "hard", "soft"

STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")  # RFC 3463 2: class.subject.detail
# RFC 2034 4: an SMTP reply carries its enhanced code after the basic one ("550 5.1.1 …").
_REPLY_STATUS = re.compile(r"^\s*[245]\d\d[ -]\s*([245]\.\d{1,3}\.\d{1,3})\b")

_HARD_ADDRESS_DETAILS = frozenset({0, 1, 2, 3, 4, 6, 10})  # X.1.d: the address takes no mail
_MAILBOX_DISABLED = (2, 1)


def failure_type(status: str | None, diagnostic: str | None = None) -> str | None:
    """``hard``, ``soft`` or None (not a failure) for a delivery a report calls failed, from its
    RFC 3463 status (``5.1.1``; None when it gives none) and the remote server's reply
    (``diagnostic``, e.g. a DSN's Diagnostic-Code ``550 5.2.2 mailbox full``), which decides
    instead of a subject-less ``5.0.0`` of the same class. The table is in this module's
    docstring."""
    if status is None:
        return HARD
    found = STATUS.fullmatch(status.strip())
    if found is None:
        raise ValueError(f"{status!r} is not an RFC 3463 status code (class.subject.detail, e.g. 5.1.1)")
    klass, subject, detail = int(found.group(1)), int(found.group(2)), int(found.group(3))
    if klass == 2:
        return None
    if klass == 4:
        return SOFT
    if subject == 0:
        precise = reply_status(diagnostic)
        if precise and precise.startswith("5.") and not precise.startswith("5.0."):
            return failure_type(precise)
        return HARD
    if subject == 1:
        return HARD if detail in _HARD_ADDRESS_DETAILS else SOFT
    return HARD if (subject, detail) == _MAILBOX_DISABLED else SOFT


def reply_status(reply: str | None) -> str | None:
    """The enhanced status code an SMTP reply carries after its basic code (RFC 2034 4:
    ``550 5.1.1 <sam@example.test>: Recipient address rejected`` → ``5.1.1``), or None."""
    found = _REPLY_STATUS.match(reply or "")
    return found.group(1) if found else None
