"""The envelope sender (return path) of campaign mail: VERP that names the delivery and profile.

With ``CAMPAIGN_RETURN_PATH=bounces@bounce.example`` every message goes out with the envelope
sender (SMTP ``MAIL FROM``, RFC 5321 4.1.1.2) ``bounces+<delivery>.<profile>.<mac>@bounce.example``,
where ``<mac>`` is an HMAC of the two ids under ``CAMPAIGN_TRACKING_SECRET`` (``campaign.tokens``,
purpose ``return_path``). A bounce is sent to the envelope sender (RFC 5321 4.5.5, RFC 3464 2),
so the address it arrives at names its sending-log row exactly, whatever the remote server writes
in the report. The MAC makes a forged or altered return path recognisable: it never touches a row.

Unset, the envelope sender stays the From address, and bounces map by Message-ID only
(``campaign.bounces``). Variable Envelope Return Paths: D. J. Bernstein, 1997; the "+" separator
is what Postfix (``recipient_delimiter``), Exim and Dovecot deliver to the base mailbox.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from campaign.errors import ConfigurationError
from campaign.tokens import MAC_HEX_LENGTHS, sign_token, verify_token

RETURN_PATH_ENV = "CAMPAIGN_RETURN_PATH"
PURPOSE = "return_path"
SEPARATOR = "+"

_BASE = re.compile(r"[A-Za-z0-9!#$%&'*/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*/=?^_`{|}~-]+)*@[A-Za-z0-9.-]+")
# Any address whose local part ends in "+<digits>.<digits>.<mac>": the shape of our return path,
# whatever base and domain it was sent with (a changed setting still maps older bounces).
_MAC_HEX = MAC_HEX_LENGTHS[PURPOSE]
_VERP = re.compile(rf"^[^@\s<>]+\+(?P<token>\d{{1,20}}\.\d{{1,20}}\.[0-9a-fA-F]{{{_MAC_HEX}}})@[^@\s<>]+$")
_LONGEST_LOCAL = 64  # octets, RFC 5321 4.5.3.1.1


@dataclass(frozen=True)
class ReturnPath:
    """The configured base address, split: ``local`` (no "+") and ``domain`` (ASCII)."""

    local: str
    domain: str

    def address(self, secret: bytes, delivery_id: int, profile_id: int) -> str:
        """``local+<delivery>.<profile>.<mac>@domain``: the envelope sender of one message."""
        return f"{self.local}{SEPARATOR}{sign_token(secret, PURPOSE, delivery_id, profile_id)}@{self.domain}"


def return_path_setting() -> ReturnPath | None:
    """``CAMPAIGN_RETURN_PATH`` (``local@domain``, ASCII, no "+" in the local part), or None when
    unset or blank. Raises ``ConfigurationError`` for anything else."""
    value = os.environ.get(RETURN_PATH_ENV, "").strip()
    if not value:
        return None
    if not _BASE.fullmatch(value) or SEPARATOR in value.partition("@")[0] or ".." in value:
        raise ConfigurationError(
            f"{RETURN_PATH_ENV} must be one plain ASCII address without '+' in its local part, such as "
            f"bounces@bounce.example (the '+' separates the delivery and profile); got {value!r}."
        )
    local, _, domain = value.partition("@")
    # 20-digit ids are the worst case; real ones are far shorter, but refuse what could not fit.
    if len(local) + 1 + len("9999999999.99999999999.") + MAC_HEX_LENGTHS[PURPOSE] > _LONGEST_LOCAL:
        raise ConfigurationError(
            f"{RETURN_PATH_ENV}: the local part {local!r} is too long: with the delivery, profile and MAC "
            f"it must stay within {_LONGEST_LOCAL} octets (RFC 5321 4.5.3.1.1)."
        )
    return ReturnPath(local, domain.lower())


@dataclass(frozen=True)
class ReturnPathMatch:
    """What an address says as a return path: ``ids`` (delivery, profile) when it is one of ours
    with a valid MAC; ``forged`` when it has the shape but the MAC does not match."""

    ids: tuple[int, int] | None
    forged: bool


def read_return_path(secret: bytes, address: str) -> ReturnPathMatch | None:
    """``address`` (``local@domain``, angle brackets allowed) read as a return path; None when it
    does not have the shape of one. Case-insensitive: some servers lower-case local parts."""
    address = address.strip().strip("<>").strip()
    found = _VERP.match(address)
    if not found:
        return None
    ids = verify_token(secret, PURPOSE, found.group("token").lower())
    if ids is None:
        return ReturnPathMatch(None, True)
    return ReturnPathMatch((ids[0], ids[1]), False)
