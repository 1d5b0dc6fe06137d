"""The shapes an upstream may echo a relayed card in: what `vault.relay`'s echo check
(`withhold_echoed_pans`) reads a text of an answer as, once decoded. Moved out of
`vault.relay` (review 37) when it learnt hex, nested layers and a budget.

IN PCI SCOPE: the texts read here are an acquirer's answer to a body holding a card;
they are decoded in memory to be compared with the cards sent, never logged.

A text is read as it is, percent-decoded (also twice and three times), HTML-entity-
decoded, JSON-unescaped, quoted-printable- and UTF-7-decoded; every word of it that is
base64 (either alphabet, padding optional, MIME line breaks and JSON ``\\r\\n`` escapes
between its lines allowed, read from each of its first four characters: it may begin
after other characters of its alphabet, a URL path's) or hex (bytes written as two
digits, optionally one space, colon or hyphen between them) is decoded to bytes, read as
Latin-1 and, when it reads as a gzip, zlib or raw deflate stream, inflated; and each of
those is read the same way again, `LAYERS` deep (a decoding and an inflation are a layer
each). Review 37: hex (a trace's dump of the request) and a second layer (base64 of a
base64 payload) were not read, and a compressed echo was read to 32 times its size only,
so the caller's own padding before the card (5,000 ``A``, a few bytes compressed) hid
the card after it. Session 38: in the answer's own texts, base32, a short base64 or
base32 word (by its padding, or as the text's whole value), Ascii85, base85 and
uuencoded blocks are read too (`_words`).

What a text costs is bounded: at most `RATIO` times its own length and `HEADROOM` of
decoded and inflated characters in all, each decoding or inflation counted
`READING_COST` more (and `MAX_INFLATED` per stream, `MAX_MEMBERS` gzip members, a text
Ascii85 or base85 would read whole at most `MAX_BASE85`). A text whose reading would
pass a bound is not read further, and `read_as` answers True: the caller withholds it
whole (fail closed), since what was left unread could be the card. Review 39b: the texts
of one answer share one bound of what they decode, inflate and unescape (`AnswerBound`:
`RATIO` times their length and `HEADROOM`); with a bound per text only, an answer of
thousands of short base64 words of compressed escapes read 64 KiB each, five times what
one text of the answer's size may. Hex dumps in the layouts tools print (an offset, the
bytes, the bytes as text; ``0x35,`` and ``\\x35`` bytes) are read across their lines.
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

from vault._relay_dumps import dump_readings
from vault._relay_words import word_runs_undone, words_undone

# How many layers of encoding inside one another are read (base64 of base64 of gzip).
LAYERS: Final = 3
# The most a text's reading produces, as a multiple of its length: a 1 MiB answer of
# small compression bombs costs tens of MiB of reading, not gigabytes.
RATIO: Final = 32
# What every text may read beyond `RATIO` times its length, and what each word decoded
# or stream inflated costs beyond its size (session 38): the words of a hostile 1 MiB
# answer (hex, base32, uuencoded lines) made 300,000 readings, several seconds of CPU,
# within `RATIO`; the cost bounds their number, and the headroom keeps a short genuine
# text (a nonce, its four readings) from passing its bound.
HEADROOM: Final = 64 * 1024
READING_COST: Final = 256
# The most one compressed stream inflates to: a relay body is at most 64 KiB, and an
# echo of it adds an acquirer's wrapping.
MAX_INFLATED: Final = 64 * 1024
# The most gzip members one stream holds (each is a new decoder and a copy of the rest).
MAX_MEMBERS: Final = 64

# A word that may be base64 (standard or URL-safe alphabet): long enough to hold the 13
# digits of the shortest card (18 characters; session 38: 20 were needed, so a 13- or
# 14-digit card in base64 alone, 18 or 19 characters and its padding, was not read).
_BASE64_MIN: Final = 18
_BASE64_WORD: Final = re.compile(rf"[A-Za-z0-9+/_-]{{{_BASE64_MIN},}}={{0,2}}")
# Base32 (RFC 4648, either case): 21 characters hold 13 bytes.
_BASE32_WORD: Final = re.compile(r"[A-Z2-7]{21,}={0,6}|[a-z2-7]{21,}={0,6}")
_BASE32_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BASE32_BITS: Final = {ord(c): f"{i:05b}" for i, c in enumerate(_BASE32_ALPHABET)}
_NOT_BASE32: Final = dict.fromkeys(map(ord, _BASE32_ALPHABET))
# The longest text read whole as Ascii85 or base85 (their decoders are Python): an echo
# of a relay body (64 KiB at most) and its wrapping. A longer one is withheld whole.
MAX_BASE85: Final = 128 * 1024
# A short word that is base64 or base32 by its padding, or a text that is one short word
# (a field the upstream encoded alone: the code is 4 to 8 characters of base64).
_PADDED_WORD: Final = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{2,}={1,6}")
_SHORT_WORD: Final = re.compile(r"[A-Za-z0-9+/_-]{4,}={0,6}")
# A short base64 word inside a text, unpadded (a URL's query, a field among words): the
# 6 to 12 bytes of a card's packed BCD (12 to 19 digits, a length byte before them).
_SHORT_IN_TEXT: Final = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{8,17}(?![A-Za-z0-9+/_-])")
# Ascii85 between Adobe's delimiters; base85 and Ascii85 as a text's whole value.
_ASCII85_FRAMED: Final = re.compile(r"<~[!-uz\s]*~>")
_BASE85_WHOLE: Final = re.compile(r"[0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~]{17,}")
_ASCII85_WHOLE: Final = re.compile(r"[!-uz]{17,}")
# A uuencoded block, its lines between ``begin`` and ``end``.
_UU_BLOCK: Final = re.compile(r"^begin [0-7]{3,4} [^\n]*\n(.*?)^end\s*$", re.M | re.S)
# Bytes in hex, at least the 13 of the shortest card, looked for once white space,
# colons and hyphens are taken out (a dump's separators between its bytes).
_HEX_WORD: Final = re.compile(r"[0-9A-Fa-f]{26,}")
_HEX_SEPARATORS: Final = str.maketrans("", "", ":-")
# A gzip stream's first bytes, and a zlib stream's at each of its usual levels.
_STREAM_MAGICS: Final = (b"\x1f\x8b\x08", b"\x78\x9c", b"\x78\xda", b"\x78\x01")
_JSON_ESCAPE: Final = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|([\"\\/bfnrt]))")
_JSON_SIMPLE: Final = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# A quoted-printable escape or soft line break; a UTF-7 base64 block.
_QP_ESCAPE: Final = re.compile(r"=(?:[0-9A-F]{2}|\r?\n)")
# What `_text_like` takes: every byte but the C0 and C1 controls, white space and NUL
# aside.
_TEXT_BYTES: Final = (
    bytes(b for b in range(256) if not (b < 0x20 or 0x7F <= b < 0xA0)) + b"\x00\t\n\r"
)
_UTF7_BLOCK: Final = re.compile(r"\+(A[A-Za-z0-9+/]+)-")
# A hex dump's line (``hexdump -C``, ``xxd``, ``od -A x -t x1z``, Wireshark's): an offset,
# then the bytes in groups of two to eight hex digits, then the bytes as text. Read with
# one space between groups (xxd, od: their text column follows two spaces, and may start
# with what reads as hex), and with one or two (hexdump -C's middle gap; its text column
# begins with "|"). Review 39b: each line's hex was read alone, 16 bytes, and a card
# spans two; the offset and the text column broke the runs of hex.
_DUMP_GROUP: Final = r"[0-9A-Fa-f]{2}(?:[0-9A-Fa-f]{2}){0,3}(?![^ \t\r\n])"
_DUMP_LINES: Final = tuple(
    re.compile(
        rf"^[ \t]*[0-9A-Fa-f]{{4,}}:?[ \t]{{1,3}}({_DUMP_GROUP}(?:{gap}{_DUMP_GROUP})*)", re.M
    )
    for gap in (" ", r"[ \t]{1,2}")
)
# Bytes written one by one as ``0x35`` (a C array, ``xxd -i``) or ``\x35``.
_PREFIXED_BYTE: Final = re.compile(r"(?:0[xX]|\\x)([0-9A-Fa-f]{2})(?![0-9A-Fa-f])")
# The fewest bytes of a dump worth reading: the shortest card.
_DUMP_MIN: Final = 13


class _Unread(Exception):
    """A text whose reading would pass its bound: withhold it whole."""


class AnswerBound:
    """What is left of a whole answer's reading: `RATIO` times the length of its texts
    (`length`) and `HEADROOM`, in characters decoded, inflated and unescaped; each
    text's own bound (`_Budget`) counts its decodings too. Shared by the `read_as` of
    every text of one answer (review 39b)."""

    def __init__(self, length: int) -> None:
        self.left = RATIO * length + HEADROOM


class _Budget:
    """What is left of a text's reading (`RATIO` times its length), and of its answer's."""

    def __init__(self, text: str, answer: AnswerBound | None) -> None:
        self.left = RATIO * len(text) + HEADROOM
        self.answer = answer

    def spend(self, size: int, *, decodings: int = 0) -> None:
        self.left -= size + decodings * READING_COST
        if self.answer is not None:
            self.answer.left -= size
            if self.answer.left < 0:
                raise _Unread
        if self.left < 0:
            raise _Unread

    def room(self) -> int:
        """What may still be read, at least 0."""
        left = self.left if self.answer is None else min(self.left, self.answer.left)
        return max(left, 0)


def read_as(
    text: str,
    found: Callable[[str], bool],
    *,
    decoded: Callable[[str], bool] | None = None,
    answer: AnswerBound | None = None,
) -> bool:
    """Whether `found` holds for `text` or for what it reads as once decoded the ways an
    echo is written (module docstring), or `decoded` holds for what a word or stream of
    it reads as once decoded (never the text, nor the text with its escapes undone: a
    caller that reads those itself, `escaped_forms`), or reading it would pass its bound
    (then what is left unread may be what either looks for: fail closed). One reading
    and one bound serve both; `answer`, when given, is the bound of the whole answer
    `text` is a part of, spent too."""
    try:
        return any(
            found(shape) or (inner and decoded is not None and decoded(shape))
            for shape, inner in _layers(text, LAYERS, _Budget(text, answer), inner=False)
        )
    except _Unread:
        return True


def escaped_forms(text: str, *, lone_words: bool = True) -> list[str]:
    """What `text` reads as once its escapes are undone (`_unescaped`): a dozen at most,
    each about `text`'s size. Without `lone_words`, a digit word alone is left a word
    (`vault._relay_words.word_runs_undone`: how a code is looked for)."""
    undoers = _UNDOERS if lone_words else (*_UNDOERS[:-1], word_runs_undone)
    shown, searched = _unescaped(text, undoers)
    return shown + searched


def _unescaped(
    text: str, undoers: tuple[Callable[[str], str], ...] | None = None
) -> tuple[list[str], list[str]]:
    """(what `text` reads as once percent-decoded, HTML-entity-decoded, JSON-unescaped,
    quoted-printable- or UTF-7-decoded, percent up to `LAYERS` times; those of them
    in which words are looked for: a base64 word keeps its "+"). Session 38: a request
    inside a return URL inside a redirect URL is percent-encoded twice, and a
    quoted-printable soft line break put inside the code by the caller's padding split
    it; neither was read."""
    shown: list[str] = []
    if "%" in text or "+" in text:
        shown.append(unquote_plus(text))
    forms: list[str] = []
    for undo in _UNDOERS if undoers is None else undoers:
        current = text
        # Percent-encoding is undone again and again (a URL in a URL), the rest once:
        # each form is scanned whole, and a hostile text changed by every one of them.
        for _ in range(LAYERS if undo is _percent_undone else 1):
            undone = undo(current)
            if undone == current:
                break
            forms.append(current := undone)
    forms = list(dict.fromkeys(forms))
    return [form for form in shown if form not in forms], forms


def _layers(text: str, depth: int, budget: _Budget, *, inner: bool) -> Iterator[tuple[str, bool]]:
    """`text` and what it reads as (module docstring), each with whether it came of a
    word or stream decoded (`inner`)."""
    yield text, inner
    if depth == LAYERS and len(text) > MAX_BASE85 and _too_long_for_85("".join(text.split())):
        raise _Unread  # checked first: undoing its escapes took seconds
    forms = [text]
    # The text escapes, in the answer's own texts and in decoded bytes that are text (a
    # binary blob read as Latin-1 is none, and unquoting its stray "%"s took seconds).
    if depth == LAYERS or text.isascii():
        shown, searched = _unescaped(text)
        for form in shown + searched:
            budget.spend(len(form))
            yield form, inner
        forms += searched
    if depth == 0:
        return
    seen: set[str] = set()
    for form in forms:
        for decoded, in_step in _words(form, seen, rare=depth == LAYERS):
            yield from _read_bytes(decoded, depth - 1, budget, raw=in_step)
    if depth == LAYERS:
        for hexed in _short_words_in_hex(forms):
            budget.spend(len(hexed))
            yield hexed, False  # looked at for a card only: a run of hex is no text


def _short_words_in_hex(forms: list[str]) -> Iterator[str]:
    """The bytes of each short unpadded base64 word inside `forms` (`_SHORT_IN_TEXT`),
    decoded from its first character, in hex: read for the card a binary message writes
    in packed BCD only (atk49b: field 2 alone in base64 in a URL's query or among words,
    12 characters, went back whole; too short to be read as the words of `_words`)."""
    seen: set[str] = set()
    for form in forms:
        for word in _SHORT_IN_TEXT.findall(form):
            if word not in seen:
                seen.add(word)
                if data := _base64(word):
                    yield data.hex()


def _words(form: str, seen: set[str], *, rare: bool) -> Iterator[tuple[bytes | None, bool | None]]:
    """The words of `form` decoded: base64 (from each offset of a block, so that one that
    begins after other characters of its alphabet, a URL path's, is read in step;
    review 37b), base32 (from its first character), short base64 and base32 words by
    their padding or as the whole text, hex, Ascii85 and base85 (between Adobe's
    delimiters, or as the whole text, up to `MAX_BASE85`; a longer one is withheld),
    uuencoded blocks (these last and base32 only when `rare`: in the answer's own
    texts, not in what a word decodes to, where they cost the most); each with whether
    it was read from its first character (only such bytes are tried as raw deflate:
    `_inflated`). `seen` keeps a word from being decoded twice."""

    def once(key: str) -> bool:
        if key in seen:
            return False
        seen.add(key)
        return True

    compact = "".join(form.split())  # base64 wrapped over lines (MIME's 76 columns)
    for scan in dict.fromkeys((form, compact)):
        for word in _BASE64_WORD.findall(scan):
            for start in range(4):
                if len(word) - start >= _BASE64_MIN and once(f"64/{start}/{word}"):
                    yield _base64(word[start:]), start == 0
        for word in _BASE32_WORD.findall(scan) if rare else ():
            if once(f"32/{word}"):  # from its first character only: eight readings cost
                yield _base32(word), True  # seconds for a hostile answer
    for word in _HEX_WORD.findall(compact.translate(_HEX_SEPARATORS)):
        for start in (0, 1):  # a run of hex whose first byte began a digit earlier
            if once(f"16/{start}/{word}"):
                yield _hex(word[start:]), start == 0
    if rare:
        found = _rare_words(form, compact)
        yield from ((data, raw) for key, data, raw in found if once(key))


def _rare_words(form: str, compact: str) -> Iterator[tuple[str, bytes | None, bool | None]]:
    """(a key, the word decoded, whether to try it as raw deflate) for `_words`' shorter
    and rarer words: a short word is not (four bytes of noise inflate past their bound
    now and then; a stream that short holds no echo)."""
    # Shorter than the words above: padded, or the text's whole value.
    short = [word for word in _PADDED_WORD.findall(form) if len(word.rstrip("=")) <= 20]
    if _SHORT_WORD.fullmatch(compact) and len(compact.rstrip("=")) <= 20:
        short.append(compact)
    for word in dict.fromkeys(short):
        # In step (read from its first character), so its bytes are read as a binary
        # message writes digits (atk49b: the card's field 2 alone, packed BCD in
        # base64, 12 characters, went back whole), but not tried as raw deflate (None).
        yield f"s64/{word}", _base64(word), None
        yield f"s32/{word}", _base32(word), None
    for framed in _ASCII85_FRAMED.findall(form):
        yield f"85/{framed}", _decoded(base64.a85decode, framed, adobe=True), True
    if _ASCII85_WHOLE.fullmatch(compact):
        yield f"a85/{compact}", _text_like(_decoded(base64.a85decode, compact)), True
    if _BASE85_WHOLE.fullmatch(compact):
        yield f"b85/{compact}", _text_like(_decoded(base64.b85decode, compact)), True
    for block in _UU_BLOCK.findall(form):
        yield f"uu/{block}", _uudecoded(block), True
    for key, dump in _dumps(form):
        yield key, _hex(dump), True
    for key, data in dump_readings(form):  # session 40: od, hexdump's words, decimal
        yield f"{key}/{data.decode('latin-1')}", data, True


def _dumps(form: str) -> Iterator[tuple[str, str]]:
    """(a key, the hex digits) of each reading of `form` as a hex dump (`_DUMP_LINES`,
    `_PREFIXED_BYTE`) that holds at least `_DUMP_MIN` bytes, its lines joined."""
    if "\n" in form:
        for at, line in enumerate(_DUMP_LINES):
            digits = "".join("".join(m.split()) for m in line.findall(form))
            if len(digits) >= 2 * _DUMP_MIN:
                yield f"dump{at}/{digits}", digits
    prefixed = "".join(_PREFIXED_BYTE.findall(form))
    if len(prefixed) >= 2 * _DUMP_MIN:
        yield f"0x/{prefixed}", prefixed


def _read_bytes(
    data: bytes | None, depth: int, budget: _Budget, *, raw: bool | None = True
) -> Iterator[tuple[str, bool]]:
    """`data` (a word decoded, or a stream inflated) read as Latin-1 text `depth` more
    layers deep, and inflated when it is a stream (a layer too: gzip of gzip is read);
    as raw deflate too when `raw`; its bytes as a binary message writes digits unless
    `raw` is False (None: a short word, in step but too short to inflate)."""
    if not data:
        return
    budget.spend(len(data), decodings=1)
    yield from _layers(data.decode("latin-1"), depth, budget, inner=True)
    if raw is not False:  # a word read from its first character, or a stream: in step
        yield from _binary_digits(data, budget)
    if depth > 0:
        yield from _read_bytes(_inflated(data, budget, raw=raw is True), depth - 1, budget)
        # A stream that begins inside the bytes: base64 read out of step from a URL
        # path's first character decodes the path to bytes before it (review 37b).
        for start in _stream_starts(data):
            yield from _read_bytes(_inflated(data[start:], budget), depth - 1, budget)


def _binary_digits(data: bytes, budget: _Budget) -> Iterator[tuple[str, bool]]:
    """`data` read as a binary ISO 8583 message writes digits (session 42, orc42: an
    acquirer's base64 echo of the message it built carried the card, read as Latin-1,
    as no digit at all): its bytes in hex, packed BCD's two digits a byte (field 2 of
    a binary message), looked at for a card only (a run of hex digits is no text: a
    code's three digits are in most blobs); and, unless it is ASCII, its EBCDIC text
    (cp037: a digit ``0xF0`` to ``0xF9``, letters from ``0x81``), read as any decoded
    text is, for a code or a name too."""
    hexed = data.hex()
    budget.spend(len(hexed))
    yield hexed, False
    if not data.isascii():
        text = data.decode("cp037")
        budget.spend(len(text))
        yield text, True


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


def _inflated(data: bytes, budget: _Budget, *, raw: bool = True) -> bytes:
    """`data` decompressed: gzip (every member), zlib, else raw deflate; empty when it
    reads as none. What was read before a stream's error is kept (data that is no stream
    fails within a few bytes). Review 36: the request gzipped in base64 (a debug field,
    a compressed payload) reached the caller whole. Review 36b: so did raw deflate,
    which has no header (.NET's DeflateStream, PHP's gzdeflate), and a card in a gzip
    stream's second member. Raises `_Unread` past `MAX_INFLATED`, `RATIO` times
    `data`'s size, what is left of the text's budget (spent by the caller) or
    `MAX_MEMBERS` (review 37: the rest was left
    unread, and the caller's padding put the card there). Raw deflate is tried only
    when `raw` (bytes of a word read from its first character): noise inflates as raw
    deflate past its bound now and then, and a word read out of step, or from the
    offsets of a base32 block, is noise but for one of its readings (session 38: with
    base32 and the short words, answers of nonces were withheld one in a few hundred)."""
    gzipped = data[:2] == b"\x1f\x8b"
    if gzipped:
        bits = zlib.MAX_WBITS | 16
    elif len(data) > 1 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
        bits = zlib.MAX_WBITS  # a zlib header: deflate, its check bits right
    elif raw:
        bits = -zlib.MAX_WBITS
    else:
        return b""
    limit = min(MAX_INFLATED, RATIO * len(data), budget.room())
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


def _base32(word: str) -> bytes | None:
    """`word` decoded as base32 (either case, padding optional; stray characters at its
    end make no byte). In C, through a string of bits: the standard library's decoder is
    Python, and took seconds for a hostile answer."""
    body = word.rstrip("=").upper()
    if not body or body.translate(_NOT_BASE32):
        return None  # a character out of the alphabet: "0", "1", "8" and "9" among them
    bits = body.translate(_BASE32_BITS)
    size = len(bits) // 8
    if not size:
        return None
    return int(bits[: size * 8], 2).to_bytes(size, "big")


def _decoded(decode: Callable[..., bytes], text: str, **options: bool) -> bytes | None:
    try:
        return decode(text, **options)
    except (binascii.Error, ValueError):
        return None


def _too_long_for_85(compact: str) -> bool:
    return bool(_ASCII85_WHOLE.fullmatch(compact) or _BASE85_WHOLE.fullmatch(compact))


def _text_like(data: bytes | None) -> bytes | None:
    """`data` when no byte of it is a control character but white space and NUL (text,
    or UTF-16 text), else None: Ascii85 and base85 take almost any word, and decode the
    digits and letters of an identifier to bytes rich in ASCII digits."""
    if data is None or data.translate(None, _TEXT_BYTES):
        return None
    return data


def _uudecoded(block: str) -> bytes:
    out = []
    for line in block.splitlines():
        try:
            out.append(binascii.a2b_uu(line))
        except ValueError:  # binascii.Error, and a line that is not ASCII
            continue
    return b"".join(out)


def _percent_undone(text: str) -> str:
    return unquote(text) if "%" in text else text


def _html_undone(text: str) -> str:
    return html.unescape(text) if "&" in text else text


def _json_undone(text: str) -> str:
    return _json_unescaped(text) if "\\" in text else text


def _qp_undone(text: str) -> str:
    """`text` quoted-printable-decoded, when it is ASCII and holds an escape or a soft
    line break."""
    if not text.isascii() or _QP_ESCAPE.search(text) is None:
        return text
    return binascii.a2b_qp(text.encode("ascii")).decode("latin-1")


def _utf7_undone(text: str) -> str:
    """`text` with its UTF-7 base64 blocks (``+ADcAMwA5ADE-``) decoded."""
    if "+" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        data = _base64(match.group(1))
        if not data or len(data) % 2:
            return match.group(0)
        return data.decode("utf-16-be", "replace")

    return _UTF7_BLOCK.sub(one, text)


# `words_undone` last: `escaped_forms` puts `word_runs_undone` in its place for a code.
_UNDOERS: Final = (
    _percent_undone,
    _html_undone,
    _json_undone,
    _qp_undone,
    _utf7_undone,
    words_undone,  # sessions 40, 41: digit words (`vault._relay_words`)
)
