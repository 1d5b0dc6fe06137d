"""The PAN leak scan: look for card numbers in whatever the suite produced.

Two rules, as the issues ask: every known test PAN, byte for byte (also inside longer
digit runs), and every standalone 13-19 digit run that passes the Luhn check. Token
values of ``luhn = "pass"`` formats are Luhn-valid by design; the caller passes them in
`allowed`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from vault.pan import luhn_valid

_RUN = re.compile(rb"(?<![0-9])[0-9]{13,}(?![0-9])")


def _mask(digits: str) -> str:
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


def _unexplained(run: str, allowed: set[str], lengths: set[int]) -> list[str]:
    """The parts of a digit run left after removing allowed values (tokens). Binary
    formats store columns side by side, so a token can sit against other digits (the
    tail of a UUID, a number): "5" + token must not count as a 17-digit card."""
    covered = [False] * len(run)
    for start in range(len(run)):
        for length in lengths:
            if start + length <= len(run) and run[start : start + length] in allowed:
                covered[start : start + length] = [True] * length
    parts, current = [], ""
    for char, used in zip(run, covered, strict=True):
        if used:
            if current:
                parts.append(current)
            current = ""
        else:
            current += char
    if current:
        parts.append(current)
    return parts


def find_leaks(data: bytes, pans: Iterable[str], allowed: Iterable[str] = ()) -> list[str]:
    """Return a description (masked) of every PAN-like finding in `data`."""
    allowed_set = {a for a in allowed if a.isdigit()}
    lengths = {len(a) for a in allowed_set}
    hits = [f"test PAN {_mask(pan)}" for pan in set(pans) if pan.encode() in data]
    for match in _RUN.finditer(data):
        hits.extend(
            f"Luhn-valid run {_mask(part)} at byte {match.start()}"
            for part in _unexplained(match.group().decode(), allowed_set, lengths)
            if 13 <= len(part) <= 19 and luhn_valid(part)
        )
    return hits


_HEX_BLOB = re.compile(rb"\\\\?x([0-9a-f]{2,})")


def find_leaks_in_dump(dump: bytes, pans: Iterable[str], allowed: Iterable[str] = ()) -> list[str]:
    """`find_leaks` for a pg_dump: bytea columns appear as ``\\x<hex>``, whose digit runs
    are noise; they are decoded and scanned as bytes (a PAN stored in clear in a bytea
    would show there), and the rest of the dump is scanned as text."""
    pans = list(pans)
    allowed = list(allowed)
    hits: list[str] = []
    for blob in _HEX_BLOB.finditer(dump):
        hexdigits = blob.group(1)
        decoded = bytes.fromhex(hexdigits[: len(hexdigits) // 2 * 2].decode())
        hits += [f"in a bytea value: {h}" for h in find_leaks(decoded, pans, allowed)]
    return hits + find_leaks(_HEX_BLOB.sub(b" ", dump), pans, allowed)


def scan_files(
    paths: Iterable[Path], pans: Iterable[str], allowed: Iterable[str] = ()
) -> list[str]:
    """`find_leaks` over every existing file in `paths` (directories are walked)."""
    pans = list(pans)
    allowed = list(allowed)
    hits: list[str] = []
    for path in paths:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            if file.exists():
                hits += [f"{file}: {h}" for h in find_leaks(file.read_bytes(), pans, allowed)]
    return hits
