"""import_profiles_csv: good rows kept, bad rows reported by file line, nothing silently changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from campaign.errors import InvalidAddress, InvalidInput
from campaign.profiles import import_profiles_csv, is_plain_address, is_valid_email, normalize_email, profile_history
from campaign.schema import profiles


@pytest.fixture
def write_csv(tmp_path: Path):
    def write(content: str, name: str = "profiles.csv") -> Path:
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        return path

    return write


def stored_profiles(engine) -> dict[str, dict]:
    with engine.begin() as conn:
        rows = conn.execute(select(profiles)).mappings().all()
    return {row["email"]: dict(row) for row in rows}


def test_good_rows_kept_and_bad_rows_reported_by_line(campaign_db, write_csv) -> None:
    path = write_csv(
        "email,first_name,last_name,locale,mobile,blocklisted\n"
        "Alice@Example.TEST,Alice,Martin,fr_FR,+33600000001,false\n"  # line 2
        "not-an-email,Bob,,,,\n"  # line 3
        "carol@example.test,Carol,,,,yes\n"  # line 4
        "dave@example.test,Dave,,,,maybe\n"  # line 5
        "ALICE@example.test,Alice again,,,,\n"  # line 6
        "erin@example.test,,,,,\n"  # line 7
    )

    report = import_profiles_csv(campaign_db.engine, path)

    assert report.rejected == [
        (3, "invalid email address 'not-an-email': An email address must have an @-sign."),
        (5, "blocklisted must be true or false, got 'maybe'"),
        (6, "duplicate email address 'alice@example.test' in the file"),
    ]
    assert (report.imported, report.skipped_existing) == (3, 0)
    stored = stored_profiles(campaign_db.engine)
    assert sorted(stored) == ["alice@example.test", "carol@example.test", "erin@example.test"]
    alice = stored["alice@example.test"]
    assert (alice["first_name"], alice["last_name"], alice["locale"], alice["mobile"]) == (
        "Alice",
        "Martin",
        "fr_FR",
        "+33600000001",
    )
    assert alice["blocklisted"] is False
    assert stored["carol@example.test"]["blocklisted"] is True
    # Empty cells are stored as NULL, not as empty strings.
    assert stored["erin@example.test"]["first_name"] is None
    assert stored["erin@example.test"]["mobile"] is None


def test_emails_are_lower_cased_and_trimmed(sqlite_db, write_csv) -> None:
    path = write_csv("email,first_name\n  Mixed.Case@Example.TEST ,Max\n")

    report = import_profiles_csv(sqlite_db.engine, path)

    assert report.rejected == []
    assert list(stored_profiles(sqlite_db.engine)) == ["mixed.case@example.test"]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("plain", "An email address must have an @-sign."),
        ("no-domain@", "There must be something after the @-sign."),
        ("@no-local.test", "There must be something before the @-sign."),
        ("user@nodot", "The part after the @-sign is not valid. It should have a period."),
        ("two@@at.test", "The part after the @-sign contains invalid characters: '@'."),
        ("with space@example.test", "The email address contains invalid characters before the @-sign: SPACE."),
        ("<angle@example.test>", "A display name and angle brackets around the email address are not permitted here."),
        ("comma,@example.test", "The email address contains invalid characters before the @-sign: ','."),
        ("user@-leading-hyphen.test", "An email address cannot have a hyphen immediately after the @-sign."),
        ("user@test", "The part after the @-sign is not valid. It should have a period."),
        ("two..dots@example.test", "An email address cannot have two periods in a row."),
        (
            "user@host.local",
            "The part after the @-sign is a special-use or reserved name that cannot be used with email.",
        ),
    ],
    ids=lambda value: value[:30],
)
def test_invalid_email_is_rejected_with_its_line(sqlite_db, write_csv, address: str, reason: str) -> None:
    path = write_csv(f'email,first_name\nok@example.test,Ok\n"{address}",Bad\n')

    report = import_profiles_csv(sqlite_db.engine, path)

    assert report.rejected == [(3, f"invalid email address {address!r}: {reason}")]
    assert report.imported == 1
    assert list(stored_profiles(sqlite_db.engine)) == ["ok@example.test"]


def test_row_without_email_is_rejected(sqlite_db, write_csv) -> None:
    path = write_csv("email,first_name\n,Nobody\n")

    report = import_profiles_csv(sqlite_db.engine, path)

    assert report.rejected == [(2, "invalid email address '': The address is empty.")]
    assert report.imported == 0


@pytest.mark.parametrize(
    "address",
    ["first.last+tag@sub.example.test", "o'brien@example.test", "x@a-b.example.test", "UPPER@EXAMPLE.TEST"],
)
def test_usable_addresses_are_valid(address: str) -> None:
    assert is_valid_email(address)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("y", True), ("t", True)]
    + [("false", False), ("0", False), ("No", False), ("n", False), ("f", False), ("", False)],
)
def test_blocklisted_words(sqlite_db, write_csv, cell: str, expected: bool) -> None:
    path = write_csv(f"email,blocklisted\nx@example.test,{cell}\n")

    report = import_profiles_csv(sqlite_db.engine, path)

    assert report.rejected == []
    assert stored_profiles(sqlite_db.engine)["x@example.test"]["blocklisted"] is expected


@pytest.mark.parametrize("cell", ["2", "maybe", "ja", "-"])
def test_bad_blocklisted_value_is_rejected(sqlite_db, write_csv, cell: str) -> None:
    path = write_csv(f"email,blocklisted\nx@example.test,{cell}\n")

    report = import_profiles_csv(sqlite_db.engine, path)

    assert report.rejected == [(2, f"blocklisted must be true or false, got {cell!r}")]
    assert stored_profiles(sqlite_db.engine) == {}


def test_header_names_are_trimmed_and_case_insensitive(sqlite_db, write_csv) -> None:
    path = write_csv(" Email , First_Name ,BLOCKLISTED\nann@example.test,Ann,no\n")

    report = import_profiles_csv(sqlite_db.engine, path)

    assert report.rejected == []
    assert stored_profiles(sqlite_db.engine)["ann@example.test"]["first_name"] == "Ann"


def test_unknown_column_is_refused_by_name_and_nothing_imported(campaign_db, write_csv) -> None:
    path = write_csv("email,first_name,nickname\nann@example.test,Ann,Annie\n")

    with pytest.raises(InvalidInput) as excinfo:
        import_profiles_csv(campaign_db.engine, path)

    message = str(excinfo.value)
    assert "unknown columns nickname" in message
    assert "expected email, mobile, first_name, last_name, locale, blocklisted" in message
    assert stored_profiles(campaign_db.engine) == {}


def test_missing_email_column_is_refused(sqlite_db, write_csv) -> None:
    path = write_csv("mail,first_name\nann@example.test,Ann\n")

    with pytest.raises(InvalidInput, match=r"has no 'email' column; columns found: mail, first_name\."):
        import_profiles_csv(sqlite_db.engine, path)


def test_missing_file_is_invalid_input(sqlite_db, tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"

    with pytest.raises(InvalidInput) as excinfo:
        import_profiles_csv(sqlite_db.engine, path)

    assert str(excinfo.value) == f"Profile file {path} does not exist."


def test_empty_file_is_invalid_input(sqlite_db, write_csv) -> None:
    path = write_csv("")

    with pytest.raises(InvalidInput, match="is not a readable CSV"):
        import_profiles_csv(sqlite_db.engine, path)


def test_reimport_skips_existing_addresses_and_keeps_their_data(campaign_db, write_csv) -> None:
    first = write_csv("email,first_name\nann@example.test,Ann\nben@example.test,Ben\n", "first.csv")
    assert import_profiles_csv(campaign_db.engine, first).imported == 2

    second = write_csv(
        "email,first_name,blocklisted\nANN@example.test,Changed,true\nben@example.test,Ben,\ncid@example.test,Cid,\n",
        "second.csv",
    )
    report = import_profiles_csv(campaign_db.engine, second)

    assert (report.imported, report.skipped_existing, report.rejected) == (1, 2, [])
    stored = stored_profiles(campaign_db.engine)
    assert sorted(stored) == ["ann@example.test", "ben@example.test", "cid@example.test"]
    assert stored["ann@example.test"]["first_name"] == "Ann"
    assert stored["ann@example.test"]["blocklisted"] is False


def test_reimport_of_a_large_file_finds_every_existing_address(campaign_db, write_csv) -> None:
    # More rows than one lookup batch (500): every batch must be checked against the database.
    lines = "".join(f"user{i:05d}@example.test,User{i}\n" for i in range(1200))
    path = write_csv("email,first_name\n" + lines)
    assert import_profiles_csv(campaign_db.engine, path).imported == 1200

    report = import_profiles_csv(campaign_db.engine, path)

    assert (report.imported, report.skipped_existing) == (0, 1200)
    assert len(stored_profiles(campaign_db.engine)) == 1200


@pytest.mark.parametrize(
    ("content", "bad_line"),
    [
        ("email,first_name\nann@example.test,Ann\n\nbroken,Bad\n", 4),
        ('email,first_name\nann@example.test,"Ann\nMarie"\nbroken,Bad\n', 4),
    ],
    ids=["blank-line", "multi-line-cell"],
)
def test_line_numbers_follow_the_file(sqlite_db, write_csv, content: str, bad_line: int) -> None:
    path = write_csv(content)

    report = import_profiles_csv(sqlite_db.engine, path)

    assert report.rejected == [(bad_line, "invalid email address 'broken': An email address must have an @-sign.")]


# ---------------------------------------------------------------- internationalised addresses


def test_an_idn_domain_is_one_profile_in_either_spelling(campaign_db, write_csv) -> None:
    path = write_csv(
        "email,first_name\n"
        "info@bücher.example,Buch\n"  # line 2
        "info@xn--bcher-kva.example,Buch (A-label)\n"  # line 3: the same mailbox, as DNS spells it
        "INFO@BÜCHER.EXAMPLE,Buch (upper)\n"  # line 4
        "prénom@example.test,Prénom\n"  # line 5: a non-ASCII local part is valid (RFC 6531)
        "PRÉNOM@Example.Test,Prénom (upper)\n"  # line 6
        "cafe\u0301@example.test,Café (decomposed)\n"  # line 7: NFD; the same address as NFC café
        "café@example.test,Café\n"  # line 8
    )

    report = import_profiles_csv(campaign_db.engine, path)

    assert report.rejected == [
        (3, "duplicate email address 'info@bücher.example' in the file"),
        (4, "duplicate email address 'info@bücher.example' in the file"),
        (6, "duplicate email address 'prénom@example.test' in the file"),
        (8, "duplicate email address 'café@example.test' in the file"),
    ]
    assert sorted(stored_profiles(campaign_db.engine)) == [
        "café@example.test",
        "info@bücher.example",
        "prénom@example.test",
    ]

    again = write_csv("email\ninfo@XN--BCHER-KVA.example\n", "again.csv")
    assert import_profiles_csv(campaign_db.engine, again).skipped_existing == 1


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("  Mixed.Case@Example.TEST ", "mixed.case@example.test"),
        ("info@xn--bcher-kva.example", "info@bücher.example"),
        ("Info@BÜCHER.example", "info@bücher.example"),
        ("PRÉNOM@example.test", "prénom@example.test"),
        ("cafe\u0301@example.test", "café@example.test"),
    ],
)
def test_normalize_email_gives_the_stored_form(typed: str, stored: str) -> None:
    assert normalize_email(typed) == stored


def test_normalize_email_names_the_reason(typed: str = "x@") -> None:
    with pytest.raises(InvalidAddress) as excinfo:
        normalize_email(typed)

    assert str(excinfo.value) == "There must be something after the @-sign."
    assert isinstance(excinfo.value, InvalidInput)


def test_profile_history_finds_an_idn_profile_by_either_spelling(sqlite_db, write_csv) -> None:
    import_profiles_csv(sqlite_db.engine, write_csv("email\ninfo@bücher.example\n"))

    for typed in ("info@bücher.example", "INFO@xn--bcher-kva.example"):
        profile, _history = profile_history(sqlite_db.engine, typed)
        assert profile["email"] == "info@bücher.example"


@pytest.mark.parametrize("address", ["info@bücher.example", "prénom@example.test", "user@sub.example.test"])
def test_internationalised_addresses_are_valid(address: str) -> None:
    assert is_valid_email(address)


# ---------------------------------------------------------------- the fast path, proven against the library

_ATOM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_+-", min_size=1, max_size=20)
_LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=64)
_NEAR_PLAIN = st.builds(
    lambda local, labels, tld: f"{'.'.join(local)}@{'.'.join([*labels, tld])}",
    st.lists(_ATOM, min_size=1, max_size=4),
    st.lists(_LABEL, min_size=1, max_size=4),
    st.sampled_from(["com", "example", "test", "local", "localhost", "onion", "arpa", "invalid", "x", "co", "123"])
    | st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=64),
)


@settings(derandomize=True, database=None, deadline=None, max_examples=1500)
@given(address=_NEAR_PLAIN | st.text(max_size=80) | st.emails().map(str.lower))
def test_every_plain_address_is_one_email_validator_accepts_unchanged(address: str) -> None:
    if is_plain_address(address):
        assert normalize_email(address) == address


@pytest.mark.parametrize(
    "address",
    [
        "a" * 65 + "@example.test",  # local part over 64
        "ann@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61 + ".test",  # domain over 253
        "ann@ab--cd.example",  # "--" at the third and fourth characters of a label
        "ann@example.local",
        "ann@localhost",
        "ann@example.123",
        "Ann@example.test",  # not the stored form: the library decides
        "ann..b@example.test",
        ".ann@example.test",
        "ann@-example.test",
    ],
)
def test_what_the_fast_path_does_not_recognise_goes_to_the_library(address: str) -> None:
    assert not is_plain_address(address)
    assert is_valid_email(address) == _library_accepts(address)


def _library_accepts(address: str) -> bool:
    try:
        normalize_email(address)
    except InvalidAddress:
        return False
    return True
