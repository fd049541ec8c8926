"""Signed tokens in tracking and unsubscribe URLs: only the holder of the secret can make one.

A token is ``<fields>.<mac>`` where the MAC covers the purpose too, so that an open-pixel token
cannot be replayed as an unsubscribe or a click on another link.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from campaign.errors import ConfigurationError

TRACKING_SECRET_ENV = "CAMPAIGN_TRACKING_SECRET"

# purpose -> the ids it carries
FIELDS = {
    "open": ("delivery", "profile"),
    "unsubscribe": ("delivery", "profile"),
    "click": ("delivery", "profile", "link"),
    # the mail's hidden link (campaign.machine, rule hidden_link): only machines request it
    "hidden": ("delivery", "profile"),
    # The envelope sender of a campaign mail (campaign.return_path): a bounce names its row.
    "return_path": ("delivery", "profile"),
    # The Message-ID of a campaign mail (campaign.rendering.message_id): a bounce or a feedback
    # report that encloses the original names its row by it, so it must not be guessable.
    "message_id": ("delivery", "profile"),
}
MAC_HEX_LENGTH = 32
# An address's local part holds at most 64 octets (RFC 5321 4.5.3.1.1): the return path's MAC is
# 80 bits, still far beyond guessing through a mailbox that is read every ten minutes.
MAC_HEX_LENGTHS = {"return_path": 20}


def tracking_secret() -> bytes:
    secret = os.environ.get(TRACKING_SECRET_ENV, "")
    if len(secret) < 16:
        raise ConfigurationError(
            f"Environment variable {TRACKING_SECRET_ENV} must hold a secret of at least 16 characters "
            "(it signs unsubscribe and tracking tokens)."
        )
    return secret.encode()


def _mac(secret: bytes, purpose: str, payload: str) -> str:
    length = MAC_HEX_LENGTHS.get(purpose, MAC_HEX_LENGTH)
    return hmac.new(secret, f"{purpose}:{payload}".encode(), hashlib.sha256).hexdigest()[:length]


def sign_token(secret: bytes, purpose: str, *ids: int) -> str:
    if len(ids) != len(FIELDS[purpose]):
        raise ValueError(f"a {purpose} token carries {', '.join(FIELDS[purpose])}")
    payload = ".".join(str(int(i)) for i in ids)
    return f"{payload}.{_mac(secret, purpose, payload)}"


def verify_token(secret: bytes, purpose: str, token: str) -> tuple[int, ...] | None:
    """The ids of a valid token, or None for anything forged, truncated, altered or of another purpose."""
    if purpose not in FIELDS or not token.isascii():
        return None
    pieces = token.split(".")
    if len(pieces) != len(FIELDS[purpose]) + 1 or not all(p.isdigit() for p in pieces[:-1]):
        return None
    payload = ".".join(pieces[:-1])
    if not hmac.compare_digest(_mac(secret, purpose, payload), pieces[-1]):
        return None
    return tuple(int(p) for p in pieces[:-1])
