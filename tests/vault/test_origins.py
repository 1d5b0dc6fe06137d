"""`vault.capture.normalize_origin` spells an IP literal as a browser's ``Origin`` does
(the WHATWG URL host serializer) and refuses only what a browser reads as IPv4: the
hosted fields' checks compare origins as strings."""

from __future__ import annotations

import pytest

from vault.capture import normalize_origin
from vault.errors import InvalidOrigin

# What Chrome, Firefox and Node (`new URL(o).origin`) give (review 24): IPv6 always in
# hex pieces, an IPv4-mapped address included (Python 3.13's `compressed` writes it
# dotted; requires-python allows 3.13).
BROWSER_SPELLING = [
    ("https://[::ffff:127.0.0.1]", "https://[::ffff:7f00:1]"),
    ("https://[::ffff:7f00:1]:8443", "https://[::ffff:7f00:1]:8443"),
    ("https://[::FFFF:10.0.0.1]", "https://[::ffff:a00:1]"),
    ("https://[::ffff:0:0]", "https://[::ffff:0:0]"),
    ("https://[FD00:0:0:0:0:0:0:5]:8444", "https://[fd00::5]:8444"),
    ("https://[2001:DB8:0:0:1:0:0:1]", "https://[2001:db8::1:0:0:1]"),
    ("https://[1:0:0:2:0:0:0:3]", "https://[1:0:0:2::3]"),
    ("https://[1:0:2:3:4:5:6:7]", "https://[1:0:2:3:4:5:6:7]"),
]


@pytest.mark.parametrize(("configured", "browser_sends"), BROWSER_SPELLING)
def test_an_ipv6_origin_is_spelt_as_browsers_send_it(configured: str, browser_sends: str) -> None:
    assert normalize_origin(configured) == browser_sends


@pytest.mark.parametrize(
    "origin",
    [
        # "Ends in a number" is the last label all digits, or 0x with hex digits only;
        # these are names, and browsers send them as they are.
        "https://shop.0xbox",
        "https://0xcafe-intranet",
        "https://pay.0xg",
        "https://a.123abc",
    ],
)
def test_a_name_whose_last_label_only_looks_numeric_is_a_dns_name(origin: str) -> None:
    assert normalize_origin(origin) == origin


@pytest.mark.parametrize(
    "origin",
    [
        "https://shop.0x",
        "https://shop.0x1f",
        "https://a.123",
        "https://010.0.0.1",
        "https://10.1",
        "https://0X7f.0.0.1",
        "https://[fe80::1%25eth0]",
    ],
)
def test_what_a_browser_reads_as_another_address_is_refused(origin: str) -> None:
    with pytest.raises(InvalidOrigin):
        normalize_origin(origin)


@pytest.mark.parametrize(
    "origin", ["https://[2001:db8::1]", "https://[::1]:8443", "http://[::1]:8000"]
)
def test_a_page_that_frames_the_fields_is_not_named_by_an_ipv6_address(origin: str) -> None:
    """The session's origin is written into CSP frame-ancestors, whose host-source has no
    IPv6 form (w3c/webappsec#49): a browser would drop it and no page could frame the
    fields, so the shop's backend is told at once."""
    with pytest.raises(InvalidOrigin, match="IPv6"):
        normalize_origin(origin, allow_http_localhost=True, frame_ancestor=True)
    assert normalize_origin("https://192.0.2.7:8443", frame_ancestor=True) == (
        "https://192.0.2.7:8443"
    )
    assert normalize_origin("https://[2001:db8::1]") == "https://[2001:db8::1]"


@pytest.mark.parametrize("origin", ["https://[v1.shop.example]", "https://[192.0.2.7]:8443"])
def test_only_an_ipv6_address_is_bracketed(origin: str) -> None:
    """Review 25: urlsplit takes RFC 3986's IPvFuture and strips the brackets, so the
    session was stored for https://v1.shop.example, a name the caller never wrote."""
    with pytest.raises(InvalidOrigin):
        normalize_origin(origin)
