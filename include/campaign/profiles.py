"""Recipient profiles: CSV import with per-line error reports."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, select

from campaign.clock import utcnow
from campaign.db import sql
from campaign.errors import InvalidInput
from campaign.schema import profiles

# Deliberately simple: a syntactically usable address, not RFC 5322 in full. The SMTP server
# has the final word; this only keeps obvious garbage out of the audience.
EMAIL_PATTERN = re.compile(r"^[^@\s<>\"(),;:]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")

PROFILE_COLUMNS = ("email", "mobile", "first_name", "last_name", "locale", "blocklisted")
TRUE_WORDS = {"1", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "n", "f", ""}


def is_valid_email(address: str | None) -> bool:
    return bool(address) and EMAIL_PATTERN.match(address) is not None


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
        email = record.get("email", "").strip().lower()
        if not is_valid_email(email):
            report.rejected.append((line, f"invalid email address {record.get('email', '')!r}"))
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


def profile_history(engine: Engine, email: str) -> tuple[dict, pd.DataFrame]:
    """The profile with this address and every delivery it was targeted by (newest last)."""
    with engine.begin() as conn:
        profile = conn.execute(sql("select_profile_by_email"), {"email": email.strip().lower()}).mappings().first()
        if profile is None:
            raise InvalidInput(f"No profile has the address {email!r}.")
        rows = conn.execute(sql("profile_history"), {"profile_id": profile["id"]}).mappings().all()
    return dict(profile), pd.DataFrame([dict(r) for r in rows], columns=HISTORY_COLUMNS)


HISTORY_COLUMNS = [
    "delivery_id", "label", "delivery_status", "confirmed_at", "send_status", "failure_type", "reason", "sent_at",
    "first_open_at", "first_click_at", "clicks",
]  # fmt: skip
