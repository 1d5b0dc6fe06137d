"""The relay's reading of its upstream's answer: the body read bounded (raw and each
content coding's output), then parsed as JSON within a count of values and a depth, or
kept as text. Moved out of `vault.relay_client`, unchanged, so that each reads in one
sitting.

IN PCI SCOPE: an answer may echo the card the relay sent; it is masked by the caller
(`vault.relay`), never logged here.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any, Final

import httpx

from vault.errors import UpstreamUnavailable
from vault.relay import MAX_DEPTH, nested_deeper_than

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_ANSWER_VALUES",
    "NOT_TEXT",
    "answer_of",
    "read_answer",
    "values_over",
]

# The most of an upstream's answer the vault reads (decoded). Acquirers answer a few KB.
MAX_ANSWER_BYTES: Final = 1 << 20
# The most JSON values and object keys an answer may hold. 1 MiB of ``[{"a":1},...]`` is
# ~130,000 objects: parsed and masked, ~70 MiB of Python objects for one relay, and a
# process holds up to 256 relays at once (review 40). Acquirers answer tens to hundreds.
MAX_ANSWER_VALUES: Final = 20_000
# A JSON string, or the rest of the text from an unclosed one: it matches at every quote
# it starts from, so removing strings stays linear in the text's length.
_CONTAINER: Final = re.compile(rb"[ \t\r\n]*[\[{]")
_JSON_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.|\\\Z)*+(?:"|\Z)', re.DOTALL)
# What an answer that is no JSON and not UTF-8 text is given as (`_text`).
NOT_TEXT: Final = "[withheld: the upstream's answer is not UTF-8 text]"
# Control characters that no text answer holds (white space, NUL aside: `_text`).
_CONTROL: Final = re.compile(r"[\x01-\x08\x0e-\x1f\x7f]")


# The content codings an answer may come in despite the relay asking for none: zlib's
# window bits for each (deflate is tried as zlib, then raw, as httpx does).
_CODINGS: Final = {
    "gzip": zlib.MAX_WBITS | 16,
    "x-gzip": zlib.MAX_WBITS | 16,
    "deflate": zlib.MAX_WBITS,
}


def read_answer(name: str, response: httpx.Response) -> bytes:
    """The answer's body, at most `MAX_ANSWER_BYTES` once decoded, else
    `UpstreamUnavailable` (the card has gone, but an answer that large is no acquirer's,
    and reading it whole would hold it all in memory). Read raw and decoded here, each
    coding's output bounded: httpx decodes each chunk it reads whole, so a few hundred
    bytes of ``content-encoding: gzip, gzip`` took gigabytes (review 40). A coding
    other than gzip or deflate is refused: an answer the vault cannot read, it cannot
    mask."""
    codings = [
        coding.strip().lower()
        for value in response.headers.get_list("content-encoding")
        for coding in value.split(",")
    ]
    codings = [coding for coding in codings if coding and coding != "identity"]
    # A compressed answer of incompressible bytes is a little larger than it decodes to.
    bound = 2 * MAX_ANSWER_BYTES if codings else MAX_ANSWER_BYTES
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_raw():
        size += len(chunk)
        if size > bound:
            raise _too_large(name)
        chunks.append(chunk)
    content = b"".join(chunks)
    del chunks
    for coding in reversed(codings):
        content = _decode(name, content, coding, bound)
    if len(content) > MAX_ANSWER_BYTES:
        raise _too_large(name)
    return content


def _decode(name: str, data: bytes, coding: str, bound: int) -> bytes:
    """`data` decoded from `coding`, at most `bound` bytes of it, else `UpstreamUnavailable`."""
    wbits = _CODINGS.get(coding)
    if wbits is None:
        # Not named: the header is the upstream's, and the message goes to the caller.
        raise UpstreamUnavailable(
            f"the upstream of route {name!r} answered in a content coding the vault does not read"
        )
    for bits in (wbits, -zlib.MAX_WBITS) if coding == "deflate" else (wbits,):
        decoder = zlib.decompressobj(bits)
        try:
            decoded = decoder.decompress(data, bound + 1)
        except zlib.error:
            continue
        if len(decoded) > bound or decoder.unconsumed_tail:
            raise _too_large(name)
        return decoded
    raise UpstreamUnavailable(f"the upstream of route {name!r} answered a body it did not encode")


def _too_large(name: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"the upstream of route {name!r} answered more than {MAX_ANSWER_BYTES} bytes"
    )


def answer_of(name: str, content: bytes) -> Any:
    """The upstream's answer as JSON, or its text as ``{"body": ...}``. Raises
    `UpstreamUnavailable` for JSON nested deeper than `MAX_DEPTH` (or than the parser
    goes): the card has gone, but such an answer cannot be masked, so none is given
    (the caller's `relay` entry says upstream_unavailable)."""
    # Counted and parsed as the same UTF-8: `json.loads` reads bytes after a UTF-8 BOM
    # and in UTF-16 or UTF-32 too, which the count did not see as JSON (review 43).
    utf8 = _as_utf8(content)
    if values_over(utf8, MAX_ANSWER_VALUES):
        raise UpstreamUnavailable(
            f"the upstream of route {name!r} answered JSON of more than {MAX_ANSWER_VALUES} values"
        )
    try:
        parsed: Any = json.loads(utf8)
    except RecursionError:
        parsed, deep = None, True
    except ValueError:
        # As UTF-8 whatever charset it declares: decoded as cp500 (EBCDIC), an ASCII
        # echo of the card passed the masking unseen (review 27).
        return {"body": _text(content)}
    else:
        deep = nested_deeper_than(parsed)
    if deep:
        raise UpstreamUnavailable(
            f"the upstream of route {name!r} answered JSON nested deeper than {MAX_DEPTH} levels"
        )
    try:
        # What `json.loads` takes and JSON cannot say (NaN, Infinity, 1e999, a lone
        # surrogate's escape) failed the caller's answer at its rendering: a 500 after
        # the card had gone upstream (the attack review). Such an answer is no JSON.
        json.dumps(parsed, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except ValueError:
        return {"body": _text(content)}
    return parsed


def _text(content: bytes) -> str:
    """An answer that is no JSON, as text: its bytes as UTF-8, without NULs. A UTF-16
    or UTF-32 echo of ASCII (a Windows service's error text) came back a NUL between
    each character, which the PAN detector skips but the withholding of the security
    code and the cardholder's name did not match: both reached the caller (the attack
    review). Not decoded as UTF-16 either: ASCII behind a NUL would read as CJK.

    An answer that is not UTF-8 text then (bytes UTF-8 cannot decode, or control
    characters other than white space) is `NOT_TEXT`, its status kept: the vault
    cannot read it, so it cannot mask it. Review 36: such bytes were decoded with
    U+FFFD in place of each byte UTF-8 refuses and the rest handed over. A compressed
    echo of the request sent without its `Content-Encoding` kept half its bytes and
    its CRC, enough to pick the card among the 10^5 its masked reveal leaves; fullwidth
    digits in UTF-16 kept their low bytes (U+FF15 is 0x15, the digit 5)."""
    text = content.replace(b"\x00", b"")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_TEXT
    return NOT_TEXT if _CONTROL.search(decoded) else decoded


def _as_utf8(content: bytes) -> bytes:
    """`content` in UTF-8 without a BOM, decoded as `json.loads` would decode it (the
    encoding told from its first bytes); as it is when that fails (`json.loads` then
    refuses it too, and it is answered as text)."""
    encoding = json.detect_encoding(content)
    if encoding == "utf-8":
        return content
    try:
        return content.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")
    except UnicodeError:
        return content


def values_over(content: bytes, limit: int) -> bool:
    """Whether `content`, when it is a JSON array or object, may hold more than `limit`
    values and keys: each but the first follows a ``[``, ``{``, ``,`` or ``:`` outside a
    string. Counted before parsing, which is what costs the memory (`MAX_ANSWER_VALUES`),
    string by string, so that the count holds no copy of the answer and stops at the
    bound; a text that is not JSON is answered as text, and a scalar is one value."""
    if _CONTAINER.match(content) is None:
        return False
    if _structural(content) <= limit:  # the usual answer: no need to look at strings
        return False
    seen, start = 0, 0
    for string in _JSON_STRING.finditer(content):
        seen += _structural(content[start : string.start()])
        if seen > limit:
            return True
        start = string.end()
    return seen + _structural(content[start:]) > limit


def _structural(text: bytes) -> int:
    return text.count(b"[") + text.count(b"{") + text.count(b",") + text.count(b":")
