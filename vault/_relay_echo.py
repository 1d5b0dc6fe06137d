"""The shapes an upstream may echo a relayed card in: what `vault.relay`'s echo check
(`withhold_echoed_pans`) reads a text of an answer as, once decoded. Moved out of
`vault.relay` (review 37) when it learnt hex, nested layers and a budget.

IN PCI SCOPE: the texts read here are an acquirer's answer to a body holding a card;
they are decoded in memory to be compared with the cards sent, never logged.

A text is read as it is, percent-decoded, HTML-entity-decoded and JSON-unescaped; every
word of it that is base64 (either alphabet, padding optional, MIME line breaks and JSON
``\\r\\n`` escapes between its lines allowed, read from each of its first four
characters: it may begin after other characters of its alphabet, a URL path's) or hex
(bytes written as two digits, optionally one space, colon or hyphen between them) is
decoded to bytes, read as Latin-1 and, when it reads as a gzip, zlib or raw deflate
stream, inflated; and each of those is read the same way again, `LAYERS` deep (a
decoding and an inflation are a layer each). Review 37: hex (a trace's dump of the
request) and a second layer (base64 of a base64 payload) were not read, and a compressed
echo was read to 32 times its size only, so the caller's own padding before the card
(5,000 ``A``, a few bytes compressed) hid the card after it.

What a text costs is bounded: at most `RATIO` times its own length of decoded and
inflated characters in all (and `MAX_INFLATED` per stream, `MAX_MEMBERS` gzip members).
A text whose reading would pass a bound is not read further, and `read_as` answers True: the
caller withholds it whole (fail closed), since what was left unread could be the card.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Final
from urllib.parse import unquote, unquote_plus

# How many layers of encoding inside one another are read (base64 of base64 of gzip).
LAYERS: Final = 3
# The most a text's reading produces, as a multiple of its length: a 1 MiB answer of
# small compression bombs costs tens of MiB of reading, not gigabytes.
RATIO: Final = 32
# The most one compressed stream inflates to: a relay body is at most 64 KiB, and an
# echo of it adds an acquirer's wrapping.
MAX_INFLATED: Final = 64 * 1024
# The most gzip members one stream holds (each is a new decoder and a copy of the rest).
MAX_MEMBERS: Final = 64

# A word that may be base64 (standard or URL-safe alphabet): long enough to hold the 13
# digits of the shortest card (20 characters).
_BASE64_MIN: Final = 20
_BASE64_WORD: Final = re.compile(rf"[A-Za-z0-9+/_-]{{{_BASE64_MIN},}}={{0,2}}")
# Bytes in hex, at least the 13 of the shortest card, looked for once white space,
# colons and hyphens are taken out (a dump's separators between its bytes).
_HEX_WORD: Final = re.compile(r"[0-9A-Fa-f]{26,}")
_HEX_SEPARATORS: Final = str.maketrans("", "", ":-")
# A gzip stream's first bytes, and a zlib stream's at each of its usual levels.
_STREAM_MAGICS: Final = (b"\x1f\x8b\x08", b"\x78\x9c", b"\x78\xda", b"\x78\x01")
_JSON_ESCAPE: Final = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|([\"\\/bfnrt]))")
_JSON_SIMPLE: Final = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class _Unread(Exception):
    """A text whose reading would pass its bound: withhold it whole."""


class _Budget:
    """What is left of a text's reading (`RATIO` times its length)."""

    def __init__(self, text: str) -> None:
        self.left = RATIO * max(len(text), 1)

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise _Unread


def read_as(text: str, found: Callable[[str], bool]) -> bool:
    """Whether `found` holds for `text` or for what it reads as once decoded the ways an
    echo is written (module docstring), or reading it would pass its bound (then what
    is left unread may be what `found` looks for: fail closed)."""
    try:
        return any(found(shape) for shape in _layers(text, LAYERS, _Budget(text)))
    except _Unread:
        return True


def _unescaped(text: str) -> tuple[list[str], list[str]]:
    """(what `text` reads as once percent-decoded, HTML-entity-decoded, JSON-unescaped;
    those of them in which words are looked for: a base64 word keeps its "+")."""
    shown: list[str] = []
    forms: list[str] = []
    if "%" in text or "+" in text:
        shown.append(plus := unquote_plus(text))
        if "%" in text:
            forms.append(unquote(text) if "+" in text else plus)
    if "&" in text:
        forms.append(html.unescape(text))
    if "\\" in text:
        forms.append(_json_unescaped(text))
    return shown + forms, forms


def _layers(text: str, depth: int, budget: _Budget) -> Iterator[str]:
    yield text
    forms = [text]
    # The text escapes, in the answer's own texts and in decoded bytes that are text (a
    # binary blob read as Latin-1 is none, and unquoting its stray "%"s took seconds).
    if depth == LAYERS or text.isascii():
        shown, searched = _unescaped(text)
        yield from shown
        forms += searched
    if depth == 0:
        return
    seen: set[str] = set()
    for form in forms:
        compact = "".join(form.split())  # base64 wrapped over lines (MIME's 76 columns)
        words = _BASE64_WORD.findall(form)
        if compact != form:
            words += _BASE64_WORD.findall(compact)
        for word in words:
            # From each of its first four characters: base64 that begins after other
            # characters of its alphabet (a URL path, a label glued to it) is read out of
            # step from the first (review 37b).
            for start in range(4):
                if len(word) - start >= _BASE64_MIN and (key := f"{start}/{word}") not in seen:
                    seen.add(key)
                    yield from _read_bytes(_base64(word[start:]), depth - 1, budget)
        for word in _HEX_WORD.findall(compact.translate(_HEX_SEPARATORS)):
            for start in (0, 1):  # a run of hex whose first byte began a digit earlier
                if (key := f"{start}:{word}") not in seen:
                    seen.add(key)
                    yield from _read_bytes(_hex(word[start:]), depth - 1, budget)


def _read_bytes(data: bytes | None, depth: int, budget: _Budget) -> Iterator[str]:
    """`data` (a word decoded, or a stream inflated) read as Latin-1 text `depth` more
    layers deep, and inflated when it is a stream (a layer too: gzip of gzip is read)."""
    if not data:
        return
    budget.spend(len(data))
    yield from _layers(data.decode("latin-1"), depth, budget)
    if depth > 0:
        yield from _read_bytes(_inflated(data, budget), depth - 1, budget)
        # A stream that begins inside the bytes: base64 read out of step from a URL
        # path's first character decodes the path to bytes before it (review 37b).
        for start in _stream_starts(data):
            yield from _read_bytes(_inflated(data[start:], budget), depth - 1, budget)


def _stream_starts(data: bytes) -> set[int]:
    """Where a gzip stream or a zlib one (its usual headers) first begins in `data`,
    after its first byte."""
    found = (data.find(magic, 1) for magic in _STREAM_MAGICS)
    return {start for start in found if start > 0}


def _json_unescaped(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code, simple = match.groups()
        if code is not None:
            return chr(int(code, 16))
        return _JSON_SIMPLE.get(simple, simple)

    return _JSON_ESCAPE.sub(one, text)


def _base64(word: str) -> bytes | None:
    """`word` decoded as base64 (either alphabet, padding optional)."""
    standard = word.rstrip("=").replace("-", "+").replace("_", "/")
    if len(standard) % 4 == 1:
        standard = standard[:-1]  # a stray character: its bits make no byte
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _hex(digits: str) -> bytes | None:
    try:
        return bytes.fromhex(digits[: len(digits) & ~1])
    except ValueError:
        return None


def _inflated(data: bytes, budget: _Budget) -> bytes:
    """`data` decompressed: gzip (every member), zlib, else raw deflate; empty when it
    reads as none. What was read before a stream's error is kept (data that is no stream
    fails within a few bytes). Review 36: the request gzipped in base64 (a debug field,
    a compressed payload) reached the caller whole. Review 36b: so did raw deflate,
    which has no header (.NET's DeflateStream, PHP's gzdeflate), and a card in a gzip
    stream's second member. Raises `_Unread` past `MAX_INFLATED`, `RATIO` times
    `data`'s size, what is left of the text's budget (spent by the caller) or
    `MAX_MEMBERS` (review 37: the rest was left
    unread, and the caller's padding put the card there)."""
    gzipped = data[:2] == b"\x1f\x8b"
    if gzipped:
        bits = zlib.MAX_WBITS | 16
    elif len(data) > 1 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
        bits = zlib.MAX_WBITS  # a zlib header: deflate, its check bits right
    else:
        bits = -zlib.MAX_WBITS
    limit = min(MAX_INFLATED, RATIO * len(data), max(budget.left, 0))
    out, rest, members = b"", data, 0
    try:
        while rest:
            members += 1
            if members > MAX_MEMBERS:
                raise _Unread
            decoder = zlib.decompressobj(bits)
            out += decoder.decompress(rest, limit + 1 - len(out))
            if len(out) > limit:
                raise _Unread
            rest = decoder.unused_data if gzipped and decoder.eof else b""
            if rest[:2] != b"\x1f\x8b":
                break
    except zlib.error:
        pass  # what was read before the error is still read
    return out
