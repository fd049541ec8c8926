"""The wire bytes of one campaign mail per recipient, from a skeleton prepared once per chunk.

``MessageSkeleton.for_delivery`` does once per chunk what does not depend on the recipient: it
parses and encodes the sender (From, envelope sender), checks the tracking base URL, picks the
MIME boundary and encodes the constant headers. ``MessageSkeleton.build`` then writes one
message: To, Subject, Date, Message-ID, List-Unsubscribe and the text and HTML bodies, each
encoded only as much as it needs, with the standard library's encoders (``binascii`` under
``base64`` and ``quopri``, ``email.utils.formatdate``) and ``idna`` for domain names. It
replaces ``email.message.EmailMessage`` plus ``send_message``'s flattening, which cost about
3 ms per message, and which turn ``List-Unsubscribe`` into RFC 2047 encoded-words.

Every built message (``BuiltMessage.data``), as tested in tests/include/campaign/test_message.py:

- has CRLF line endings only and no line over 998 octets (RFC 5322 2.1.1 and 2.3); headers are
  folded at 78 octets where a fold is allowed;
- parses back with ``email.message_from_bytes(data, policy=email.policy.default)`` to the same
  From (one mailbox), To, Subject, Message-ID, List-Unsubscribe, text and HTML;
- has no RFC 2047 encoded-word inside an address or a URI (RFC 2047 section 5 allows them only
  in phrases and unstructured text) and no two encoded-words touching (``?==?``);
- is 7-bit ASCII, unless the skeleton was made with ``smtputf8=True`` (the relay offers SMTPUTF8,
  RFC 6531): then headers, addresses and bodies may be raw UTF-8 (RFC 6532, 8bit bodies), and
  ``BuiltMessage.mail_options`` asks for ``SMTPUTF8`` and ``BODY=8BITMIME`` when they are.

Line breaks of the bodies: every CRLF, lone LF and lone CR of the rendered text becomes CRLF on the
wire (RFC 5322 2.3: CR and LF only occur together). So the parsed part's ``get_content()``, with
CRLF read as LF, equals the rendered text with each of its CRLF, CR and LF read as LF. A body
that does not end with a line break keeps not ending with one: the CRLF before a MIME boundary
belongs to the boundary (RFC 2046 5.1.1).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from dataclasses import dataclass
from email import policy
from email.utils import formatdate

import idna

from campaign.errors import AddressNeedsSmtpUtf8, ConfigurationError, InvalidAddress
from campaign.rendering import DeliveryContent, RenderedMessage, message_id
from campaign.return_path import ReturnPath
from campaign.tokens import sign_token

CRLF = "\r\n"
MAX_LINE = 998  # octets without the CRLF: RFC 5322 2.1.1, a MUST
FOLD_AT = 78  # octets without the CRLF: RFC 5322 2.1.1, a SHOULD

# RFC 5322 3.2.3 atext, and the dot-atom made of it; RFC 6532 3.2 adds every non-ASCII character.
_ATEXT = "-A-Za-z0-9!#$%&'*+/=?^_`{|}~"  # "-" first: it is no range
_ATOM = re.compile(f"[{_ATEXT}]+")
_DOT_ATOM = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*")
_UTF8_ATOM = re.compile(f"[{_ATEXT}\u0080-\U0010ffff]+")
_UTF8_DOT_ATOM = re.compile(f"[{_ATEXT}\u0080-\U0010ffff]+(?:\\.[{_ATEXT}\u0080-\U0010ffff]+)*")
# RFC 5321 4.1.2 Domain (letters, digits, hyphens inside labels) and address-literal (dtext).
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_NAME = re.compile(f"{_LABEL}(?:\\.{_LABEL})*")
_DOMAIN_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]*\]")
# The common case, written as it is: dot-atom@host.name, short enough for any header line.
_PLAIN_ADDRESS = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*@{_LABEL}(?:\\.{_LABEL})*")
_PLAIN_ADDRESS_MAX = 254  # RFC 5321 4.5.3.1.3 path limit minus the angle brackets
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WSP_RUN = re.compile(r"[ \t]+")

# Unstructured text (Subject) and phrases go as they are when they are printable ASCII (or
# UTF-8 under SMTPUTF8) that a parser cannot misread; anything else becomes encoded-words.
# "=?" could be read as the start of an encoded-word (RFC 2047 6.1), and a leading space would be
# eaten by the unfolding after the colon (RFC 5322 2.2.3).
_SUBJECT_NAME = "Subject: "
_LONGEST_PLAIN_WORD = FOLD_AT - len(_SUBJECT_NAME)  # a longer word cannot be folded away
_LONG_WORD = re.compile(f"[^ ]{{{_LONGEST_PLAIN_WORD + 1},}}")

# RFC 2047 2: an encoded-word is at most 75 characters, a header line holding one at most 76.
# "=?utf-8?b?" + base64 + "?=": 39 octets are 52 base64 characters, a 64-character word, so
# "Subject: " plus one word is 73 and " " plus one word 65.
_EW_OCTETS = 39
EW_FOLD_AT = 76

# Bodies
_SEVEN_BIT_TEXT = bytes(range(0x20, 0x7F)) + b"\t\r\n"  # RFC 2045 2.7, without NUL or other controls
_EIGHT_BIT_TEXT = _SEVEN_BIT_TEXT + bytes(range(0x80, 0x100))  # RFC 2045 2.8
_ASCII = bytes(range(0x80))
_LONG_LINE = re.compile(rb"[^\r\n]{%d}" % (MAX_LINE + 1))

# The token of sign_token is digits, dots and hex digits: unreserved URI characters (RFC 3986
# 2.3), so it goes into both URIs verbatim; the space before it in the mailto subject is %20.
_URI = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")  # RFC 3986 2.2, 2.3 and pct-encoded
_LONGEST_PROFILE_ID = 20  # digits of the largest 64-bit id
_TOKEN_MAC_LENGTH = 32


@dataclass(frozen=True, slots=True)
class BuiltMessage:
    """One message ready for ``smtplib.SMTP.sendmail(from_addr, [envelope_to], data, mail_options)``.

    ``data``: the whole message, headers and body, CRLF line endings, no dot-stuffing (smtplib
    does it). ``message_id``: the Message-ID header's value, ``<campaign.{delivery}.{profile}.{mac}@{domain}>``
    (``campaign.rendering.message_id``).
    ``envelope_to``: the recipient as RCPT TO takes it (the A-label domain unless SMTPUTF8).
    ``mail_options``: ``()``, or ``("SMTPUTF8", "BODY=8BITMIME")`` when ``data`` or the
    envelope are not ASCII (only with a skeleton made with ``smtputf8=True``).
    ``envelope_from``: the sender as MAIL FROM takes it: the From address, or the message's own
    return path (``campaign.return_path``, VERP naming delivery and profile) when one is set.
    """

    data: bytes
    message_id: str
    envelope_to: str
    mail_options: tuple[str, ...] = ()
    envelope_from: str = ""


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _quoted_string(text: str) -> str:
    """RFC 5322 3.2.4 quoted-string: backslash and double quote become quoted-pairs."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quoted_local(local: str) -> str:
    """A local part as a quoted-string (RFC 5322 3.4.1, RFC 5321 4.1.2 Quoted-string) whose "=?"
    are written "=\\?" (a quoted-pair): no parser can take it for the start of an encoded-word
    (RFC 2047 5 forbids them in an addr-spec, yet Python's decodes one opening a quoted-string)."""
    return _quoted_string(local).replace("=?", "=\\?")


def _encoded_words(text: str) -> list[str]:
    """``text`` as RFC 2047 "B" encoded-words in UTF-8, each holding whole characters (section 5),
    to be written separated by folding white space, which a decoder drops between them (6.2)."""
    data = text.encode("utf-8")
    words = []
    start = 0
    while start < len(data):
        end = min(start + _EW_OCTETS, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never cut a UTF-8 sequence
            end -= 1
        words.append("=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False).decode("ascii") + "?=")
        start = end
    return words


def _header(name: str, words: list[str], limit: int = FOLD_AT) -> str:
    """``Name: word word...`` CRLF, folded (CRLF before the space between two words) so that lines
    stay within ``limit`` octets where the words allow (RFC 5322 2.2.3). Never folds right after
    the colon, and never before an empty word (a line of white space only, RFC 5322 3.2.2)."""
    lines = []
    line = f"{name}:"
    length = len(line)
    first = True
    for word in words:
        size = _octets(word)
        if not first and word and length + 1 + size > limit:
            lines.append(line)
            line, length = " " + word, 1 + size
        else:
            line += " " + word
            length += 1 + size
        first = False
    lines.append(line)
    return CRLF.join(lines) + CRLF


def _plain_text(value: str, smtputf8: bool) -> bool:
    """Whether unstructured header text (RFC 5322 3.2.5) can be written without encoded-words
    and read back the same: printable ASCII (or any UTF-8 under SMTPUTF8, RFC 6532 3.2), no
    "=?", no space at either end, no word too long to fold."""
    if not (value.isascii() or smtputf8) or _CONTROL.search(value) or "=?" in value:
        return False
    if value[:1] == " " or value[-1:] == " ":
        return False
    if value.isascii():
        return _LONG_WORD.search(value) is None
    return all(len(word.encode("utf-8")) <= _LONGEST_PLAIN_WORD for word in value.split(" "))


def subject_header(subject: str, smtputf8: bool = False) -> str:
    """The ``Subject:`` header line(s), CRLF-terminated.

    Plain text as it is, folded at its spaces; otherwise the whole subject as RFC 2047
    encoded-words, one per line (RFC 2047 5 (1)). Raises ``ValueError`` for a CR or LF: a subject
    is one line (``rendering.render`` collapses them), and one would let a profile add headers.
    """
    if "\r" in subject or "\n" in subject:
        raise ValueError("A subject is one line: it must not contain CR or LF (RFC 5322 3.6.5).")
    if _plain_text(subject, smtputf8):
        if len(subject) <= _LONGEST_PLAIN_WORD and subject.isascii():
            return _SUBJECT_NAME + subject + CRLF
        return _header("Subject", subject.split(" "))
    return _header("Subject", _encoded_words(subject), EW_FOLD_AT)


def display_name_words(name: str, smtputf8: bool = False) -> list[str]:
    """An RFC 5322 3.2.5 phrase meaning ``name``, as words to join with single spaces.

    White space first: each run of spaces and tabs becomes one space and none is kept at either
    end, as RFC 5322 3.2.2 reads a phrase (and Python's parser reads encoded-words in one).
    Then atoms when ``name`` is atoms separated by spaces; otherwise one quoted-string (commas,
    parentheses, dots, quotes, backslashes); encoded-words (RFC 2047 5 (3), base64 so no
    character of the phrase needs care) for non-ASCII text without SMTPUTF8, for control
    characters, for "=?", and for a quoted-string too long for a 78-octet line.

    A name longer than one encoded-word (39 octets of UTF-8) takes several, which RFC 2047 6.2
    readers join; Python 3.11's parser puts a space between them (CPython gh-128110).
    """
    name = _WSP_RUN.sub(" ", name).strip(" ")
    if not name:
        return []
    if (name.isascii() or smtputf8) and not _CONTROL.search(name) and "=?" not in name:
        atom = _ATOM if name.isascii() else _UTF8_ATOM
        words = name.split(" ")
        if all(atom.fullmatch(word) and _octets(word) <= _LONGEST_PLAIN_WORD for word in words):
            return words
        quoted = _quoted_string(name)
        if _octets(quoted) <= _LONGEST_PLAIN_WORD:
            return [quoted]
    return _encoded_words(name)


def addr_spec(address: str, smtputf8: bool = False, what: str = "The address") -> tuple[str, bool]:
    """``address`` (``local@domain``) as an RFC 5322 3.4.1 addr-spec, usable in a header and as an
    RFC 5321 path, and whether it holds UTF-8.

    The local part stays as it is when it is a dot-atom, else it becomes a quoted-string; it is
    never encoded (RFC 2047 5 forbids encoded-words in addresses). A non-ASCII domain becomes its
    IDNA A-label (RFC 5890, via ``idna``, UTS 46 mapping) unless ``smtputf8``, which keeps the
    U-label (RFC 6532 3.2). Raises ``AddressNeedsSmtpUtf8`` for a non-ASCII local part without
    ``smtputf8`` (no ASCII form exists), ``InvalidAddress`` for anything else unusable.
    """
    if len(address) <= _PLAIN_ADDRESS_MAX and _PLAIN_ADDRESS.fullmatch(address) and "=?" not in address:
        return address, False
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or domain.endswith("."):
        raise InvalidAddress(f"{what} {address!r} is not an address: it needs a local part, '@' and a domain.")
    if _CONTROL.search(address):
        raise InvalidAddress(f"{what} {address!r} contains a control character (RFC 5321 4.1.2).")
    utf8 = False
    if local.isascii():
        local_part = local if _DOT_ATOM.fullmatch(local) and "=?" not in local else _quoted_local(local)
    elif smtputf8:
        local_part = local if _UTF8_DOT_ATOM.fullmatch(local) and "=?" not in local else _quoted_local(local)
        utf8 = True
    else:
        raise AddressNeedsSmtpUtf8(
            f"{what} {address!r} has a non-ASCII local part: only a relay offering SMTPUTF8 (RFC 6531) can carry it."
        )
    if domain.isascii():
        if not (_HOST_NAME.fullmatch(domain) or _DOMAIN_LITERAL.fullmatch(domain)) or "=?" in domain:
            raise InvalidAddress(f"{what} {address!r} has no valid domain (RFC 5321 4.1.2).")
        domain_part = domain
    else:
        try:
            a_label = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidAddress(f"{what} {address!r} has no valid internationalised domain name: {exc}.") from None
        domain_part = domain if smtputf8 else a_label
        utf8 = utf8 or smtputf8
    spec = f"{local_part}@{domain_part}"
    if _octets(spec) > MAX_LINE - len("From: <>"):
        raise InvalidAddress(f"{what} {address[:40]!r}... is too long for a header line (RFC 5322 2.1.1).")
    return spec, utf8


def ascii_domain(domain: str) -> str:
    """``domain`` as ASCII: the IDNA A-label of a non-ASCII domain (RFC 5890), else as it is."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidAddress(f"The domain {domain!r} is no valid internationalised domain name: {exc}.") from None


def encode_body(text: str, boundary: bytes, allow_8bit: bool = False) -> tuple[bytes, bytes]:
    """``(Content-Transfer-Encoding, body)`` for a text part: the body has CRLF line breaks (each
    CRLF, CR or LF of ``text`` becomes one) and no line break of its own at the end.

    The cheapest encoding that is correct, in this order:

    - ``7bit`` (RFC 2045 2.7): printable ASCII, tabs and line breaks only, lines within 998
      octets, and the boundary nowhere in it. Nothing to encode: the common case costs a scan.
    - ``8bit`` (RFC 2045 2.8, RFC 6152), only when ``allow_8bit`` (SMTPUTF8 implies 8BITMIME):
      the same with raw UTF-8.
    - ``quoted-printable`` (RFC 2045 6.7) when fewer than one octet in six is non-ASCII: the
      output is then shorter than base64's 4/3 and stays readable. ``binascii.b2a_qp`` (the C
      encoder the ``quopri`` module uses; ``email.quoprimime`` is pure Python, per character)
      writes lines of at most 76 octets and encodes "=", controls and trailing white space.
    - ``base64`` (RFC 2045 6.8) otherwise (mostly non-Latin text): 76-character lines.

    Neither quoted-printable nor base64 can contain "=_", so a boundary starting with "=_" never
    occurs in them (RFC 2045 6.7 note); a 7bit or 8bit body containing it is quoted-printable.
    Raises ``UnicodeEncodeError`` (a ``ValueError``) for a lone surrogate in ``text``.
    """
    data = text.encode("utf-8")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = data.replace(b"\n", b"\r\n")
    if _LONG_LINE.search(data) is None and boundary not in data:
        if not data.translate(None, _SEVEN_BIT_TEXT):
            return b"7bit", data
        if allow_8bit and not data.translate(None, _EIGHT_BIT_TEXT):
            return b"8bit", data
    if len(data.translate(None, _ASCII)) * 6 < len(data):
        encoded = binascii.b2a_qp(data, istext=True)
        if b"\n" not in data:
            # b2a_qp ends its soft line breaks the way the input ends lines; with no line break
            # in the input it picks a bare LF: its only LFs are then soft breaks.
            encoded = encoded.replace(b"\n", b"\r\n")
        return b"quoted-printable", encoded
    return b"base64", base64.encodebytes(data).replace(b"\n", b"\r\n")[:-2]


class MessageSkeleton:
    """What every message of one delivery shares, prepared once per chunk; ``build`` makes each one.

    Not thread-safe (it caches the Date header of the current second).
    """

    __slots__ = (
        "delivery_id",
        "secret",
        "smtputf8",
        "envelope_from",
        "domain",
        "boundary",
        "return_path",
        "_from_header",
        "_after_date",
        "_unsubscribe_url",
        "_unsubscribe_mailto",
        "_text_heads",
        "_html_heads",
        "_end",
        "_date_second",
        "_date_header",
    )

    def __init__(
        self,
        *,
        delivery_id: int,
        secret: bytes,
        smtputf8: bool,
        envelope_from: str,
        domain: str,
        from_header: str,
        base_url: str,
        boundary: str,
        return_path: ReturnPath | None = None,
    ) -> None:
        self.delivery_id = delivery_id
        self.return_path = return_path
        self.secret = secret
        self.smtputf8 = smtputf8
        self.envelope_from = envelope_from
        self.domain = domain
        self.boundary = boundary
        self._from_header = from_header
        self._unsubscribe_url = f"<{base_url}/u/"
        self._unsubscribe_mailto = f"<mailto:unsubscribe@{domain}?subject=unsubscribe%20"
        self._after_date = (
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"  # RFC 8058 3.1
            f"X-Campaign-Delivery: {delivery_id}\r\n"
            "MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'
            "\r\n"
        )
        part = (
            '--{boundary}\r\nContent-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
        )
        ctes = (b"7bit", b"8bit", b"quoted-printable", b"base64")
        self._text_heads = {
            cte: part.format(boundary=boundary, subtype="plain", cte=cte.decode()).encode() for cte in ctes
        }
        self._html_heads = {
            cte: ("\r\n" + part.format(boundary=boundary, subtype="html", cte=cte.decode())).encode() for cte in ctes
        }
        self._end = f"\r\n--{boundary}--\r\n".encode()
        self._date_second = -1
        self._date_header = ""

    @classmethod
    def for_delivery(
        cls,
        content: DeliveryContent,
        base_url: str,
        secret: bytes,
        *,
        smtputf8: bool = False,
        boundary: str | None = None,
        return_path: ReturnPath | None = None,
    ) -> MessageSkeleton:
        """The skeleton of ``content``'s messages.

        ``content.sender``: one mailbox, ``Name <local@domain>`` or ``local@domain`` (RFC 5322
        3.4; a quoted or encoded display name is read as a mail client would). ``base_url``: the
        tracking base, an ASCII URI without trailing slash; the unsubscribe URL is
        ``{base_url}/u/{token}``. ``secret``: the key of ``tokens.sign_token``. ``smtputf8``:
        the relay offers SMTPUTF8 (RFC 6531), so UTF-8 may go raw. ``boundary``: for tests; by
        default "=_campaign_" and 24 random hex digits (RFC 2046 5.1.1: 1 to 70 characters).
        ``return_path``: the base of each message's envelope sender (``return_path_setting()``);
        None keeps the From address as envelope sender. The message bytes are the same either way
        (the receiving server writes the Return-Path header, RFC 5321 4.4).

        Raises ``InvalidAddress`` (``AddressNeedsSmtpUtf8``) for a sender that is not exactly one
        usable mailbox, ``ConfigurationError`` for a base URL that is not a URI or is too long.
        """
        header = policy.default.header_factory("From", content.sender)
        groups = header.groups
        if len(groups) != 1 or groups[0].display_name is not None or len(header.addresses) != 1:
            raise InvalidAddress(
                f"The sender {content.sender!r} of delivery {content.delivery_id} must be one address, "
                "like 'Shop <news@shop.example>'."
            )
        sender = header.addresses[0]
        if not sender.username or not sender.domain:
            raise InvalidAddress(
                f"The sender {content.sender!r} of delivery {content.delivery_id} has no usable address."
            )
        what = f"The sender address of delivery {content.delivery_id}"
        envelope_from, _ = addr_spec(f"{sender.username}@{sender.domain}", smtputf8, what)
        domain = ascii_domain(sender.domain)
        words = display_name_words(sender.display_name, smtputf8)
        limit = EW_FOLD_AT if any(word.startswith("=?") for word in words) else FOLD_AT
        from_header = _header("From", [*words, f"<{envelope_from}>"] if words else [envelope_from], limit)
        if any(_octets(line) > MAX_LINE for line in from_header.split(CRLF)):
            raise InvalidAddress(f"{what} is too long for a header line (RFC 5322 2.1.1).")

        if not _URI.fullmatch(base_url) or "=?" in base_url:
            raise ConfigurationError(
                f"The tracking base URL {base_url!r} is not an ASCII URI (RFC 3986): it must not contain spaces, "
                'quotes, angle brackets, non-ASCII characters or "=?" (percent-encode them).'
            )
        longest_token = len(f"{content.delivery_id}.{'9' * _LONGEST_PROFILE_ID}.") + _TOKEN_MAC_LENGTH
        if len(f"List-Unsubscribe: <{base_url}/u/>,") + longest_token > MAX_LINE:
            raise ConfigurationError(
                f"The tracking base URL {base_url[:60]!r}... is too long: the List-Unsubscribe URL must fit on "
                "one header line of 998 octets, since a URI cannot be folded (RFC 5322 2.1.1)."
            )
        if boundary is None:
            boundary = "=_campaign_" + secrets.token_hex(12)
        return cls(
            delivery_id=content.delivery_id,
            secret=secret,
            smtputf8=smtputf8,
            envelope_from=envelope_from,
            domain=domain,
            from_header=from_header,
            base_url=base_url,
            boundary=boundary,
            return_path=return_path,
        )

    def message_id(self, profile_id: int) -> str:
        """``<campaign.{delivery}.{profile}.{mac}@{sender domain as A-label}>``: signed, and the same
        for every resend, so a receiver can drop the copy (``campaign.rendering.message_id``)."""
        return message_id(self.secret, self.delivery_id, profile_id, self.domain)

    def _date(self) -> str:
        """The Date header (RFC 5322 3.3, 3.6.1), made once per second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_header = f"Date: {formatdate(now, usegmt=True)}\r\n"
            self._date_second = now
        return self._date_header

    def build(self, rendered: RenderedMessage, recipient_address: str, profile_id: int) -> BuiltMessage:
        """The message of ``rendered`` for ``recipient_address`` (``local@domain``).

        Headers, in order: From, To (the address alone), Subject, Date, Message-ID,
        List-Unsubscribe (RFC 2369 3.2: the signed HTTPS URL and a mailto, verbatim, folded after
        the comma between them and nowhere else: two 38-octet tokens never fit one 78-octet line),
        List-Unsubscribe-Post (RFC 8058), X-Campaign-Delivery, MIME-Version, Content-Type
        multipart/alternative (RFC 2046 5.1.4) of text/plain then text/html, both UTF-8.

        Raises ``AddressNeedsSmtpUtf8`` or ``InvalidAddress`` for the recipient's address (record
        the recipient and go on), ``ValueError`` for a subject with a line break or a lone
        surrogate in the rendered text.
        """
        smtputf8 = self.smtputf8
        to_address, _ = addr_spec(recipient_address, smtputf8)
        token = sign_token(self.secret, "unsubscribe", self.delivery_id, profile_id)
        mid = message_id(self.secret, self.delivery_id, profile_id, self.domain)
        head = (
            f"{self._from_header}To: {to_address}\r\n{subject_header(rendered.subject, smtputf8)}{self._date()}"
            f"Message-ID: {mid}\r\nList-Unsubscribe: {self._unsubscribe_url}{token}>,\r\n"
            f" {self._unsubscribe_mailto}{token}>\r\n{self._after_date}"
        )
        boundary = self.boundary.encode("ascii")
        text_cte, text = encode_body(rendered.text, boundary, smtputf8)
        html_cte, html = encode_body(rendered.html, boundary, smtputf8)
        data = b"".join(
            (head.encode("utf-8"), self._text_heads[text_cte], text, self._html_heads[html_cte], html, self._end)
        )
        # VERP: one HMAC per message (about a microsecond), so a bounce names its row exactly.
        envelope_from = (
            self.envelope_from
            if self.return_path is None
            else self.return_path.address(self.secret, self.delivery_id, profile_id)
        )
        if smtputf8 and not data.isascii():
            return BuiltMessage(data, mid, to_address, ("SMTPUTF8", "BODY=8BITMIME"), envelope_from)
        return BuiltMessage(data, mid, to_address, (), envelope_from)
