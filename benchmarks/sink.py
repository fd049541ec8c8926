"""The local SMTP server of the benchmarks, in its own process."""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from campaign.dev.net import free_port, wait_until


@contextmanager
def smtp_sink():
    """The local SMTP server in its own process, counting and discarding mail."""
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "campaign.dev.smtp", "--port", str(port), "--discard"],
        env={**os.environ, "PYTHONPATH": str(root / "include")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def accepting() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(accepting, 20, 0.1, "the SMTP sink")
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


def smtp_factory(port: int) -> Callable[[], AbstractContextManager[smtplib.SMTP]]:
    """What send_chunk takes to open its SMTP connection: a plain one to the sink on ``port``."""

    @contextmanager
    def connection() -> Iterator[smtplib.SMTP]:
        client = smtplib.SMTP("127.0.0.1", port, timeout=30)
        try:
            yield client
        finally:
            client.quit()

    return connection
