"""The local SMTP servers of the benchmarks, each in its own process: Postfix's ``smtp-sink``
(C, made to measure SMTP clients, so the sink is not what is measured) and the project's own
aiosmtpd server in discard mode."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from campaign.dev.net import free_port, wait_until
from campaign.dev.smtp import connection_factory

SMTP_SINK = Path("/usr/sbin/smtp-sink")

# -c: running counters on stdout (how many messages were accepted); -a: no AUTH announced (the
# sink takes no login); -t: a connection may stay idle 10 minutes (a chunk between two pages of
# recipients on a busy machine). It announces PIPELINING and 8BITMIME, as a relay does; this
# version (Postfix 3.7) has no SMTPUTF8, which the benchmarks' ASCII addresses do not need.
SMTP_SINK_OPTIONS = ("-c", "-a", "-t", "600")
_MESSAGES = re.compile(rb"mesg=(\d+)")


def _accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class PostfixSink:
    port: int
    counters: Path

    def accepted(self) -> int:
        """Messages the sink has accepted since it started (its last ``-c`` counter line)."""
        with open(self.counters, "rb") as counters:  # one short line per message: read the tail only
            counters.seek(max(0, self.counters.stat().st_size - 200))
            found = _MESSAGES.findall(counters.read())
        return int(found[-1]) if found else 0


@contextmanager
def postfix_sink() -> Iterator[PostfixSink]:
    """Postfix's smtp-sink on a free loopback port, discarding mail and counting it."""
    if not os.access(SMTP_SINK, os.X_OK):
        raise FileNotFoundError(
            f"{SMTP_SINK} is missing: install Debian's postfix package (scripts/ensure-system-packages.sh does)."
        )
    port = free_port()
    # smtp-sink refuses to run as root without dropping to another user once the socket is open.
    user = ("-u", "nobody") if os.geteuid() == 0 else ()
    with tempfile.TemporaryDirectory(prefix="campaign-smtp-sink-") as folder:
        counters = Path(folder) / "counters"
        with open(counters, "wb") as output:
            process = subprocess.Popen(
                [str(SMTP_SINK), *SMTP_SINK_OPTIONS, *user, f"127.0.0.1:{port}", "1000"],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda: _accepting(port) or process.poll() is not None, 20, 0.1, "smtp-sink")
            if process.poll() is not None:
                raise RuntimeError(f"smtp-sink exited at start: {counters.read_text(errors='replace').strip()}")
            yield PostfixSink(port, counters)
        finally:
            process.terminate()
            process.wait(10)


@contextmanager
def smtp_sink():
    """The project's aiosmtpd server in its own process, counting and discarding mail."""
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "campaign.dev.smtp", "--port", str(port), "--discard"],
        env={**os.environ, "PYTHONPATH": str(root / "include")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: _accepting(port), 20, 0.1, "the SMTP sink")
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


smtp_factory = connection_factory  # what send_chunk takes to reach a sink on a port
