"""python -m benchmarks.build_bench [--messages N]: the cost of one message's bytes, old and new.

In one run, on the benchmarks' delivery rendered for N profiles: ``rendering.build_email`` plus
the flattening ``smtplib.SMTP.send_message`` does (the standard ``email`` package), against
``campaign.message.MessageSkeleton.build``. Each side keeps its best of three passes.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from email.generator import BytesGenerator

from campaign.message import MessageSkeleton
from campaign.rendering import DeliveryContent, build_email, compile_templates, recipient_context, render

SECRET = b"benchmark-secret-" + b"x" * 16
BASE_URL = "https://campaign-tracking.newsletters.shop.example/campaign"
CONTENT = DeliveryContent(
    delivery_id=1,
    label="build benchmark",
    sender="Bench <bench@bench.test>",
    subject="Hello {{ profile.first_name }}",
    text_template="Hello {{ profile.first_name }} {{ profile.last_name }}, offer {{ profile.id }}.\n" * 10,
    html_template='<p>Hello {{ profile.first_name }}</p><a href="https://bench.test/offer">offer</a>\n' * 10,
)


def best_seconds_per_message(build: Callable[[int], object], count: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for index in range(count):
            build(index)
        best = min(best, (time.perf_counter() - started) / count)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.build_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args(argv)
    templates = compile_templates(CONTENT)
    recipients = [
        {"profile_id": i, "email": f"p{i}@bench.test", "first_name": f"First{i % 97}", "last_name": f"Last{i % 89}"}
        for i in range(1, args.messages + 1)
    ]
    messages = [render(templates, recipient_context(r, CONTENT), CONTENT.delivery_id) for r in recipients]
    skeleton = MessageSkeleton.for_delivery(CONTENT, BASE_URL, SECRET)

    def old(index: int) -> bytes:
        message = build_email(CONTENT, messages[index], recipients[index]["email"], index + 1, SECRET, BASE_URL)
        out = io.BytesIO()
        BytesGenerator(out, policy=message.policy.clone(linesep="\r\n")).flatten(message)
        return out.getvalue()

    def new(index: int) -> bytes:
        return skeleton.build(messages[index], recipients[index]["email"], index + 1).data

    old_seconds = best_seconds_per_message(old, args.messages)
    new_seconds = best_seconds_per_message(new, args.messages)
    print(f"one message's bytes, {args.messages:,} messages, best of 3:")
    print(f"  EmailMessage + flatten       {old_seconds * 1e6:8.1f} µs")
    print(f"  MessageSkeleton.build        {new_seconds * 1e6:8.1f} µs")
    print(f"  ratio                        {old_seconds / new_seconds:8.0f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
