"""The PAN leak scan: look for card numbers in whatever the suite produced.

Two rules, as the issues ask: every known test PAN, byte for byte (also inside longer
digit runs), and every standalone 13-19 digit run that passes the Luhn check. Token
values of ``luhn = "pass"`` formats are Luhn-valid by design; the caller passes them in
`allowed`. Digits inside a long hex word (a SHA-256, a trace id, a certificate serial) or
a UUID are hex noise, not decimal data, and one in ten of their runs passes Luhn by
chance: the second rule sets them aside and judges what is left of the run, the first
rule does not.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import unicodedata
import zlib
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from vault.pan import luhn_valid

_RUN = re.compile(rb"(?<![0-9])[0-9]{13,}(?![0-9])")
_HEX_WORD = re.compile(rb"(?<![0-9A-Za-z])(?:0[xX])?[0-9A-Fa-f]{32,}(?![0-9A-Za-z])")
# No look-ahead: SQLite stores a UUID against the bytes of the next column (a one-byte
# integer 0x37 reads "7"), and a clean-clone run (session 16) read a UUID's all-digit
# last group and that byte as the 13-digit Luhn-valid run 9638269944177. The
# look-behind keeps a card written just before "-xxxx-..." whole.
_UUID = re.compile(rb"(?<![0-9A-Za-z])[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")
_HEX_LETTER = re.compile(rb"[A-Fa-f]")


def _hex_words(data: bytes) -> tuple[list[int], list[int]]:
    """Start and end offsets of the hex words (32+ hex characters) and UUIDs with a
    letter among them, in order; they do not overlap."""
    spans = [
        word.span()
        for pattern in (_HEX_WORD, _UUID)
        for word in pattern.finditer(data)
        if _HEX_LETTER.search(word.group())
    ]
    starts: list[int] = []
    ends: list[int] = []
    for start, end in sorted(spans):
        if ends and start < ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _outside(start: int, end: int, starts: list[int], ends: list[int]) -> list[tuple[int, int]]:
    """The spans of [start, end) that no hex word covers."""
    spans, at = [], start
    word = max(bisect_right(starts, start) - 1, 0)
    while word < len(starts) and starts[word] < end:
        if ends[word] > at:
            if starts[word] > at:
                spans.append((at, starts[word]))
            at = ends[word]
        word += 1
    if at < end:
        spans.append((at, end))
    return spans


def _mask(digits: str) -> str:
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


def _unexplained(run: str, allowed: frozenset[str], lengths: frozenset[int]) -> list[str]:
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


# A 13-digit run between these is a millisecond Unix time from 2020-09 to 2033-05 (the
# audit log's signed-head times are stored so). No card is issued with 13 digits and a
# leading 1 (13-digit PANs are Visa's, which begin with 4), so this is not a blind spot.
_EPOCH_MS = range(1_600_000_000_000, 2_000_000_000_000)
_DIGITS = re.compile(rb"[0-9]{12,}")
# Digit groups joined by up to four separator bytes, mixed (rule 1 only: a known PAN).
# Possessive: the same matches (a separator is no digit, so giving a digit or a separator
# back never lets the next one match), without retrying a digit run not followed by a
# chain at each of its digits (session 42: 40% of the session's leak scan).
_CHAIN = re.compile(rb"[0-9]++(?:[^0-9A-Za-z]{1,4}+[0-9]++)++")
_NOT_DIGIT = re.compile(rb"[^0-9]")
_GROUP = re.compile(rb"[0-9]+")
# The same in any decimal digits (``\\d`` is Unicode's Nd in a str pattern).
_UNICODE_CHAIN = re.compile(r"\d+(?:[^\dA-Za-z]{1,4}\d+)*")
_MIN_PAN = 12
# A gzip stream (an evidence bundle on disk, or a recorded response body): its deflate
# bytes are noise to the digit rules (a clean-clone run, session 40, read a bundle's
# "2\xcd\xf6" repeated as 4222222222222 by the chain rule), its content is where a card
# would be.
_GZIP = b"\x1f\x8b"
_GUNZIP_BOUND = 512 << 20


def gunzipped(data: bytes) -> bytes | None:
    """The content of `data` when it is a gzip stream (every member, at most
    `_GUNZIP_BOUND` bytes in all), else None."""
    if not data.startswith(_GZIP):
        return None
    out: list[bytes] = []
    size, rest = 0, data
    try:
        while rest.startswith(_GZIP) and size < _GUNZIP_BOUND:
            member = zlib.decompressobj(wbits=31)
            out.append(member.decompress(rest, _GUNZIP_BOUND - size))
            size += len(out[-1])
            rest = member.unused_data
    except zlib.error:
        return None
    return b"".join(out)


def _members(content: bytes) -> list[bytes]:
    """The names and files of `content` when it is a tar archive (its headers' octal
    fields, NUL-separated, read as one digit chain to the known-PAN rule), else
    `content` itself."""
    try:
        with tarfile.open(fileobj=BytesIO(content), mode="r:") as archive:
            parts = []
            for member in archive:
                parts.append(member.name.encode())
                extracted = archive.extractfile(member) if member.isfile() else None
                if extracted is not None:
                    parts.append(extracted.read())
            return parts
    except tarfile.TarError:
        return [content]


def _without_hex_words(data: bytes) -> bytes:
    """`data` with its hex words and UUIDs overwritten by letters (which no digit rule
    joins across)."""
    out = bytearray(data)
    for start, end in zip(*_hex_words(data), strict=True):
        out[start:end] = b"x" * (end - start)
    return bytes(out)


@dataclass(frozen=True)
class LeakScanner:
    """The two rules over known `pans`, with `allowed` values (tokens) set aside."""

    pans: frozenset[str]
    pan_lengths: frozenset[int]
    allowed: frozenset[str]
    lengths: frozenset[int]

    @classmethod
    def of(cls, pans: Iterable[str], allowed: Iterable[str] = ()) -> LeakScanner:
        # A number of one repeated digit is no test card to look for byte for byte:
        # tests use "0000000000000000" as a token that does not exist and as a relay's
        # junk card, and sixteen "0" bytes turn up in raw SQLite pages (a clean-clone
        # run, session 16, found them in an audit test's database, joined by the chain
        # rule or not). Standing alone in text it is still Luhn-valid: rule 2 sees it.
        pan_set = frozenset(p for p in pans if len(set(p)) > 1)
        allowed_set = frozenset(a for a in allowed if a.isdigit())
        return cls(
            pan_set,
            frozenset(len(p) for p in pan_set),
            allowed_set,
            frozenset(len(a) for a in allowed_set),
        )

    def _windows(self, run: str) -> set[str]:
        return {
            run[i : i + length]
            for length in self.pan_lengths
            for i in range(len(run) - length + 1)
            if run[i : i + length] in self.pans
        }

    def _outside_tokens(self, chain: bytes) -> set[str]:
        """The known PANs of a digit chain, read apart on each side of every group that
        is a whole token: two values, as a JSON list of tokens (``","`` joins them
        under the chain rule) or a token list one per line; read as one, a token's tail
        and the next one's head made the generated test PAN 4123450000057142 (session
        43's CI run). A card is never one group that is a token, so none is missed.
        Only when a window already hit: the common path costs nothing more."""
        found: set[str] = set()
        part: list[str] = []
        for group in _GROUP.findall(chain):
            if group.decode() in self.allowed:
                found |= self._windows("".join(part))
                part = []
            else:
                part.append(group.decode())
        return found | self._windows("".join(part))

    def known_pans(self, data: bytes) -> list[str]:
        """Every known test PAN in `data`, also inside a longer digit run, split into
        groups by any separators (``41111111 11111111``, ``4111 1111-1111 1111``,
        ``["41111111","11111111"]``), or in other decimal digits (Arabic-Indic,
        fullwidth): the shapes `cofre.redaction` masks. Looked up by the windows of each
        digit run, so that many PANs cost no more than a few."""
        found: set[str] = set()
        for match in _DIGITS.finditer(data):
            found |= self._windows(match.group().decode())
        for chain in _CHAIN.findall(data):
            if len(chain) < _MIN_PAN:  # fewer digits still
                continue
            digits = _NOT_DIGIT.sub(b"", chain)
            if len(digits) >= _MIN_PAN and (hits := self._windows(digits.decode())):
                found |= self._outside_tokens(chain) if self.allowed else hits
        if not data.isascii():
            for run in _UNICODE_CHAIN.findall(data.decode("utf-8", errors="ignore")):
                if not run.isascii():
                    digits = "".join(str(unicodedata.decimal(c)) for c in run if c.isdecimal())
                    found |= self._windows(digits)
        return [f"test PAN {_mask(pan)}" for pan in sorted(found)]

    def scan(self, data: bytes, *, luhn_rule: bool = True) -> list[str]:
        """A description (masked) of every PAN-like finding in `data`."""
        hits = self.known_pans(data)
        if not luhn_rule:
            return hits
        # The hex words only once a run of 13 digits is there: most chunks hold none,
        # and finding the words was ~17% of the session scan (session 43's profile).
        words: tuple[list[int], list[int]] | None = None
        for match in _RUN.finditer(data):
            if words is None:
                words = _hex_words(data)
            for start, end in _outside(*match.span(), *words):
                hits.extend(
                    f"Luhn-valid run {_mask(part)} at byte {start}"
                    for part in _unexplained(data[start:end].decode(), self.allowed, self.lengths)
                    if 13 <= len(part) <= 19
                    and luhn_valid(part)
                    and not (len(part) == 13 and int(part) in _EPOCH_MS)
                )
        return hits

    def scan_dump(self, dump: bytes) -> list[str]:
        """`scan` for a pg_dump: bytea columns appear as ``\\x<hex>``, whose digit runs
        are noise; they are decoded and scanned as bytes (a PAN stored in clear in a
        bytea would show there), and the rest of the dump is scanned as text."""
        # All of them in one scan, `VALUES_APART` (as an SQLite database's blobs): one
        # scan per value cost the session ~50 s of per-call overhead for the 700,000
        # values of a 100,000-token database (tests/vault/test_rotation.py).
        decoded = [
            bytes.fromhex(hexdigits[: len(hexdigits) // 2 * 2].decode())
            for hexdigits in (blob.group(1) for blob in _HEX_BLOB.finditer(dump))
        ]
        hits = [f"in a bytea value: {h}" for h in self.scan(VALUES_APART.join(decoded))]
        # COPY's tabs and line breaks separate values (a value's own are escaped, "\t"
        # and "\n"): widened past what `_CHAIN` joins, so two columns never read as one
        # number.
        text = _HEX_BLOB.sub(b" ", dump).replace(b"\t", b"\t" * 5).replace(b"\n", b"\n" * 5)
        return hits + self.scan(text)

    def scan_file(self, file: Path) -> list[str]:
        """`scan` over one file; a pg_dump (``*.sql``) with `scan_dump`."""
        data = file.read_bytes()
        if file.suffix == ".sql":
            return self.scan_dump(data)
        content = gunzipped(data)
        if content is None:
            return self.scan(data)
        # The known PANs in what the stream holds, outside hex words: a bundle's digests
        # and the verifier tests' synthetic ones ("ab4111111111111111c...": a test PAN's
        # digits inside a SHA-256 on purpose) are no card in clear. A tar archive by its
        # members' names and files; not the Luhn rule (a member's own numbers are data of
        # every kind).
        return [
            f"in its gzip content: {h}"
            for part in _members(content)
            for h in self.known_pans(_without_hex_words(part))
        ]


_HEX_BLOB = re.compile(rb"\\\\?x([0-9a-f]{2,})")
# Between values scanned as one text, so that no two join into one number: a line
# break ends a digit run, and five of them end a chain too (`_CHAIN` joins digit groups
# across up to four separator bytes), as the start and end of a text do for every
# pattern here (none looks past a separator that is not a letter or digit).
VALUES_APART = b"\n" * 5


def find_leaks(data: bytes, pans: Iterable[str], allowed: Iterable[str] = ()) -> list[str]:
    """Every PAN-like finding in `data` (`LeakScanner.scan`)."""
    return LeakScanner.of(pans, allowed).scan(data)


def find_leaks_in_dump(dump: bytes, pans: Iterable[str], allowed: Iterable[str] = ()) -> list[str]:
    """Every PAN-like finding in a pg_dump (`LeakScanner.scan_dump`)."""
    return LeakScanner.of(pans, allowed).scan_dump(dump)


def files_under(path: Path) -> list[Path]:
    """`path` itself, or every regular file below it; symbolic links are not followed
    (pytest's ``*current`` links would scan a directory twice)."""
    if not path.is_dir():
        return [path] if path.is_file() else []
    return [
        Path(top) / name
        for top, _, names in os.walk(path)
        for name in names
        if (Path(top) / name).is_file() and not (Path(top) / name).is_symlink()
    ]


def scan_files(
    paths: Iterable[Path], pans: Iterable[str], allowed: Iterable[str] = ()
) -> list[str]:
    """`LeakScanner.scan_file` over every file in `paths` (directories are walked)."""
    scanner = LeakScanner.of(pans, allowed)
    return [
        f"{file}: {hit}"
        for path in paths
        for file in files_under(path)
        for hit in scanner.scan_file(file)
    ]


_HEX_ID = re.compile(r"0x[0-9a-f]+")


def json_strings(value: object) -> list[str]:
    """The strings in a JSON value, keys included. Telemetry is scanned by its strings
    (names, attribute values): its numbers (nanosecond timestamps, float sums) and its
    random hex span and trace ids are digit noise, not data. JSON held in a string is
    opened too."""
    if isinstance(value, str) and _HEX_ID.fullmatch(value):
        return []
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except ValueError:
            return [value]
        return [value, *json_strings(inner)] if isinstance(inner, dict | list) else [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *json_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in json_strings(v)]
    return []
