"""`cofre.origins.ipv6_text` is WHATWG URL's IPv6 serializer, the spelling browsers send
in ``Origin``; the capture listener's default origin uses it too."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cofre.origins import ipv6_text
from cofre.settings import CaptureSettings


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_the_serializer_is_rfc_5952_outside_ipv4_mapped_addresses(value: int) -> None:
    """WHATWG's serializer and RFC 5952 (Python's `compressed`) agree but for the dotted
    tail of an IPv4-mapped address, which only newer Pythons write."""
    address = ipaddress.IPv6Address(value)
    if address.ipv4_mapped is None:
        assert ipv6_text(address) == address.compressed
    assert ipaddress.IPv6Address(ipv6_text(address)) == address


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("::ffff:10.0.0.1", "https://[::ffff:a00:1]:8444"),
        ("2001:DB8:0:0:1:0:0:1", "https://[2001:db8::1:0:0:1]:8444"),
        ("::1", "https://localhost:8444"),
    ],
)
def test_the_capture_listeners_default_origin_is_spelt_as_browsers_send_it(
    host: str, origin: str
) -> None:
    assert CaptureSettings(host=host, port=8444).origin() == origin
