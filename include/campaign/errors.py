"""Errors the operator or the data team can act on.

Every error carries a message meant to be read as it is: it names the problem and what to do.
``PermanentError`` means retrying cannot change the outcome (fail at once);
``TransientError`` means the same call may succeed later (retry).
"""


class CampaignError(Exception):
    """Base of every error this package raises on purpose."""


class PermanentError(CampaignError):
    """Retrying will not help: bad input, refused permission, wrong state."""


class TransientError(CampaignError):
    """A dependency is unavailable for now; the same work may succeed on retry."""


class RoleDenied(PermanentError):
    """The triggering user may not confirm sends."""


class DeliveryNotFound(PermanentError):
    pass


class DeliveryStateError(PermanentError):
    """The delivery is not in the state the action needs."""


class SendConflict(PermanentError):
    """Another run already owns this delivery's send."""


class TemplateProblem(PermanentError):
    """A template does not render (syntax error, undefined variable, unsafe access)."""


class InvalidInput(PermanentError):
    """A file, spec or parameter given by the user is wrong."""


class InvalidAddress(InvalidInput, ValueError):
    """An email address is malformed, or cannot be written in a message header or an SMTP envelope
    (RFC 5321 4.1.2, RFC 5322 3.4.1); the message says why (email-validator's reason at import)."""


class AddressNeedsSmtpUtf8(InvalidAddress):
    """A valid address whose local part is not ASCII, for a relay that does not offer SMTPUTF8.

    Such a local part can only be written in the envelope under the SMTPUTF8 extension (RFC 6531);
    there is no ASCII form of it (a domain has one, its A-label). The same relay will refuse it on
    every retry, so the sender records this recipient as failed and goes on.
    """


class ConfigurationError(PermanentError):
    """A Connection, Variable or environment setting is missing or wrong."""


class SendRefused(PermanentError):
    """The run was refused before it sent anything."""


class IncompleteSend(PermanentError):
    """Some recipients of a delivery were never processed."""


class SmtpUnavailable(TransientError):
    """The SMTP server cannot be reached or dropped the connection."""


class MailboxUnavailable(TransientError):
    """The bounce mailbox's IMAP server cannot be reached, dropped the connection or refused a
    command; mail applied before is in the database and a retry reads the rest."""
