"""Play the recipients of the local Maildir: open some mails and click some links over HTTP.

For the demo after `make run`: mails are read from the Maildir of the local SMTP server, and the
open pixel and tracked links of a deterministic sample are requested from the tracking endpoints,
so that the hourly rates move through the real path.
"""

from __future__ import annotations

import mailbox
import random
import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path

import httpx

from campaign.errors import InvalidInput

_PIXEL = re.compile(r'<img src="([^"]+/o/[^"]+)"')
_TRACKED_LINK = re.compile(r'href="([^"]+/c/[^"]+)"')


@dataclass
class PlayReport:
    mails: int = 0
    opens: int = 0
    clicks: int = 0
    failures: int = 0


def tracked_urls(raw_mail: bytes) -> tuple[str | None, list[str]]:
    """The open-pixel URL and the tracked link URLs of a mail's HTML part."""
    message = message_from_bytes(raw_mail, policy=policy.default)
    body = message.get_body(("html",))
    if body is None:
        return None, []
    html = body.get_content()
    pixel = _PIXEL.search(html)
    return (pixel.group(1).replace("&amp;", "&") if pixel else None), [
        url.replace("&amp;", "&") for url in _TRACKED_LINK.findall(html)
    ]


def play(
    maildir: str | Path, open_rate: float, click_rate: float, seed: int = 1, limit: int | None = None
) -> PlayReport:
    if not Path(maildir, "new").is_dir():
        raise InvalidInput(f"{maildir} is not a Maildir (no new/ folder): point --maildir at the local SMTP server's.")
    box = mailbox.Maildir(str(maildir), create=False)
    rng = random.Random(seed)
    report = PlayReport()
    with httpx.Client(timeout=10, follow_redirects=False, headers={"User-Agent": "campaign-play-recipients"}) as http:
        for key in sorted(box.keys())[:limit]:
            report.mails += 1
            pixel, links = tracked_urls(box.get_bytes(key))
            requests = []
            if pixel and rng.random() < open_rate:
                requests.append(("open", pixel))
            if links and rng.random() < click_rate:
                requests.append(("click", rng.choice(links)))
            for kind, url in requests:
                try:
                    response = http.get(url)
                except httpx.HTTPError:
                    report.failures += 1
                    continue
                if response.status_code in (200, 302):
                    setattr(report, f"{kind}s", getattr(report, f"{kind}s") + 1)
                else:
                    report.failures += 1
    return report
