"""Recipient profiles: CSV import with per-line error reports; email addresses, validated and
normalised by email-validator, and their form on the wire."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, ValidatedEmail, validate_email
from sqlalchemy import Engine, select

from campaign.clock import utcnow
from campaign.db import sql
from campaign.errors import InvalidAddress, InvalidInput
from campaign.schema import profiles

PROFILE_COLUMNS = ("email", "mobile", "first_name", "last_name", "locale", "blocklisted")
TRUE_WORDS = {"1", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "n", "f", ""}

# Syntax only: no DNS lookup (imports of a million rows, and the relay has the final word).
# Internationalised addresses are valid (RFC 6531/6532). `.test` (RFC 2606/6761) is what the demo,
# the tests and the local relay use; other special-use names (.local, .localhost, .invalid, ...)
# cannot receive mail and are refused.
_VALIDATOR_OPTIONS = {"check_deliverability": False, "allow_smtputf8": True, "test_environment": True}


def _validated(address: str) -> ValidatedEmail:
    """email-validator's result for ``address``; raises InvalidAddress with its reason."""
    if not address:
        raise InvalidAddress("The address is empty.")
    try:
        validated = validate_email(address, **_VALIDATOR_OPTIONS)
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    # test_environment also lets a bare "@test" through; a mail domain has a dot, as for any other TLD.
    if "." not in validated.ascii_domain:
        raise InvalidAddress("The part after the @-sign is not valid. It should have a period.")
    return validated


def normalize_email(address: str) -> str:
    """The one form a profile's address is stored and looked up in; raises InvalidAddress.

    email-validator's ``normalized`` form of the trimmed, lower-cased address: the domain
    IDNA-normalised to its Unicode form (``info@xn--bcher-kva.example`` and ``INFO@BÜCHER.example``
    are both ``info@bücher.example``), the local part in NFC (RFC 6532 3.1), so that spellings
    of one mailbox are one profile. Unicode rather than the A-label: it is what people type and
    search for and what templates show as ``profile.email``; ``campaign.message.addr_spec``
    derives the wire form (the A-label domain unless the relay offers SMTPUTF8).

    The local part is lower-cased too, although RFC 5321 2.4 lets a server treat it as case
    sensitive: the same section discourages relying on it, mailbox providers do not, and one
    person must be one profile, or an unsubscribed ``Ann@`` would still be mailed as ``ann@``.
    Every address stored so far is lower-cased, so lookups and duplicates stay right on existing
    databases. ``str.lower`` and not ``casefold``: ``ß`` must not become ``ss``.
    """
    return _validated(address.strip().lower()).normalized


# The common address, in its stored (lower-case) form: a dot-atom local part of letters, digits
# and ``._+-``, then LDH labels without "--" (RFC 5891 4.2.3.1 reserves it), an alphabetic TLD.
# email-validator accepts each such address unchanged (a property test proves it against the
# library), so ``is_valid_email`` answers it without the library: at send every recipient is
# checked again, and the library's 90 µs an address was a seventh of a chunk's time.
_PLAIN_ADDRESS = re.compile(
    r"(?P<local>[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*)@(?P<domain>(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"(?P<tld>[a-z]{2,63}))"
)
_SPECIAL_USE_TLDS = frozenset(SPECIAL_USE_DOMAIN_NAMES) - {"test"}  # .test: see _VALIDATOR_OPTIONS


def is_plain_address(address: str) -> bool:
    """Whether ``address`` is a common ASCII address in its stored form that email-validator
    accepts as it is (see ``_PLAIN_ADDRESS``); False says nothing, ask the library."""
    match = _PLAIN_ADDRESS.fullmatch(address)
    return (
        match is not None
        and len(address) <= 254  # RFC 5321 4.5.3.1.3 path, less the angle brackets
        and len(match["local"]) <= 64  # RFC 5321 4.5.3.1.1
        and len(match["domain"]) <= 253
        and "--" not in match["domain"]
        and match["tld"] not in _SPECIAL_USE_TLDS
    )


def is_valid_email(address: str | None) -> bool:
    """Whether ``address`` is a syntactically valid email address (internationalised ones too).

    email-validator decides, except for the common addresses ``is_plain_address`` recognises.
    """
    if address and is_plain_address(address):
        return True
    try:
        _validated(address or "")
    except InvalidAddress:
        return False
    return True


@dataclass
class ImportReport:
    imported: int = 0
    skipped_existing: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number in the file, reason)


def _parse_bool(value: str) -> bool | None:
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def _record_start_lines(path: str | Path) -> list[int]:
    """The file line on which each data record starts, as pandas reads them (blank lines skipped,
    quoted cells may span lines), so that rejected rows are reported where the user can find them."""
    starts = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        previous_end = reader.line_num
        for row in reader:
            if row:
                starts.append(previous_end + 1)
            previous_end = reader.line_num
    return starts


def import_profiles_csv(engine: Engine, path: str | Path) -> ImportReport:
    """Import profiles from a CSV with a header line; bad rows are reported, good rows kept.

    Columns: ``email`` (required), ``mobile``, ``first_name``, ``last_name``, ``locale``,
    ``blocklisted``. Existing addresses are left untouched (counted as skipped).
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise InvalidInput(f"Profile file {path} does not exist.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"Profile file {path} is not a readable CSV: {exc}") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if "email" not in frame.columns:
        raise InvalidInput(f"Profile file {path} has no 'email' column; columns found: {', '.join(frame.columns)}.")
    unknown = sorted(set(frame.columns) - set(PROFILE_COLUMNS))
    if unknown:
        raise InvalidInput(
            f"Profile file {path} has unknown columns {', '.join(unknown)}; expected {', '.join(PROFILE_COLUMNS)}."
        )

    line_numbers = _record_start_lines(path)
    report = ImportReport()
    rows: list[dict] = []
    seen: set[str] = set()
    for index, record in enumerate(frame.to_dict("records")):
        line = line_numbers[index] if index < len(line_numbers) else index + 2
        try:
            email = normalize_email(record.get("email", ""))
        except InvalidAddress as exc:
            report.rejected.append((line, f"invalid email address {record.get('email', '')!r}: {exc}"))
            continue
        if email in seen:
            report.rejected.append((line, f"duplicate email address {email!r} in the file"))
            continue
        blocklisted = _parse_bool(record.get("blocklisted", ""))
        if blocklisted is None:
            report.rejected.append((line, f"blocklisted must be true or false, got {record['blocklisted']!r}"))
            continue
        seen.add(email)
        rows.append(
            {
                "email": email,
                "mobile": record.get("mobile", "").strip() or None,
                "first_name": record.get("first_name", "").strip() or None,
                "last_name": record.get("last_name", "").strip() or None,
                "locale": record.get("locale", "").strip() or None,
                "blocklisted": blocklisted,
                "created_at": utcnow(),
            }
        )

    with engine.begin() as conn:
        existing: set[str] = set()
        for start in range(0, len(rows), 500):
            batch = [r["email"] for r in rows[start : start + 500]]
            existing.update(conn.execute(select(profiles.c.email).where(profiles.c.email.in_(batch))).scalars())
        new_rows = [r for r in rows if r["email"] not in existing]
        if new_rows:
            conn.execute(profiles.insert(), new_rows)
    report.imported = len(new_rows)
    report.skipped_existing = len(rows) - len(new_rows)
    return report


def lookup_form(email: str) -> str:
    """The stored form of a typed (or received) address; a malformed one is looked up as typed,
    lower-cased (and not found)."""
    try:
        return normalize_email(email)
    except InvalidAddress:
        return email.strip().lower()


def profile_state(profile: dict) -> str:
    """``active``, ``blocklisted``, ``quarantined: <reason>`` or both, as the CLI and the
    Deployment view say it: a profile can be both (a complaint after a hard bounce)."""
    states = ["blocklisted"] if profile["blocklisted"] else []
    if profile["quarantine_reason"]:
        states.append(f"quarantined: {profile['quarantine_reason']}")
    return " · ".join(states) or "active"


def profile_history(engine: Engine, email: str) -> tuple[dict, pd.DataFrame]:
    """The profile with this address and every delivery it was targeted by (newest last)."""
    with engine.begin() as conn:
        profile = conn.execute(sql("select_profile_by_email"), {"email": lookup_form(email)}).mappings().first()
        if profile is None:
            raise InvalidInput(f"No profile has the address {email!r}.")
        rows = conn.execute(sql("profile_history"), {"profile_id": profile["id"]}).mappings().all()
    return dict(profile), pd.DataFrame([dict(r) for r in rows], columns=HISTORY_COLUMNS)


HISTORY_COLUMNS = [
    "delivery_id", "label", "delivery_status", "confirmed_at", "send_status", "failure_type", "reason", "sent_at",
    "bounced_at", "dsn_status", "first_open_at", "first_click_at", "clicks", "complained_at",
]  # fmt: skip
