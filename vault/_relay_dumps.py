"""Dumps and lists of an echo's bytes that `vault._relay_echo` reads beside hex words and
``hexdump -C`` (session 40), and the lists of an answer read joined.

IN PCI SCOPE: the texts read here are an acquirer's answer to a body holding a card;
they are decoded in memory to be compared with the cards sent, never logged.

Read, each once per text and in one pass over it (so a text costs a fixed number of
passes, and what they decode is at most half its length, spent from its bound by the
caller, `vault._relay_echo._read_bytes`):

- the lines of a dump that begin with an offset (``hexdump``, ``od``), their cells
  joined across lines as 16-bit little-endian words in hex (``hexdump``, ``od -x``) or
  in octal (``od``), as bytes in octal (``od -b``) or in decimal (``od -t u1``), and as
  ``od -c``'s characters (four columns each, C escapes and octal bytes);
- bytes written in decimal, thirteen or more in a row, separated by commas, semicolons
  or white space (``52,49,50``: a language's byte array printed, a JSON array of
  numbers), and as C octal escapes (``\\065\\061``);
- the items of a JSON array, joined (`joined_lists`): base64 lines (MIME's 76
  characters) as an array's items, the card crossing from one item to the next, and
  numbers or digit words one per item (the words: `vault._relay_words`).

Review 39b left these "not read": a card in one of them went back to the caller whole.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from typing import Any, Final

# The fewest bytes worth reading: the shortest card.
_MIN_BYTES: Final = 13
# A dump's line: an offset (six to eight hex or octal digits), then its cells.
_OFFSET_LINE: Final = re.compile(r"^[ \t]*[0-9A-Fa-f]{6,8}((?:[ \t][^\n]*)?)$", re.M)
_HEX_WORD16: Final = re.compile(r"(?<![^ \t\r])[0-9A-Fa-f]{4}(?![^ \t\r])")
_OCTAL_WORD16: Final = re.compile(r"(?<![^ \t\r])[0-7]{6}(?![^ \t\r])")
_OCTAL_BYTE: Final = re.compile(r"(?<![^ \t\r])[0-7]{3}(?![^ \t\r])")
# Bytes in decimal: a run of numbers of one to three digits between separators.
_SEPARATORS: Final = re.compile(r"[ \t\r\n]*[,;][ \t\r\n]*|[ \t\r\n]+")
_BASE64_PIECE: Final = re.compile(
    r"(?=.)(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}==|[A-Za-z0-9+/_-]{3}=)?"
)
_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")
_C_ESCAPES: Final = {
    "\\0": "\x00",
    "\\a": "\x07",
    "\\b": "\x08",
    "\\t": "\t",
    "\\n": "\n",
    "\\v": "\x0b",
    "\\f": "\x0c",
    "\\r": "\r",
}


def dump_readings(form: str) -> Iterator[tuple[str, bytes]]:
    """(a key, the bytes) of each reading of `form` as a dump or a list of bytes (module
    docstring) that holds at least the bytes of the shortest card."""
    if "\n" in form:
        cells = _OFFSET_LINE.findall(form)
        if len(cells) > 1:
            yield from _offset_dump_readings(cells)
    decimal = _decimal_bytes(form)
    if decimal is not None:
        yield "dec", decimal
    escaped = _OCTAL_ESCAPE.findall(form)
    if len(escaped) >= _MIN_BYTES:
        yield "oct\\", bytes(int(b, 8) & 0xFF for b in escaped)


def _offset_dump_readings(cells: list[str]) -> Iterator[tuple[str, bytes]]:
    joined = " ".join(cells)
    readings = {
        "x16": b"".join(bytes.fromhex(w[2:] + w[:2]) for w in _HEX_WORD16.findall(joined)),
        "o16": b"".join(int(w, 8).to_bytes(3, "little")[:2] for w in _OCTAL_WORD16.findall(joined)),
        "o8": bytes(int(b, 8) & 0xFF for b in _OCTAL_BYTE.findall(joined)),
        "u8": _decimal_bytes(joined) or b"",
        "c": "".join(map(_od_c_text, cells)).encode("latin-1", "replace"),
    }
    for key, data in readings.items():
        if len(data) >= _MIN_BYTES:
            yield f"od-{key}", data


def _od_c_text(cells: str) -> str:
    """The characters of one line of ``od -c`` (each in four columns, right-aligned: a
    character, a C escape or three octal digits; a space is four spaces)."""
    out = []
    for at in range(0, len(cells) - len(cells) % 4, 4):
        cell = cells[at : at + 4].lstrip(" ")
        if not cell:
            out.append(" ")
        elif len(cell) == 1:
            out.append(cell)
        elif cell in _C_ESCAPES:
            out.append(_C_ESCAPES[cell])
        elif len(cell) == 3 and cell.isdigit() and "8" not in cell and "9" not in cell:
            out.append(chr(int(cell, 8) & 0xFF))
    return "".join(out)


def _decimal_bytes(text: str) -> bytes | None:
    """The longest run of `text`'s numbers 0 to 255 between separators (`_SEPARATORS`),
    when it holds at least `_MIN_BYTES`, as bytes; else None."""
    best: list[int] = []
    run: list[int] = []
    for token in _SEPARATORS.split(text):
        if 0 < len(token) <= 3 and token.isascii() and token.isdigit() and int(token) < 256:
            run.append(int(token))
            continue
        if len(run) > len(best):
            best = run
        run = []
    if len(run) > len(best):
        best = run
    return bytes(best) if len(best) >= _MIN_BYTES else None


# The longest item joined with commas: a byte in decimal, a digit, a digit word. Longer
# ones (ids, hashes) joined so read as Ascii85, and noise inflated past its bound.
_SHORT: Final = 8


def joined_lists(value: Any) -> Iterator[tuple[list[Any], list[str]]]:
    """(a list of `value`, its items read joined) for every JSON array of `value` with at
    least two items that are texts or numbers: its texts joined with nothing (base64
    lines), those of its texts and numbers of at most `_SHORT` characters joined with
    commas (a byte or a digit an item, digit words), and the bytes of its texts that are
    each one padded base64 word, joined, in hex (a card cut into pieces each encoded
    alone). Each item is in one list, so the joined texts are at most two and a half
    times as long as the answer's. Recursion is bounded: the relay refuses an answer
    deeper than `vault.relay.MAX_DEPTH`."""
    if isinstance(value, dict):
        for item in value.values():
            yield from joined_lists(item)
        return
    if not isinstance(value, list):
        return
    short = [text for item in value if (text := _scalar_text(item)) and len(text) <= _SHORT]
    texts = [item for item in value if isinstance(item, str)]
    joins = [",".join(short)] if len(short) > 1 else []
    if len(texts) > 1:
        joins.append("".join(texts))
        pieces = [data for text in texts if (data := _base64_piece(text))]
        if len(pieces) > 1:  # each item base64 alone: its padding splits the join
            joins.append(b"".join(pieces).hex())
    if joins:
        yield value, joins
    for item in value:
        yield from joined_lists(item)


def _base64_piece(text: str) -> bytes | None:
    """`text` decoded as one base64 word (either alphabet, padded), else None."""
    if _BASE64_PIECE.fullmatch(text) is None:
        return None
    try:
        return binascii.a2b_base64(text.replace("-", "+").replace("_", "/"), strict_mode=True)
    except binascii.Error:
        return None


def _scalar_text(item: Any) -> str | None:
    if isinstance(item, bool) or item is None:
        return None
    if isinstance(item, str | int | float):
        return str(item)
    return None


def withhold_lists(value: Any, lists: set[int], replacement: str) -> Any:
    """`value` with every item of each list whose `id` is in `lists` (texts and numbers)
    replaced by `replacement`."""
    if not lists:
        return value

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        if isinstance(node, list):
            if id(node) in lists:
                return [
                    replacement if _scalar_text(item) is not None else walk(item) for item in node
                ]
            return [walk(item) for item in node]
        return node

    return walk(value)
