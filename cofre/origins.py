"""How a browser spells a host in the ``Origin`` header it sends.

IN PCI SCOPE (the hosted fields compare origins as strings). Here, below the settings
and the vault, so that the capture listener's default origin (`cofre.settings`) and
the origins the vault checks (`vault.capture.normalize_origin`) are spelt by one rule.
"""

from __future__ import annotations

import ipaddress

__all__ = ["ipv6_text"]


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
