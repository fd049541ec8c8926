"""A throw-away IMAP server for tests and ``make run``: Debian's Dovecot (``dovecot-imapd``) with
its own configuration in a temporary directory, on a free loopback port, run as an unprivileged
user (``nobody`` when we are root: Dovecot's "rootless" mode, every service under one account).

Plaintext login is allowed because it only listens on 127.0.0.1; one user from a passwd-file,
with a random password unless one is given (a password equal to a common word, such as the
login ``bounces``, would make Airflow's secret masker star that word out of every task log);
Maildir storage under the temporary directory; logs in ``dovecot.log`` there. Messages go in with
IMAP APPEND, as a delivery agent would put them, so the tests read them back through the same
protocol the product uses.

Dovecot writes what every logged-in session sends into ``rawlog/`` (its ``rawlog_dir``
setting), so a test can read which commands the product used (``ImapServer.commands``).
``running_server(capabilities=…)`` makes Dovecot announce another CAPABILITY list after login
(its ``imap_capability`` setting, which replaces the built-in list): a real server that does not
offer, say, MOVE (RFC 6851) or UIDPLUS (RFC 4315), for the product's fallbacks.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from campaign.bounces import logged_in
from campaign.dev.net import free_port, wait_until

DOVECOT = "/usr/sbin/dovecot"


def dovecot_binary() -> str:
    """The ``dovecot`` master binary; raises ``FileNotFoundError`` naming the Debian package."""
    found = shutil.which("dovecot") or (DOVECOT if os.path.exists(DOVECOT) else None)
    if not found:
        raise FileNotFoundError("Dovecot not found (Debian package dovecot-imapd)")
    return found


@dataclass
class ImapServer:
    host: str
    port: int
    user: str
    password: str
    folder: Path
    extra_password: str = ""

    @property
    def log_path(self) -> Path:
        return self.folder / "dovecot.log"

    def connection_json(self) -> str:
        """The value of ``AIRFLOW_CONN_CAMPAIGN_BOUNCES`` for this server (IMAP provider, no TLS)."""
        import json

        return json.dumps(
            {
                "conn_type": "imap",
                "host": self.host,
                "port": self.port,
                "login": self.user,
                "password": self.password,
                "extra": {"use_ssl": False},
            }
        )

    @contextmanager
    def client(self) -> Iterator[imaplib.IMAP4]:
        """A logged-in imaplib client, logged out at the end."""
        client = imaplib.IMAP4(self.host, self.port)
        client.login(self.user, self.password)
        with logged_in(client):
            yield client

    def append(self, data: bytes, folder: str = "INBOX") -> None:
        """Put one message into ``folder`` (IMAP APPEND, RFC 3501 6.3.11)."""
        with self.client() as client:
            status, reply = client.append(folder, None, None, data)
            if status != "OK":
                raise RuntimeError(f"APPEND to {folder} refused: {reply}")

    def messages(self, folder: str = "INBOX", search: str = "ALL") -> list[bytes]:
        """The raw bytes of the messages of ``folder`` that match ``search`` (IMAP SEARCH, RFC 3501
        6.4.4; default every message, those flagged \\Deleted included), in UID order; [] if the
        folder does not exist."""
        with self.client() as client:
            status, _ = client.select(folder, readonly=True)
            if status != "OK":
                return []
            _, data = client.uid("SEARCH", None, search)
            uids = data[0].split()
            found = []
            for uid in uids:
                _, parts = client.uid("FETCH", uid, "(BODY.PEEK[])")
                found.append(next(part[1] for part in parts if isinstance(part, tuple)))
            return found

    def new_account(self, user: str) -> ImapServer:
        """Another account on the same server, with its own empty mailbox: a test gets a fresh
        mailbox without a new server. Any user name logs in with the server's second password
        (``extra_password``), and each has its own Maildir."""
        import dataclasses

        return dataclasses.replace(self, user=user, password=self.extra_password)

    def folders(self) -> set[str]:
        with self.client() as client:
            _, listing = client.list()
        return {line.decode().rsplit(" ", 1)[-1].strip('"') for line in listing if line}

    def capabilities(self) -> list[str]:
        """What the server announces to this account after login (CAPABILITY, RFC 3501 6.1.1), in
        its order: the answer to the command, not imaplib's list from before the login."""
        with self.client() as client:
            _, data = client.capability()
        return data[-1].decode("ascii").split()

    def commands(self, timeout: float = 5.0) -> list[str]:
        """The commands this account's logged-in sessions sent so far, oldest session first,
        without their tags (``UID MOVE 1,2 Processed``), from Dovecot's rawlog; waits (at most
        ``timeout`` seconds) until every such session has ended, so its file is complete."""
        # imap-login logs each login with the pid of the imap process that serves the session
        # (mpid), before the session runs; that process logs "Disconnected" when it ends.
        logins = re.compile(rf"Login: user=<{re.escape(self.user)}>, .*?\bmpid=(\d+)")
        ends = re.compile(rf"imap\({re.escape(self.user)}\)<(\d+)><[^>]*>: Info: Disconnected")

        def ended() -> list[int] | None:
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            pids = list(dict.fromkeys(int(pid) for pid in logins.findall(text)))
            return pids if set(pids) <= {int(pid) for pid in ends.findall(text)} else None

        wait_until(lambda: ended() is not None, timeout, 0.05, f"the sessions of {self.user} to end")
        commands = []
        for pid in ended() or []:
            for path in sorted((self.folder / "rawlog").glob(f"*.{pid}.*.in")):
                for line in path.read_text(errors="replace").splitlines():
                    # "<time> <tag> <command>"; literal data (an APPEND's message) has no tag.
                    parts = line.split(" ", 2)
                    if len(parts) == 3 and re.fullmatch(r"[A-Z]{4}\d+", parts[1]):
                        commands.append(parts[2])
        return commands


_CONFIG = """\
# Written by campaign.dev.imap: a throw-away IMAP server, one account, loopback only.
base_dir = {run}
state_dir = {state}
log_path = {log}
info_log_path = {log}
protocols = imap
listen = 127.0.0.1
ssl = no
# Loopback only: a plaintext password never leaves the machine.
disable_plaintext_auth = no
login_trusted_networks = 127.0.0.0/8
auth_mechanisms = plain login
# A wrong password is answered at once (default: after 2 s): tests try one on purpose.
auth_failure_delay = 0
# Rootless: every service runs as the one account that started the master.
default_login_user = {account}
default_internal_user = {account}
default_internal_group = {group}
mail_location = maildir:{folder}/mail/%u
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 1
first_valid_gid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {folder}/passwd
}}
# Throw-away accounts for tests (ImapServer.new_account): any other name, with this password.
passdb {{
  driver = static
  args = password={extra_password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={folder}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  chroot =
}}
service auth {{
  user = {account}
}}
service auth-worker {{
  user = {account}
}}
protocol imap {{
  mail_max_userip_connections = 50
  # Every logged-in session's input and output, one file each (ImapServer.commands).
  rawlog_dir = {folder}/rawlog
{capability}}}
"""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(64).startswith(b"* OK")
    except OSError:
        return False


@contextmanager
def running_server(
    prefix: str = "campaign-imap-",
    user: str = "bounces",
    password: str | None = None,
    capabilities: list[str] | None = None,
) -> Iterator[ImapServer]:
    """Start Dovecot in the foreground (``dovecot -F -c <config>``) and stop it at the end.

    ``password``: the account's, random (``secrets.token_urlsafe``) when None. ``capabilities``:
    the CAPABILITY list Dovecot announces after login instead of its own (``imap_capability``,
    Dovecot 2.3's 20-imap.conf: a value not starting with ``+`` replaces the built-in list);
    Dovecot still carries out a command it does not announce, so a test tells what the product
    sent from ``ImapServer.commands``.

    Raises ``FileNotFoundError`` when Dovecot is not installed, ``TimeoutError`` (with the end of
    its log) when it does not answer on its port within 20 s.
    """
    binary = dovecot_binary()
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    account = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    entry = pwd.getpwnam(account)
    for sub in ("run", "state", "mail", "home", "rawlog"):
        (folder / sub).mkdir()
    password = password if password is not None else secrets.token_urlsafe(16)
    if capabilities is not None and not all(re.fullmatch(r"[A-Za-z0-9=+.-]+", c) for c in capabilities):
        raise ValueError(f"not IMAP capability names (RFC 3501 9, capability): {capabilities!r}")
    (folder / "passwd").write_text(f"{user}:{{PLAIN}}{password}::::::\n")
    port = free_port()
    extra_password = secrets.token_hex(8)
    config = folder / "dovecot.conf"
    config.write_text(
        _CONFIG.format(
            run=folder / "run",
            state=folder / "state",
            log=folder / "dovecot.log",
            account=account,
            group=_group_name(entry.pw_gid),
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            folder=folder,
            port=port,
            extra_password=extra_password,
            capability="" if capabilities is None else f"  imap_capability = {' '.join(capabilities)}\n",
        )
    )
    as_user: list[str] = []
    if os.geteuid() == 0:
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", account, "--"]
    process = subprocess.Popen(
        [*as_user, binary, "-F", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "stderr.log", "wb"),  # noqa: SIM115 - closed with the process
        start_new_session=True,
    )
    try:
        try:
            wait_until(lambda: process.poll() is not None or _listening(port), 20, 0.1, f"Dovecot on port {port}")
            if process.poll() is not None:
                raise TimeoutError("Dovecot exited")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; its log ends:\n{_tail(folder)}") from None
        yield ImapServer("127.0.0.1", port, user, password, folder, extra_password)
    finally:
        _stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the master (it stops its children), SIGKILL to the group after 10 s."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


def _tail(folder: Path) -> str:
    text = ""
    for name in ("dovecot.log", "stderr.log"):
        path = folder / name
        if path.exists():
            text += path.read_text(errors="replace")[-2000:]
    return text
