"""The throw-away Dovecot: starts unprivileged on loopback, takes and gives back mail, stops clean."""

from __future__ import annotations

import imaplib
import os
import socket

import pytest


def test_dovecot_serves_one_account_on_loopback_and_stops(imap_server):
    imap_server.append(b"Subject: one\r\n\r\nfirst\r\n")
    imap_server.append(b"Subject: two\r\n\r\nsecond\r\n")

    assert imap_server.messages() == [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"]
    assert imap_server.host == "127.0.0.1"
    with pytest.raises(imaplib.IMAP4.error):
        imaplib.IMAP4(imap_server.host, imap_server.port).login(imap_server.user, "wrong")
    log = imap_server.log_path.read_text()
    assert f"Login: user=<{imap_server.user}>" in log
    # Not as root: every process of this server belongs to an unprivileged account.
    owners = {
        os.stat(f"/proc/{pid}").st_uid
        for pid in os.listdir("/proc")
        if pid.isdigit()
        and _cmdline(pid).startswith(("dovecot", "/usr/sbin/dovecot"))
        and str(imap_server.folder) in _cmdline(pid)
    }
    assert owners and 0 not in owners


def test_the_account_logs_in_with_a_random_password_not_its_name(dovecot):
    # A password equal to the login "bounces" made Airflow's secret masker star that word out of
    # every task log ("process_***: 18 messages read").
    assert dovecot.user == "bounces"
    assert dovecot.password != dovecot.user and len(dovecot.password) >= 20
    with dovecot.client() as client:
        assert client.noop()[0] == "OK"


def test_a_server_announces_the_capabilities_it_is_given_and_records_the_commands(dovecot, dovecot_without):
    server = dovecot_without("MOVE", "UIDPLUS")
    server.append(b"Subject: one\r\n\r\nfirst\r\n")

    announced = server.capabilities()

    assert "MOVE" in dovecot.capabilities() and "UIDPLUS" in dovecot.capabilities()
    assert {"IMAP4rev1", "IDLE"} <= set(announced) and not {"MOVE", "UIDPLUS"} & set(announced)
    assert server.messages() == [b"Subject: one\r\n\r\nfirst\r\n"]
    # Dovecot's rawlog: what the account's sessions sent after login, tags left out (the first
    # session is the fixture's check of what the server announces).
    assert server.commands() == [
        "CAPABILITY", "LOGOUT", "APPEND INBOX {23}", "LOGOUT", "CAPABILITY", "LOGOUT",
        "EXAMINE INBOX", "UID SEARCH ALL", "UID FETCH 1 (BODY.PEEK[])", "LOGOUT",
    ]  # fmt: skip


def test_a_capability_list_that_is_no_list_of_names_is_refused():
    from campaign.dev.imap import running_server

    with pytest.raises(ValueError, match="not IMAP capability names"), running_server(capabilities=["MOVE\nssl = yes"]):
        pass


def test_the_server_is_gone_after_the_block():
    from campaign.dev.imap import running_server

    with running_server() as server:
        port, folder = server.port, server.folder
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    assert not folder.exists()


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
