"""A local SMTP server for the embedded default and the tests: stores every mail in a Maildir.

Nothing leaves the machine. Reject rules make it answer like a real relay would for chosen
addresses (``*@hard-bounce.test=550`` → permanent refusal, ``*@soft-bounce.test=451`` → temporary).
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import mailbox
import signal
import threading
from collections import Counter
from pathlib import Path

from aiosmtpd.controller import Controller

log = logging.getLogger(__name__)

DEFAULT_REJECT_RULES = {"*@hard-bounce.test": 550, "*@soft-bounce.test": 451}
REPLIES = {550: "550 5.1.1 Mailbox does not exist", 451: "451 4.3.0 Mailbox temporarily unavailable, try later"}


class MaildirHandler:
    def __init__(self, maildir: str | Path | None, reject_rules: dict[str, int] | None = None) -> None:
        """``maildir`` None counts the mail without storing it (benchmarks)."""
        self.maildir = None
        if maildir is not None:
            for sub in ("tmp", "new", "cur"):  # Maildir(create=True) skips them when the folder exists
                Path(maildir, sub).mkdir(parents=True, exist_ok=True)
            self.maildir = mailbox.Maildir(str(maildir), create=False)
        self.reject_rules = dict(DEFAULT_REJECT_RULES if reject_rules is None else reject_rules)
        self.lock = threading.Lock()
        self.accepted = Counter()  # recipient address -> messages accepted
        self.refused = Counter()  # recipient address -> RCPT refusals
        self.on_message = None  # optional callback(total_accepted, client_address) after each message

    def _rule_for(self, address: str) -> int | None:
        for pattern, code in self.reject_rules.items():
            if fnmatch.fnmatch(address.lower(), pattern):
                return code
        return None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        code = self._rule_for(address)
        if code is not None:
            with self.lock:
                self.refused[address.lower()] += 1
            return REPLIES.get(code, f"{code} refused")
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        with self.lock:
            if self.maildir is not None:
                self.maildir.add(envelope.content)
            for address in envelope.rcpt_tos:
                self.accepted[address.lower()] += 1
            total = sum(self.accepted.values())
        if self.on_message is not None:
            self.on_message(total, session.peer)
        return "250 Message accepted for delivery"


def start_server(
    maildir: str | Path | None, host: str = "127.0.0.1", port: int = 8025, reject_rules: dict[str, int] | None = None
) -> tuple[Controller, MaildirHandler]:
    handler = MaildirHandler(maildir, reject_rules)
    controller = Controller(handler, hostname=host, port=port)
    controller.start()
    return controller, handler


def _parse_rule(text: str) -> tuple[str, int]:
    pattern, _, code = text.rpartition("=")
    if not pattern or not code.isdigit():
        raise argparse.ArgumentTypeError(f"reject rule must look like PATTERN=CODE, got {text!r}")
    return pattern, int(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--maildir", help="folder where every accepted mail is stored")
    target.add_argument("--discard", action="store_true", help="count mail without storing it (benchmarks)")
    parser.add_argument("--reject", type=_parse_rule, action="append", help="PATTERN=CODE, repeatable")
    args = parser.parse_args(argv)
    rules = dict(args.reject) if args.reject else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s devsmtp %(message)s")
    controller, _ = start_server(args.maildir, args.host, args.port, rules)
    log.info(
        "listening on %s:%s, %s",
        args.host,
        args.port,
        f"storing mail in {args.maildir}" if args.maildir else "discarding mail",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
