"""The two baselines of the send benchmark, on the standard library on purpose.

They stay what they are when the product's message builder changes: nothing here calls
``campaign`` code. Each runs over ``connections`` worker processes (the work is CPU-bound, so
processes, not threads), one SMTP connection each, the recipients split evenly in contiguous
ranges:

- (a) **plain loop**: each worker reads its recipients from the database, renders the benchmark
  message with Jinja (sandboxed, strict, as a careful sender would), rewrites its links to tracked
  ones and adds an open pixel, builds an ``email.message.EmailMessage`` (multipart text + HTML,
  Message-ID, List-Unsubscribe) and sends it with ``smtplib``'s ``send_message``;
- (b) **pre-built bytes**: each worker builds the same messages' bytes first, untimed, then sends
  them with ``sendmail``: what the machine can send, with no per-message work but SMTP's.

Timing starts once every worker is ready (imports done, templates compiled, and for (b) the
bytes built) and ends when the last one has quit its connection.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import multiprocessing
import queue
import re
import smtplib
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from urllib.parse import quote

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import create_engine, text

_ANCHOR_HREF = re.compile(r"""(<a\b[^>]*?\shref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_RECIPIENTS = text(
    "SELECT id, email, first_name, last_name FROM profiles WHERE id BETWEEN :first AND :last ORDER BY id"
)
READY_TIMEOUT = 3 * 3600  # building a million messages' bytes on two busy cores


@dataclass(frozen=True)
class Job:
    database_url: str
    delivery_id: int
    label: str
    message: dict[str, str]  # sender, subject, text, html (Jinja)
    secret: bytes
    base_url: str
    smtp_port: int


def token(secret: bytes, purpose: str, *ids: int) -> str:
    """A signed token as tracking and unsubscribe URLs carry: ids, then a truncated HMAC."""
    payload = ".".join(str(i) for i in ids)
    mac = hmac.new(secret, f"{purpose}:{payload}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{payload}.{mac}"


class Builder:
    """The benchmark message for one recipient, as an ``EmailMessage``."""

    def __init__(self, job: Job) -> None:
        self.job = job
        text_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        html_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
        self.subject = text_env.from_string(job.message["subject"])
        self.text = text_env.from_string(job.message["text"])
        self.html = html_env.from_string(job.message["html"])
        self.sender = job.message["sender"]
        self.envelope_sender = parseaddr(self.sender)[1]
        self.domain = self.envelope_sender.rpartition("@")[2]
        links = [html.unescape(m.group(3)) for m in _ANCHOR_HREF.finditer(job.message["html"])]
        self.link_ids = {url: number for number, url in enumerate(dict.fromkeys(links), start=1)}

    def tracked(self, rendered_html: str, profile_id: int) -> str:
        def click(match: re.Match) -> str:
            link_id = self.link_ids.get(html.unescape(match.group(3)))
            if link_id is None:
                return match.group(0)
            url = f"{self.job.base_url}/c/{token(self.job.secret, 'click', self.job.delivery_id, profile_id, link_id)}"
            return f"{match.group(1)}{match.group(2)}{html.escape(url)}{match.group(2)}"

        pixel = f"{self.job.base_url}/o/{token(self.job.secret, 'open', self.job.delivery_id, profile_id)}"
        image = f'<img src="{html.escape(pixel)}" width="1" height="1" alt="" style="border:0">'
        return _ANCHOR_HREF.sub(click, rendered_html) + image

    def build(self, recipient: dict) -> EmailMessage:
        profile_id = recipient["id"]
        context = {
            "profile": {
                "id": profile_id,
                "email": recipient["email"],
                "first_name": recipient["first_name"] or "",
                "last_name": recipient["last_name"] or "",
            },
            "delivery": {"id": self.job.delivery_id, "label": self.job.label},
        }
        unsubscribe = token(self.job.secret, "unsubscribe", self.job.delivery_id, profile_id)
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = recipient["email"]
        message["Subject"] = " ".join(self.subject.render(context).split())
        message["Date"] = formatdate(usegmt=True)
        # signed, as the product's (campaign.rendering.message_id)
        signed_id = token(self.job.secret, "message_id", self.job.delivery_id, profile_id)
        message["Message-ID"] = f"<campaign.{signed_id}@{self.domain}>"
        message["List-Unsubscribe"] = (
            f"<{self.job.base_url}/u/{unsubscribe}>, "
            f"<mailto:unsubscribe@{self.domain}?subject={quote('unsubscribe ' + unsubscribe)}>"
        )
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message["X-Campaign-Delivery"] = str(self.job.delivery_id)
        message.set_content(self.text.render(context))
        message.add_alternative(self.tracked(self.html.render(context), profile_id), subtype="html")
        return message


def _recipients(job: Job, first: int, last: int):
    engine = create_engine(job.database_url)
    with engine.connect() as conn:
        rows = conn.execution_options(yield_per=1000).execute(_RECIPIENTS, {"first": first, "last": last})
        yield from rows.mappings()
    engine.dispose()


def _worker(job: Job, first: int, last: int, prebuilt: bool, ready, go, done) -> None:
    builder = Builder(job)
    messages = []
    if prebuilt:
        for recipient in _recipients(job, first, last):
            message = builder.build(recipient)
            messages.append((recipient["email"], message.as_bytes(policy=message.policy.clone(linesep="\r\n"))))
    ready.put(first)
    go.wait()
    sent = 0
    with smtplib.SMTP("127.0.0.1", job.smtp_port, timeout=60) as smtp:
        if prebuilt:
            for address, data in messages:
                smtp.sendmail(builder.envelope_sender, [address], data)
                sent += 1
        else:
            for recipient in _recipients(job, first, last):
                smtp.send_message(builder.build(recipient), builder.envelope_sender, [recipient["email"]])
                sent += 1
    done.put(sent)


def ranges(count: int, parts: int) -> list[tuple[int, int]]:
    """``1..count`` in ``parts`` contiguous ranges whose sizes differ by one at most."""
    bounds = [count * i // parts for i in range(parts + 1)]
    return [(bounds[i] + 1, bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]


def send_seconds(job: Job, recipients: int, connections: int, prebuilt: bool) -> float:
    """Seconds for ``connections`` processes to send the messages of profiles 1..``recipients``."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: nothing inherited from this one
    ready, go, done = context.Queue(), context.Event(), context.Queue()
    workers = [
        context.Process(target=_worker, args=(job, first, last, prebuilt, ready, go, done), daemon=True)
        for first, last in ranges(recipients, connections)
    ]
    for worker in workers:
        worker.start()
    try:
        _collect(ready, workers, READY_TIMEOUT, "getting ready")
        go.set()
        started = time.perf_counter()
        sent = sum(_collect(done, workers, READY_TIMEOUT, "sending"))
        seconds = time.perf_counter() - started
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    if sent != recipients:
        raise RuntimeError(
            f"the {'pre-built bytes' if prebuilt else 'plain loop'} baseline sent {sent} of {recipients}"
        )
    return seconds


def _collect(results: queue.Queue, workers: list, timeout: float, what: str) -> list:
    collected, deadline = [], time.monotonic() + timeout
    while len(collected) < len(workers):
        try:
            collected.append(results.get(timeout=1))
        except queue.Empty:
            if any(w.exitcode not in (None, 0) for w in workers):
                raise RuntimeError(f"a baseline worker process failed while {what}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"the baseline workers were not done {what} after {timeout}s") from None
    return collected
