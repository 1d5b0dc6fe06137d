"""How a browser spells a host in the ``Origin`` header it sends, and what a
per-address limit counts a client address as.

IN PCI SCOPE (the hosted fields compare origins as strings). Here, below the settings
and the vault, so that the capture listener's default origin (`cofre.settings`) and
the origins the vault checks (`vault.capture.normalize_origin`) are spelt by one rule,
and the listener's and the vault's per-address limits key an address alike.
"""

from __future__ import annotations

import ipaddress

__all__ = ["address_key", "ipv6_text"]


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
