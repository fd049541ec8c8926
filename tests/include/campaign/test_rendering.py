"""Sandboxed strict templates, escaping, header safety, the MIME message and signed tokens."""

from __future__ import annotations

from email import message_from_bytes, policy
from urllib.parse import quote

import pytest

from campaign.errors import TemplateProblem
from campaign.rendering import (
    DeliveryContent,
    RenderedMessage,
    build_email,
    compile_templates,
    recipient_context,
    render,
    sender_domain,
)
from campaign.tokens import sign_token, verify_token

SECRET = b"a-test-secret-of-some-length"
BASE_URL = "https://track.shop.test/campaign"


def content(subject: str = "Hi", text: str = "text", html: str = "<p>html</p>", **kwargs) -> DeliveryContent:
    values = {"delivery_id": 7, "label": "Spring sale", "sender": "Shop News <news@shop.test>"}
    values.update(kwargs)
    return DeliveryContent(subject=subject, text_template=text, html_template=html, **values)


def recipient(**profile) -> dict:
    values = {"profile_id": 42, "email": "ann@example.test", "first_name": "Ann", "last_name": "Lee"}
    values.update(profile)
    return values


def render_content(item: DeliveryContent, **profile) -> RenderedMessage:
    return render(compile_templates(item), recipient_context(recipient(**profile), item), item.delivery_id)


# ---------------------------------------------------------------- strict, sandboxed templates


def test_profile_and_delivery_fields_render() -> None:
    item = content(
        subject="{{ profile.first_name }}, news from {{ delivery.label }}",
        text="{{ profile.first_name }} {{ profile.last_name }} <{{ profile.email }}> #{{ profile.id }}",
        html="<p>{{ delivery.id }}</p>",
    )

    rendered = render_content(item)

    assert rendered == RenderedMessage(
        subject="Ann, news from Spring sale", text="Ann Lee <ann@example.test> #42", html="<p>7</p>"
    )


def test_missing_profile_data_renders_empty_so_a_fallback_applies() -> None:
    item = content(subject="Hello {{ profile.first_name or 'there' }}", text="[{{ profile.locale }}]")

    rendered = render_content(item, first_name=None)

    assert rendered.subject == "Hello there"
    assert rendered.text == "[]"


@pytest.mark.parametrize(
    ("part", "template", "name"),
    [
        ("subject", "Hello {{ customer }}", "'customer' is undefined"),
        ("text", "Hello {{ profile.nickname }}", "nickname"),
        ("html", "<p>{{ delivery.budget }}</p>", "budget"),
        ("text", "{% if coupon %}x{% endif %}", "'coupon' is undefined"),
    ],
)
def test_undefined_variable_is_a_template_problem_naming_it(part: str, template: str, name: str) -> None:
    item = content(**{part: template})

    with pytest.raises(TemplateProblem) as excinfo:
        render_content(item)

    message = str(excinfo.value)
    assert f"The {part} template of delivery 7 uses an undefined variable" in message
    assert name in message
    assert "Available: profile.email" in message


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ profile.__class__ }}",
        "{{ profile.email.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ profile.items.__self__ }}",
    ],
)
def test_sandbox_refuses_unsafe_attribute_access(template: str) -> None:
    item = content(text=template)

    with pytest.raises(TemplateProblem) as excinfo:
        render_content(item)

    message = str(excinfo.value)
    assert message.startswith("The text template of delivery 7 ")
    assert "<class" not in message
    assert "unsafe" in message or "undefined" in message


@pytest.mark.parametrize("part", ["subject", "text", "html"])
def test_syntax_error_names_the_template_and_line(part: str) -> None:
    item = content(**{part: "first line\n{% if profile.first_name %}no end"})

    with pytest.raises(TemplateProblem) as excinfo:
        compile_templates(item)

    message = str(excinfo.value)
    assert message.startswith(f"The {part} template of delivery 7 has a syntax error at line ")
    assert "endif" in message


@pytest.mark.parametrize("template", ["{{ profile.first_name + 1 }}", "{{ profile.id / 0 }}"])
def test_runtime_error_in_template_is_a_template_problem(template: str) -> None:
    with pytest.raises(TemplateProblem, match="The text template of delivery 7 does not render"):
        render_content(content(text=template))


# ---------------------------------------------------------------- escaping and headers


def test_profile_data_is_escaped_in_html_but_not_in_text() -> None:
    item = content(
        subject="For {{ profile.first_name }}",
        text="Hello {{ profile.first_name }}",
        html="<p>Hello {{ profile.first_name }}</p>",
    )
    name = "<script>alert('x')</script> & \"Co\""

    rendered = render_content(item, first_name=name)

    assert rendered.html == "<p>Hello &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &#34;Co&#34;</p>"
    assert "<script>" not in rendered.html
    assert rendered.text == f"Hello {name}"
    assert rendered.subject == f"For {name}"


def test_html_written_by_the_template_author_is_kept() -> None:
    rendered = render_content(content(html='<a href="https://shop.test/?a=1&b=2">{{ profile.first_name }}</a>'))

    assert rendered.html == '<a href="https://shop.test/?a=1&b=2">Ann</a>'


def test_subject_newlines_are_collapsed_so_no_header_can_be_injected() -> None:
    item = content(subject="Hello\n{{ profile.first_name }}\n")
    rendered = render_content(item, first_name="Eve\r\nBcc: victim@evil.test")

    assert rendered.subject == "Hello Eve Bcc: victim@evil.test"

    message = build_email(item, rendered, "eve@example.test", 42, SECRET, BASE_URL)
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "Hello Eve Bcc: victim@evil.test"


# ---------------------------------------------------------------- the MIME message


def built(profile_id: int = 42, rendered: RenderedMessage | None = None):
    rendered = rendered or RenderedMessage(subject="Hello Ann", text="Hello Ann\n", html="<p>Hello Ann</p>\n")
    message = build_email(content(), rendered, "ann@example.test", profile_id, SECRET, BASE_URL)
    return message_from_bytes(message.as_bytes(), policy=policy.default)


def test_build_email_is_multipart_alternative_with_text_then_html() -> None:
    message = built()

    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content() == "Hello Ann\n"
    assert parts[1].get_content() == "<p>Hello Ann</p>\n"
    assert message["From"] == "Shop News <news@shop.test>"
    assert message["To"] == "ann@example.test"
    assert message["Subject"] == "Hello Ann"
    assert message["X-Campaign-Delivery"] == "7"
    assert message["Date"]


def test_message_id_is_deterministic_per_delivery_and_profile() -> None:
    first = built()
    again = built(rendered=RenderedMessage(subject="Other", text="other\n", html="<p>other</p>\n"))
    other_profile = built(profile_id=43)

    assert first["Message-ID"] == f"<campaign.{sign_token(SECRET, 'message_id', 7, 42)}@shop.test>"
    assert again["Message-ID"] == first["Message-ID"]
    assert other_profile["Message-ID"] == f"<campaign.{sign_token(SECRET, 'message_id', 7, 43)}@shop.test>"


def test_list_unsubscribe_has_a_signed_url_and_a_mailto() -> None:
    rendered = RenderedMessage(subject="Hello Ann", text="Hello Ann\n", html="<p>Hello Ann</p>\n")
    message = build_email(content(), rendered, "ann@example.test", 42, SECRET, BASE_URL)
    token = sign_token(SECRET, "unsubscribe", 7, 42)
    expected = f"<{BASE_URL}/u/{token}>, <mailto:unsubscribe@shop.test?subject={quote('unsubscribe ' + token)}>"

    assert message["List-Unsubscribe"] == expected
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # On the wire the long header is folded; unfolded, it says the same.
    on_the_wire = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert " ".join(on_the_wire["List-Unsubscribe"].split()) == expected
    assert on_the_wire["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url_token = expected.split("/u/", 1)[1].split(">", 1)[0]
    assert verify_token(SECRET, "unsubscribe", url_token) == (7, 42)


@pytest.mark.parametrize(
    ("sender", "domain"),
    [("Shop <news@shop.test>", "shop.test"), ("news@mail.shop.test", "mail.shop.test"), ("", "localhost")],
)
def test_sender_domain(sender: str, domain: str) -> None:
    assert sender_domain(sender) == domain
