"""How a browser spells a host in the ``Origin`` header it sends, and what a
per-address limit counts a client address as.

IN PCI SCOPE (the hosted fields compare origins as strings). Here, below the settings,
the policies and the vault, so that the capture listener's default origin
(`cofre.settings`), the `capture_origins` the policy loader checks and the origins the
vault checks (`vault.capture.normalize_origin`, which raises `InvalidOrigin` where
`normalize_origin` here raises `ValueError`) are spelt by one rule, and the listener's
and the vault's per-address limits key an address alike.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "LOOPBACK_ADDRESSES",
    "address_key",
    "every_interface",
    "ipv6_text",
    "listener_origin",
    "normalize_origin",
]

_LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
_HEX_DIGITS: Final = frozenset("0123456789abcdef")
_HOST_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


def address_key(host: str) -> str:
    """What a per-address limit counts a client address as: an IPv6 address by its /64
    (a host is given a whole /64, so a key per address would give one host 2^64 budgets;
    review 28), an IPv4 address (mapped into IPv6 or not) as it is, anything else as it
    is, cut to 64 characters."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def ipv6_text(address: ipaddress.IPv6Address) -> str:
    """WHATWG URL's IPv6 serializer, as browsers write it: eight hex pieces, the first
    longest run of two or more zero pieces as ``::``, never a dotted IPv4 tail (Python
    3.13's `IPv6Address.compressed` writes an IPv4-mapped address dotted)."""
    packed = address.packed
    pieces = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    start, length, i = -1, 1, 0
    while i < 8:
        j = i
        while j < 8 and pieces[j] == 0:
            j += 1
        if j - i > length:
            start, length = i, j - i
        i = max(j, i + 1)
    text = [f"{piece:x}" for piece in pieces]
    if start < 0:
        return ":".join(text)
    return ":".join(text[:start]) + "::" + ":".join(text[start + length :])


def normalize_origin(
    text: str, *, allow_http_localhost: bool = False, frame_ancestor: bool = False
) -> str:
    """Return `text` as an exact web origin, ``scheme://host[:port]`` (lower case, the
    default port dropped).

    Raises `ValueError` for anything else: a path, query, fragment or user info, a
    wildcard, ``null``, a scheme other than https (http only for localhost, and only
    when `allow_http_localhost`, a development setting), a host that is not a DNS name
    or an IP literal; with `frame_ancestor` (a page that frames the hosted fields), an
    IPv6 literal.
    """
    if not 1 <= len(text) <= 255 or text != text.strip():
        raise ValueError("an origin is 'https://host[:port]', at most 255 characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("the origin is not a URL with a valid port") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError("an origin has no user info, path, query or fragment")
    if not host or "*" in text:
        raise ValueError("an origin names one exact host (no wildcards)")
    if "[" in parts.netloc and ":" not in host:
        # urlsplit takes RFC 3986's "IPvFuture" ([v1.name]) and strips the brackets; no
        # browser parses it, and the caller did not write the name left behind.
        raise ValueError("only an IPv6 address is written in brackets")
    host = _canonical_host(host)
    if frame_ancestor and ":" in host:
        # The origin is written into CSP frame-ancestors, whose host-source grammar has
        # no IPv6 literal (w3c/webappsec#49): a browser drops the source and no page
        # could frame the fields. Refused here, where the shop's backend sees why.
        raise ValueError(
            "a page that frames the hosted fields is named by a DNS name or an IPv4 "
            "address: CSP frame-ancestors cannot name an IPv6 address"
        )
    display_host = f"[{host}]" if ":" in host else host
    if scheme == "http":
        if not (allow_http_localhost and display_host in _LOCAL_HOSTS):
            raise ValueError(
                "the origin must use https (http only for localhost with the development "
                "setting COFRE_CAPTURE__ALLOW_HTTP_LOCALHOST)"
            )
    elif scheme != "https":
        raise ValueError("the origin must use https")
    _check_host(host)
    default = 443 if scheme == "https" else 80
    suffix = "" if port is None or port == default else f":{port}"
    return f"{scheme}://{display_host}{suffix}"


def _canonical_host(host: str) -> str:
    """`host` as a browser serialises it in ``Origin``: an IP literal in its canonical
    text (IPv6 per RFC 5952). A zone id, or a name ending in a number (an IPv4 address
    to a browser, WHATWG URL, in a spelling Python does not parse), is refused."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        last = host.rsplit(".", 1)[-1]
        if last.isdigit() or (last.startswith("0x") and set(last[2:]) <= _HEX_DIGITS):
            raise ValueError("an IPv4 origin is written as four decimal numbers") from None
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise ValueError("an origin's IPv6 address has no zone id")
        return ipv6_text(address)
    return str(address)


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return
    labels = host.split(".")
    if not set(host) <= _HOST_CHARS or any(
        not 1 <= len(label) <= 63 or label.startswith("-") or label.endswith("-")
        for label in labels
    ):
        raise ValueError("the origin's host is not a DNS name (use its punycode form)")


def every_interface(host: str) -> bool:
    """Whether `host` binds every interface: empty, or any spelling of 0.0.0.0 or ::
    (``0``, ``0x0``, ``0:0:0:0:0:0:0:0``, ``0000::``; getaddrinfo accepts them all)."""
    if not host:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        pass
    try:
        return socket.inet_aton(host) == bytes(4)
    except OSError:
        return False


LOOPBACK_ADDRESSES: Final = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def listener_origin(host: str, port: int | None) -> str:
    """The https origin browsers see a listener on `host`:`port` at (``localhost`` for a
    loopback address; moved from `cofre.settings.CaptureSettings.origin`)."""
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # 127.1, 0x7f.0.0.1: the address getaddrinfo binds (as every_interface)
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            address = None
    if host == "localhost" or address in LOOPBACK_ADDRESSES:
        host = "localhost"
    elif address is not None:
        # As a browser serialises the origin it sends (WHATWG URL), an IPv6
        # literal bracketed (RFC 3986 3.2.2). A zone id is kept (`ipv6_text` drops
        # it): no browser sends one, and the vault's check refuses it at start
        # rather than serve an origin no one could reach.
        if isinstance(address, ipaddress.IPv6Address):
            zone = "" if address.scope_id is None else f"%{address.scope_id}"
            host = f"[{ipv6_text(address)}{zone}]"
        else:
            host = str(address)
    else:
        host = host.lower()  # a browser's Origin spells the host in lower case
    # ... and leaves out the scheme's default port (RFC 6454 6.1).
    return f"https://{host}" if port == 443 else f"https://{host}:{port}"
