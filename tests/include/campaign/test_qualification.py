"""Hard or soft by RFC 3463 status codes: the one rule every bounce is qualified by."""

from __future__ import annotations

import pytest

from campaign.qualification import HARD, SOFT, failure_type, reply_status


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (None, HARD), ("5.0.0", HARD), ("5.1.0", HARD), ("5.1.1", HARD), ("5.1.2", HARD), ("5.1.3", HARD),
        ("5.1.4", HARD), ("5.1.6", HARD), ("5.1.10", HARD), ("5.2.1", HARD),
        ("5.1.5", SOFT), ("5.1.7", SOFT), ("5.1.8", SOFT), ("5.1.9", SOFT), ("5.2.0", SOFT), ("5.2.2", SOFT),
        ("5.2.3", SOFT), ("5.2.4", SOFT), ("5.3.4", SOFT), ("5.4.4", SOFT), ("5.4.7", SOFT), ("5.5.3", SOFT),
        ("5.6.0", SOFT), ("5.7.1", SOFT), ("5.7.26", SOFT), ("5.9.9", SOFT),
        ("4.0.0", SOFT), ("4.1.1", SOFT), ("4.2.2", SOFT), ("4.4.7", SOFT),
        ("2.0.0", None), ("2.1.5", None),
    ],
)  # fmt: skip
def test_each_status_has_its_type(status, kind):
    assert failure_type(status) == kind


def test_a_subject_less_status_takes_the_replys_own_code():
    assert failure_type("5.0.0", "550 5.2.2 Mailbox full") == SOFT
    assert failure_type("5.0.0", "550-5.7.1 Refused as spam") == SOFT
    assert failure_type("5.0.0", "550 5.1.1 User unknown") == HARD
    assert failure_type("5.0.0", "550 Mailbox unavailable") == HARD
    # Only a permanent code of the reply counts, and only instead of X.0.0.
    assert failure_type("5.0.0", "450 4.2.2 Mailbox full") == HARD
    assert failure_type("5.1.1", "552 5.2.2 Mailbox full") == HARD


def test_the_enhanced_code_of_a_reply():
    assert reply_status("550 5.1.1 <sam@example.test>: Recipient address rejected") == "5.1.1"
    assert reply_status("550-5.1.10 RESOLVER.ADR.RecipientNotFound") == "5.1.10"
    assert reply_status("550 No such user here") is None
    assert reply_status(None) is None


def test_a_status_that_is_no_status_code_is_refused_with_a_sentence():
    with pytest.raises(ValueError, match=r"'5\.1' is not an RFC 3463 status code \(class.subject.detail, e.g. 5.1.1\)"):
        failure_type("5.1")
