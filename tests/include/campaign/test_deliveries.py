"""Delivery specs, creation, target preparation and approval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from campaign.deliveries import approve_delivery, load_delivery, prepare_delivery, read_spec
from campaign.errors import DeliveryNotFound, DeliveryStateError, InvalidInput, TemplateProblem
from campaign.schema import deliveries, delivery_targets, profiles

INLINE_SPEC = """\
label: Spring sale
sender: Shop News <news@shop.test>
subject: "Hello {{ profile.first_name or 'there' }}"
text: |
  Hello {{ profile.first_name or 'there' }}
html: "<p>Hello</p>"
tracking: false
"""


def write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def delivery_count(engine) -> int:
    with engine.begin() as conn:
        return conn.execute(select(func.count()).select_from(deliveries)).scalar_one()


def targets(engine, delivery_id: int) -> list[tuple[int, str]]:
    with engine.begin() as conn:
        return [
            (row.seq, row.email)
            for row in conn.execute(
                select(delivery_targets.c.seq, delivery_targets.c.email)
                .where(delivery_targets.c.delivery_id == delivery_id)
                .order_by(delivery_targets.c.seq)
            )
        ]


# ---------------------------------------------------------------- read_spec


def test_read_spec_with_inline_templates(tmp_path: Path) -> None:
    spec = read_spec(write(tmp_path / "spec.yaml", INLINE_SPEC))

    assert spec == {
        "label": "Spring sale",
        "sender": "Shop News <news@shop.test>",
        "subject": "Hello {{ profile.first_name or 'there' }}",
        "text": "Hello {{ profile.first_name or 'there' }}\n",
        "html": "<p>Hello</p>",
        "tracking": False,
    }


def test_read_spec_accepts_json(tmp_path: Path) -> None:
    fields = {"label": "L", "sender": "news@shop.test", "subject": "S", "text": "T", "html": "H"}

    assert read_spec(write(tmp_path / "spec.json", json.dumps(fields))) == fields


def test_template_files_are_read_relative_to_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "specs"
    write(folder / "mail" / "body.txt", "Hello {{ profile.first_name }}\n")
    write(folder / "mail" / "body.html", "<p>Hello {{ profile.first_name }}</p>\n")
    spec_path = write(
        folder / "spring.yaml",
        "label: L\nsender: news@shop.test\nsubject: S\ntext_file: mail/body.txt\nhtml_file: mail/body.html\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    spec = read_spec(spec_path)

    assert spec["text"] == "Hello {{ profile.first_name }}\n"
    assert spec["html"] == "<p>Hello {{ profile.first_name }}</p>\n"
    assert "text_file" not in spec and "html_file" not in spec


def test_missing_template_file_is_named(tmp_path: Path) -> None:
    spec_path = write(
        tmp_path / "spec.yaml", "label: L\nsender: news@shop.test\nsubject: S\ntext: T\nhtml_file: gone.html\n"
    )

    with pytest.raises(InvalidInput) as excinfo:
        read_spec(spec_path)

    assert str(excinfo.value) == f"Template file {tmp_path / 'gone.html'} named in {spec_path} does not exist."


def test_unknown_field_is_named(tmp_path: Path) -> None:
    spec_path = write(tmp_path / "spec.yaml", INLINE_SPEC + "subjet: typo\nreply_to: x@shop.test\n")

    with pytest.raises(InvalidInput) as excinfo:
        read_spec(spec_path)

    assert str(excinfo.value) == f"Delivery spec {spec_path} has unknown fields: reply_to, subjet."


def test_missing_fields_are_listed(tmp_path: Path) -> None:
    spec_path = write(tmp_path / "spec.yaml", "label: L\nsubject: ''\ntext: T\n")

    with pytest.raises(InvalidInput) as excinfo:
        read_spec(spec_path)

    assert str(excinfo.value) == f"Delivery spec {spec_path} is missing: sender, subject, html."


@pytest.mark.parametrize("part", ["text", "html"])
def test_inline_template_and_template_file_together_are_refused(tmp_path: Path, part: str) -> None:
    write(tmp_path / "body", "from file")
    spec_path = write(tmp_path / "spec.yaml", INLINE_SPEC + f"{part}_file: body\n")

    with pytest.raises(InvalidInput) as excinfo:
        read_spec(spec_path)

    assert str(excinfo.value) == f"Delivery spec {spec_path} gives both {part} and {part}_file; keep one."


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        read_spec(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize(
    ("content", "expected"),
    [("label: [unclosed\n", "is not valid YAML/JSON"), ("- a\n- b\n", "must be a mapping of fields, got list")],
)
def test_spec_that_is_not_a_mapping(tmp_path: Path, content: str, expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        read_spec(write(tmp_path / "spec.yaml", content))


# ---------------------------------------------------------------- create_delivery


def test_create_delivery_stores_a_draft(campaign_db, new_delivery) -> None:
    delivery_id = new_delivery(campaign_db.engine)

    delivery = load_delivery(campaign_db.engine, delivery_id)
    assert (delivery.status, delivery.label, delivery.sender) == ("draft", "Spring sale", "Shop News <news@shop.test>")
    assert delivery.tracking is True
    assert delivery.target_count is None and delivery.prepared_at is None


@pytest.mark.parametrize(
    "sender", ["not-an-address", "Shop <shop.test>", "Shop <news@localhost>", "", "Shop <news@shop.local>"]
)
def test_create_delivery_rejects_an_invalid_sender(campaign_db, new_delivery, sender: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        new_delivery(campaign_db.engine, sender=sender)

    message = str(excinfo.value)
    assert message.startswith(f"Sender {sender!r} is not a valid address: ")
    assert len(message) > len(f"Sender {sender!r} is not a valid address: ") + 10  # it says why
    assert delivery_count(campaign_db.engine) == 0


QUOTE_IT = r"more than one address \(a display name with a comma or another special character"


@pytest.mark.parametrize(
    ("unquoted", "quoted"),
    [
        ("Bücher Shöp, Ltd. <news@bücher-shop.example>", '"Bücher Shöp, Ltd." <news@bücher-shop.example>'),
        # found by a fresh user: brackets, not a comma
        ("Shop [y](x) <news@shop.test>", '"Shop [y](x)" <news@shop.test>'),
    ],
)
def test_a_sender_with_an_unquoted_special_character_is_told_to_quote_it(
    sqlite_db, new_delivery, unquoted, quoted
) -> None:
    with pytest.raises(InvalidInput, match=QUOTE_IT):
        new_delivery(sqlite_db.engine, sender=unquoted)
    assert new_delivery(sqlite_db.engine, sender=quoted)


@pytest.mark.parametrize(
    "sender",
    ["Bücher <news@bücher.example>", "news@xn--bcher-kva.example", "Boutique <prénom@shop.test>"],
)
def test_create_delivery_accepts_an_internationalised_sender(sqlite_db, new_delivery, sender: str) -> None:
    # Sendable: the domain goes out as an A-label; a non-ASCII local part needs a relay with SMTPUTF8.
    delivery_id = new_delivery(sqlite_db.engine, sender=sender)

    assert load_delivery(sqlite_db.engine, delivery_id).sender == sender


def _sender_case(sender: str, case_id: str):
    return pytest.param(sender, id=case_id)


@pytest.mark.parametrize(
    "sender",
    [
        _sender_case("news@shop.test\nBcc: victim@evil.test", "newline"),
        _sender_case("news@shop.test, spam@evil.test", "two"),
    ],
)
def test_create_delivery_rejects_a_sender_that_is_not_one_address(sqlite_db, new_delivery, sender: str) -> None:
    with pytest.raises(InvalidInput, match="is not a valid address"):
        new_delivery(sqlite_db.engine, sender=sender)


def test_create_delivery_rejects_a_non_boolean_tracking(sqlite_db, new_delivery) -> None:
    with pytest.raises(InvalidInput, match=r"tracking must be true or false, got 'yes'\."):
        new_delivery(sqlite_db.engine, tracking="yes")


@pytest.mark.parametrize("part", ["subject", "text", "html"])
def test_create_delivery_rejects_a_template_syntax_error(campaign_db, new_delivery, part: str) -> None:
    with pytest.raises(TemplateProblem) as excinfo:
        new_delivery(campaign_db.engine, **{part: "Hello {{ profile.first_name "})

    assert f"The {part} template of delivery 0 has a syntax error at line 1" in str(excinfo.value)
    assert delivery_count(campaign_db.engine) == 0


# ---------------------------------------------------------------- prepare_delivery


def test_prepare_excludes_blocklisted_quarantined_and_addressless_profiles(
    campaign_db, add_profiles, new_delivery
) -> None:
    engine = campaign_db.engine
    add_profiles(
        engine,
        [
            "p1@example.test",
            {"email": "blocked@example.test", "blocklisted": True},
            "p2@example.test",
            {"email": "bounced@example.test", "quarantine_reason": "550 no such user"},
            {"email": None, "mobile": "+33600000000"},
            "p3@example.test",
            "p4@example.test",
        ],
    )
    delivery_id = new_delivery(engine)

    count = prepare_delivery(engine, delivery_id, prepared_by="carol")

    assert count == 4
    # seq is 1..n without gaps even though eligible profile ids are not contiguous.
    assert targets(engine, delivery_id) == [
        (1, "p1@example.test"),
        (2, "p2@example.test"),
        (3, "p3@example.test"),
        (4, "p4@example.test"),
    ]
    delivery = load_delivery(engine, delivery_id)
    assert delivery.target_count == 4
    assert delivery.prepared_at is not None
    assert delivery.status == "draft"


def test_prepare_again_replaces_the_target(campaign_db, add_profiles, new_delivery) -> None:
    engine = campaign_db.engine
    first_id, _ = add_profiles(engine, ["a@example.test", "b@example.test"])
    delivery_id = new_delivery(engine)
    assert prepare_delivery(engine, delivery_id, "carol") == 2

    with engine.begin() as conn:
        conn.execute(update(profiles).where(profiles.c.id == first_id).values(blocklisted=True))
    add_profiles(engine, ["c@example.test", "d@example.test"])

    assert prepare_delivery(engine, delivery_id, "carol") == 3
    assert targets(engine, delivery_id) == [(1, "b@example.test"), (2, "c@example.test"), (3, "d@example.test")]


def test_targets_of_one_delivery_do_not_touch_another(campaign_db, add_profiles, new_delivery) -> None:
    engine = campaign_db.engine
    add_profiles(engine, ["a@example.test", "b@example.test"])
    first, second = new_delivery(engine), new_delivery(engine, label="Other")
    prepare_delivery(engine, first, "carol")
    prepare_delivery(engine, second, "carol")
    prepare_delivery(engine, first, "carol")

    assert targets(engine, first) == targets(engine, second) == [(1, "a@example.test"), (2, "b@example.test")]


def test_prepare_with_no_eligible_profile_gives_zero(campaign_db, add_profiles, new_delivery) -> None:
    add_profiles(campaign_db.engine, [{"email": "blocked@example.test", "blocklisted": True}])
    delivery_id = new_delivery(campaign_db.engine)

    assert prepare_delivery(campaign_db.engine, delivery_id, "carol") == 0
    assert load_delivery(campaign_db.engine, delivery_id).target_count == 0


def test_prepare_unknown_delivery(campaign_db) -> None:
    with pytest.raises(DeliveryNotFound, match=r"^Delivery 999 does not exist\.$"):
        prepare_delivery(campaign_db.engine, 999, "carol")


def test_prepare_after_approval_is_refused(campaign_db, ready_delivery) -> None:
    delivery_id = ready_delivery(campaign_db.engine)

    with pytest.raises(DeliveryStateError) as excinfo:
        prepare_delivery(campaign_db.engine, delivery_id, "carol")

    assert str(excinfo.value) == f"Delivery {delivery_id} is ready; only a draft can be prepared."


# ---------------------------------------------------------------- approve_delivery


def test_approve_requires_a_prepared_draft(campaign_db, new_delivery) -> None:
    delivery_id = new_delivery(campaign_db.engine)

    with pytest.raises(DeliveryStateError) as excinfo:
        approve_delivery(campaign_db.engine, delivery_id, "alice")

    assert str(excinfo.value) == f"Delivery {delivery_id} has not been prepared; prepare it first."
    assert load_delivery(campaign_db.engine, delivery_id).status == "draft"


def test_approve_moves_a_prepared_draft_to_ready_once(campaign_db, add_profiles, new_delivery) -> None:
    engine = campaign_db.engine
    add_profiles(engine, ["a@example.test"])
    delivery_id = new_delivery(engine)
    prepare_delivery(engine, delivery_id, "carol")

    approve_delivery(engine, delivery_id, "alice")

    delivery = load_delivery(engine, delivery_id)
    assert (delivery.status, delivery.approved_by) == ("ready", "alice")

    with pytest.raises(DeliveryStateError) as excinfo:
        approve_delivery(engine, delivery_id, "bob")
    assert str(excinfo.value) == f"Delivery {delivery_id} is ready; only a draft can be approved."
    assert load_delivery(engine, delivery_id).approved_by == "alice"


def test_approve_unknown_delivery(campaign_db) -> None:
    with pytest.raises(DeliveryNotFound, match=r"^Delivery 4242 does not exist\.$"):
        approve_delivery(campaign_db.engine, 4242, "alice")
