"""The envelope sender (return path): VERP naming delivery and profile, signed; the setting."""

from __future__ import annotations

import pytest

from campaign.errors import ConfigurationError
from campaign.return_path import RETURN_PATH_ENV, ReturnPath, read_return_path, return_path_setting

SECRET = b"return-path-secret-0123456789"


def test_the_return_path_names_delivery_and_profile_and_reads_back():
    address = ReturnPath("bounces", "bounce.shop.test").address(SECRET, 12, 3456)

    local, _, domain = address.partition("@")
    assert local.startswith("bounces+12.3456.") and domain == "bounce.shop.test"
    assert len(local) <= 64  # RFC 5321 4.5.3.1.1
    match = read_return_path(SECRET, f"<{address}>")
    assert (match.ids, match.forged) == ((12, 3456), False)
    # Case-folded by a server on the way, still ours; under another base or domain too (a changed setting).
    assert read_return_path(SECRET, address.upper()).ids == (12, 3456)
    assert read_return_path(SECRET, address.replace("bounces+", "old-bounces+").replace(".shop.", ".x.")).ids == (
        12,
        3456,
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.replace("+12.3456.", "+12.3457."),  # another profile
        lambda a: a.replace("+12.3456.", "+13.3456."),  # another delivery
        lambda a: a[: a.index("@") - 1] + ("0" if a[a.index("@") - 1] != "0" else "1") + a[a.index("@") :],  # the MAC
    ],
)
def test_an_altered_return_path_is_forged(change):
    address = ReturnPath("bounces", "bounce.shop.test").address(SECRET, 12, 3456)

    match = read_return_path(SECRET, change(address))

    assert (match.ids, match.forged) == (None, True)
    assert read_return_path(b"another-secret-0123456789", address).forged is True


@pytest.mark.parametrize("address", ["news@shop.test", "bounces@bounce.shop.test", "a+b@c.test", "", "<>", "x+1.2@y"])
def test_other_addresses_are_not_return_paths(address):
    assert read_return_path(SECRET, address) is None


def test_the_setting(monkeypatch):
    monkeypatch.delenv(RETURN_PATH_ENV, raising=False)
    assert return_path_setting() is None
    monkeypatch.setenv(RETURN_PATH_ENV, " Bounces@Bounce.Shop.Test ")
    assert return_path_setting() == ReturnPath("Bounces", "bounce.shop.test")


@pytest.mark.parametrize("value", ["bounces", "bounces+x@b.test", "a@b@c", "bö@b.test", "x" * 40 + "@b.test", "a..b@c"])
def test_a_wrong_setting_is_one_sentence_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(RETURN_PATH_ENV, value)

    with pytest.raises(ConfigurationError, match=RETURN_PATH_ENV):
        return_path_setting()
