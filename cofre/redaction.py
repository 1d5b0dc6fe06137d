"""Masking of anything that looks like a card number, for whatever leaves the vault.

IN PCI SCOPE. The `Pan` type already masks itself; this is the safety net for data that
did not come through it (a log message, a header a client sent, an exception from a
library, an acquirer's answer to the relay). It is the one PAN detector of the project:
the relay's answers, the logs, the audit details and the error bodies all use it, so a
representation it learns to see is masked everywhere at once; `holds_pan_like` is the
same detector, stricter, for what a caller sends (metadata stored in clear).

Digits are any Unicode decimal digits (category Nd: Arabic-Indic ``٤١١١``, the
fullwidth digits U+FF10 to U+FF19...), read as their values, as ``int()`` reads them.
What it sees, in text (`mask_pan_like`):

- a run of 12 or more digits: ``NNNNNNNNNNNNNNNN`` (also the integral part of a
  number written ``NNNNNNNNNNNNNNNN.0``);
- digit groups of up to six joined by one repeated separator of up to three
  non-alphanumeric characters: ``NNNN NNNN NNNN NNNN``, ``NNNN.NNNN.NNNN.NNNN``,
  ``4-1-1-1-…``, the text of a JSON array of digits ``[4,1,1,1,…]`` or ``["4","1",…]``;
- digit groups of any length joined by looser separators, mixed freely: runs of up to
  eight white-space characters (spaces, tabs, line breaks, NBSP), a hyphen or a comma
  (with up to four of them each side: a pretty-printed JSON list), a JSON list's
  ``","`` (with white space around the comma): ``4111 1111-1111 1111``,
  ``41111111 11111111``, ``4111111111-111111``,
  ``["41111111","11111111"]``. These shapes also hold ordinary text (dates, counts), so
  they are masked only where whole groups make a Luhn-valid 12 to 19 digit window, and
  an ISO date (``2026-12-01``) or a UUID breaks such a chain.

and in JSON values (`mask_pan_values`): every string as above, every integer of 12 or
more digits, every float whose integral part has 12 or more digits (``4.111111111111111e15``
is the same card as its 16 digits in a row), any run of consecutive list items that are
short digit strings or small integers (``[4, 1, 1, 1, …]``, ``["4111", "1111", …]``)
holding 12 or more digits together, and list items of up to 11 digits whose whole items
make a Luhn-valid 12 to 19 digit window (``["41111111", "11111111"]``).

What it leaves alone, in what leaves the vault (not in `holds_pan_like`):

- a dotted quad that is an IPv4 address (``192.168.100.200``), and the hyphenated
  groups of a UUID (``8-4-4-4-12`` hex; a last group of 12 digits is still a run);
- digit runs inside a hex word of exactly a digest's length (32, 40, 56, 64, 96 or 128
  hex characters, a letter among them: an MD5-sized trace id, a SHA-1 or certificate
  serial, a SHA-2 digest), unless the run holds a Luhn-valid window of 13 to 19 digits.
  One SHA-256 in five holds 12 digits in a row by chance, and masking them all made the
  policy hash a node logs at start unreadable; with the Luhn rule about one in fifty is
  masked. The residual risk, accepted: a 12-digit card (or a Luhn-invalid number, which
  is no card) glued inside a digest-sized hex word is shown. No caller chooses such a
  word: what a caller names (formats, routes, origins, request ids, idempotency keys)
  is refused at the API edge unless it is short plain text, and metadata is checked
  with `holds_pan_like`, which has no exemption. A card glued to a hex word of any
  other length is masked: ``deadbeef`` four times then 16 digits is 48 characters.
- in JSON values, an `OwnDigest`: a digest Cofre computed itself (a policy file's
  SHA-256), whole even in the one case in fifty the rule above would mask it.

12 to 19 digits become the first six digits, asterisks and the last four, the most
PCI DSS 4.0.1 req. 3.4.1 allows to be shown, with fewer leading digits on cards under
16 digits so that six stay hidden (`masked_leading`, the rule `Pan.masked` uses too);
longer runs (not PANs, but a PAN may hide
inside) are masked entirely. Texts with fewer than 12 digits are returned at once (most
log lines), so the cost stays that of counting digits.
"""

from __future__ import annotations

import math
import re
import unicodedata
from itertools import accumulate
from typing import Any, Final

MIN_DIGITS: Final = 12
MAX_DIGITS: Final = 19
# A masked PAN shows at most the first six and the last four digits (PCI DSS 4.0.1
# req. 3.4.1) and hides at least six: with the Luhn digit fixed by the others, that
# leaves 10^5 candidates, the vault's own bar for a guess-checking oracle
# (`policies.formats.MIN_CANDIDATES`). BIN6 + last four on 12 digits would leave 10.
# `vault.pan.Pan.masked` uses the same rule, so a relay answer, a log line and a
# masked reveal of one card show the same digits.
MASK_MAX_LEADING: Final = 6
MASK_TRAILING: Final = 4
MASK_MIN_HIDDEN: Final = 6
# Items of a list that may be the pieces of a card number: up to six digits each.
_MAX_PIECE: Final = 6
_MAX_PIECE_INT: Final = 10**_MAX_PIECE - 1
# Items of a list that may be the pieces of a card number under the Luhn rule: fewer
# digits than a card (a longer item is masked on its own).
_MAX_LOOSE_PIECE: Final = MIN_DIGITS - 1
_MAX_LOOSE_PIECE_INT: Final = 10**_MAX_LOOSE_PIECE - 1
# Below this, a digest's inner digit run is hex noise (see the module text).
_MIN_DIGEST_CARD: Final = 13

# A hex word (32+ hex characters, alone) or a run of 12+ digits. The hex alternative is
# tried first at each position, so a digest is consumed whole and its inner digits are
# never seen as a run; a hex word without a letter is all digits and masked like a run.
_DIGIT_RUN: Final = re.compile(
    r"(?P<hex>(?<![0-9A-Za-z])[0-9A-Fa-f]{32,}(?![0-9A-Za-z]))|(?<![0-9])[0-9]{12,}(?![0-9])"
)
# Groups of 1 to 6 digits joined by one separator (repeated exactly, backreference) of
# one to three characters that are neither digits nor letters.
_GROUPED: Final = re.compile(
    r"(?<![0-9])[0-9]{1,6}(?P<sep>[^0-9A-Za-z]{1,3})[0-9]{1,6}(?:(?P=sep)[0-9]{1,6})+(?![0-9])"
)
# Groups of any length joined by the looser separators, mixed (the Luhn rule decides).
# White space includes line breaks and NBSP: an acquirer's answer may wrap or align a
# card ("4111 1111\n1111 1111") or pretty-print a JSON list of its pieces.
_LOOSE_SEP: Final = (
    r"(?:[ \t\r\n\u00a0]{1,8}|[ \t\r\n\u00a0]{0,4}[-,][ \t\r\n\u00a0]{0,4}"
    r'|"[ \t\r\n]{0,8},[ \t\r\n]{0,8}")'
)
# No look-arounds needed: scanned left to right, greedy groups start and end at a run's
# edges (and a look-behind tried at every position costs a third of the time).
_CHAIN: Final = re.compile(rf"[0-9]+(?:{_LOOSE_SEP}[0-9]+)+")
_GROUP: Final = re.compile(r"[0-9]+")
_ISO_DATE: Final = re.compile(
    r"(?<![0-9])[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])(?![0-9])"
)
_IPV4: Final = re.compile(
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
)
_UUID: Final = re.compile(
    r"(?<![0-9A-Za-z-])[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"(?![0-9A-Za-z-])"
)
_NOT_DIGIT: Final = re.compile(r"[^0-9]")
_PLAIN_RUN: Final = re.compile(r"(?<![0-9])[0-9]{12,}(?![0-9])")
_DIGEST_LENGTHS: Final = frozenset({32, 40, 56, 64, 96, 128})
_ASCII_DIGITS: Final = "0123456789"
_UUID_CHARS: Final = frozenset("0123456789abcdefABCDEF-")
_UUID_LENGTH: Final = 36


class _DecimalDigits(dict[int, int]):
    """A `str.translate` table from every non-ASCII decimal digit to its ASCII digit,
    filled as characters are met (the whole table would be 1.1 million look-ups)."""

    def __missing__(self, codepoint: int) -> int:
        char = chr(codepoint)
        value = ord(str(unicodedata.decimal(char))) if char.isdecimal() else codepoint
        self[codepoint] = value
        return value


_TO_ASCII: Final = _DecimalDigits()


class _CompatibilityDigits(dict[int, int]):
    """`_DecimalDigits`, and every other character Unicode gives a digit value (``²``,
    ``₄``, ``④``, ``➃``): for `metadata_holds_pan_like`, which stores nothing a reader
    takes for a card. Not for masking, where ``²`` after a number is a separator."""

    def __missing__(self, codepoint: int) -> int:
        char = chr(codepoint)
        value = ord(str(unicodedata.digit(char))) if char.isdigit() else codepoint
        self[codepoint] = value
        return value


_TO_ASCII_COMPAT: Final = _CompatibilityDigits()


def luhn_valid(digits: str) -> bool:
    """Whether the ASCII `digits` pass the Luhn check (a card number's last digit)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# Luhn's arithmetic on every window of a digit string at once (review 28): re-summing
# each 12 to 19 digit window cost ~1,300 pure-Python Luhn checks for a 256-character
# metadata value of short groups ("- 92,9" repeated), 3-5 ms a value, and 0.3 s for a
# 60 KiB relay answer echoing it. With prefix sums, a window's Luhn sum is one
# subtraction, so the work is linear in the digits with a small constant.
_PLAIN: Final = bytes.maketrans(b"0123456789", bytes(range(10)))
_DOUBLED: Final = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))
_MOD_10: Final = (10).__rmod__  # x -> x % 10, mapped in C


def _luhn_sums(digits: str) -> tuple[bytes, bytes]:
    """Prefix sums modulo 10 of the ASCII `digits`, one per doubling parity: in
    ``sums[q]`` the digits at positions of parity ``q`` count doubled (Luhn's 2d or
    2d - 9). ``digits[s:e]`` passes Luhn iff ``sums[e % 2][e] == sums[e % 2][s]``: Luhn
    doubles every second digit from the right, the window's last digit (at ``e - 1``)
    not, so exactly its digits at positions of ``e``'s parity."""
    raw = digits.encode("ascii")
    plain = raw.translate(_PLAIN)
    doubled = raw.translate(_DOUBLED)
    rows = []
    for parity in (0, 1):
        values = bytearray(plain)
        values[parity::2] = doubled[parity::2]
        rows.append(bytes(map(_MOD_10, accumulate(values, initial=0))))
    return rows[0], rows[1]


def _luhn_window(digits: str, minimum: int = MIN_DIGITS) -> bool:
    """Whether some window of `minimum` to 19 of the ASCII `digits` passes Luhn: for
    each window end, one look among the (at most eight) sums where such a window may
    start (`_luhn_sums`)."""
    if len(digits) < minimum:
        return False
    sums = _luhn_sums(digits)
    for end in range(minimum, len(digits) + 1):
        row = sums[end & 1]
        if row[end] in row[max(0, end - MAX_DIGITS) : end - minimum + 1]:
            return True
    return False


def masked_leading(length: int) -> int:
    """How many leading digits a masked `length`-digit PAN shows: at most the BIN (six),
    and fewer on short PANs so that `MASK_MIN_HIDDEN` digits stay hidden."""
    return max(0, min(MASK_MAX_LEADING, length - MASK_TRAILING - MASK_MIN_HIDDEN))


def mask_digits(digits: str) -> str:
    """Return `digits` masked: the leading digits `masked_leading` allows (BIN6 from 16
    digits up), asterisks and the last four for 12 to 19 digits, all asterisks for
    more, unchanged for fewer."""
    if len(digits) < MIN_DIGITS:
        return digits
    if len(digits) > MAX_DIGITS:
        return "*" * len(digits)
    shown = masked_leading(len(digits))
    hidden = len(digits) - shown - MASK_TRAILING
    return digits[:shown] + "*" * hidden + digits[-MASK_TRAILING:]


def _mask_run(match: re.Match[str], strict: bool) -> str:
    run = match.group(0)
    if match.group("hex") is None or run.isdigit():
        return mask_digits(run)
    if len(run) in _DIGEST_LENGTHS and not strict:
        # A digest: hex noise, unless a run in it is a Luhn-valid card of 13+ digits.
        return _PLAIN_RUN.sub(
            lambda inner: (
                mask_digits(inner.group(0))
                if _luhn_window(inner.group(0), _MIN_DIGEST_CARD)
                else inner.group(0)
            ),
            run,
        )
    return _PLAIN_RUN.sub(lambda inner: mask_digits(inner.group(0)), run)


def _in_uuid(match: re.Match[str]) -> bool:
    """Whether `match` lies inside a UUID written in its canonical 8-4-4-4-12 form.

    The scan for the run of UUID characters around the match stops one character past a
    UUID's length: unbounded, every hyphenated match in a long run of hex and hyphens
    rescanned the whole run, quadratic in a relay answer (review 10)."""
    text, start, end = match.string, match.start(), match.end()
    if end - start > _UUID_LENGTH:
        return False
    floor = max(0, end - _UUID_LENGTH - 1)
    while start > floor and text[start - 1] in _UUID_CHARS:
        start -= 1
    ceiling = min(len(text), start + _UUID_LENGTH + 1)
    while end < ceiling and text[end] in _UUID_CHARS:
        end += 1
    # A span longer than a UUID (the scan stopped at a bound) never fullmatches one.
    return _UUID.fullmatch(text, start, end) is not None


def _mask_grouped(match: re.Match[str], strict: bool) -> str:
    run = match.group(0)
    digits = _NOT_DIGIT.sub("", run)
    if len(digits) < MIN_DIGITS:
        return run
    if not strict and match.group("sep") == "." and _IPV4.fullmatch(run):
        return run  # an IPv4 address, not a card split in four
    # Hex groups of a UUID are noise (a 12-digit last group is still a run, masked).
    if not strict and match.group("sep") == "-" and _in_uuid(match):
        return run
    # The separators stay where they were, so the shape (and a JSON text) is kept.
    # Only ASCII digits were counted: "²" is `isdigit()` but a separator here.
    masked = iter(mask_digits(digits))
    return "".join(next(masked) if char in _ASCII_DIGITS else char for char in run)


def _card_windows(groups: list[str]) -> list[tuple[int, int]]:
    """The runs of whole `groups` (from, to) holding a Luhn-valid 12 to 19 digits, left
    to right and never overlapping: from each first group, the shortest such run not
    starting with a 0; the search resumes after each window found (restarting from the
    first group made a text of many windows quadratic), so a window never holds a group
    already masked. Each run is checked in O(1) on the prefix sums (`_luhn_sums`), and
    only the runs of 12 to 19 digits are looked at (`reach` only moves forward): at
    most eight per group (review 28)."""
    digits = "".join(groups)
    sums = _luhn_sums(digits)
    # bounds[k]: where group k starts in `digits`; bounds[k + 1]: where it ends.
    bounds = list(accumulate(map(len, groups), initial=0))
    count = len(groups)
    windows: list[tuple[int, int]] = []
    reach = 0  # the first group end at least MIN_DIGITS past `start`: grows with it
    first = 0
    while first < count:
        start = bounds[first]
        while reach <= count and bounds[reach] - start < MIN_DIGITS:
            reach += 1
        found = None
        if digits[start : start + 1] != "0":
            for last in range(reach, count + 1):
                end = bounds[last]
                if end - start > MAX_DIGITS:
                    break
                row = sums[end & 1]
                if row[end] == row[start]:
                    found = last
                    break
        if found is None:
            first += 1
        else:
            windows.append((first, found))
            first = found
    return windows


def _blank(match: re.Match[str]) -> str:
    return "#" * len(match.group(0))


def _mask_chains(text: str, strict: bool) -> str:
    """`text` with the Luhn-valid windows of loosely joined digit groups masked."""
    if not any(
        len(_NOT_DIGIT.sub("", chain.group(0))) >= MIN_DIGITS for chain in _CHAIN.finditer(text)
    ):
        return text  # the common case: no chain long enough, no need to look closer
    # Outside the strict check, ISO dates and UUIDs break chains (see the module text).
    probe = text
    if not strict:
        probe = _UUID.sub(_blank, _ISO_DATE.sub(_blank, text))
    out = list(text)
    for chain in _CHAIN.finditer(probe):
        # The chain's text taken once: `group(0)` copies it, and once per group was
        # quadratic in a long chain (review 28).
        found = list(_GROUP.finditer(chain.group(0)))
        groups = [group.group(0) for group in found]
        if sum(map(len, groups)) < MIN_DIGITS:
            continue
        spans = [group.span() for group in found]
        for first, last in _card_windows(groups):
            # Masked from the original groups, whose lengths are their spans'.
            positions = [
                chain.start() + position
                for start, end in spans[first:last]
                for position in range(start, end)
            ]
            masked = mask_digits("".join(groups[first:last]))
            for position, char in zip(positions, masked, strict=True):
                out[position] = char
    return "".join(out)


def _ascii_digits(text: str) -> str:
    """`text` with every decimal digit as its ASCII digit (same length, same places)."""
    return text if text.isascii() else text.translate(_TO_ASCII)


def _mask_text(text: str, strict: bool) -> str:
    if len(text) < MIN_DIGITS:
        # Every rule masks only what holds at least 12 digits: a shorter text (an HTTP
        # method, a log level, most event names) is never changed.
        return text
    probe = _ascii_digits(text)
    if sum(map(probe.count, _ASCII_DIGITS)) < MIN_DIGITS:
        return text
    masked = _mask_chains(
        _GROUPED.sub(
            lambda m: _mask_grouped(m, strict),
            _DIGIT_RUN.sub(lambda m: _mask_run(m, strict), probe),
        ),
        strict,
    )
    if probe is text:
        return masked
    # Every rule keeps lengths: put back what was not masked in its own script.
    return "".join(o if m == p else m for o, p, m in zip(text, probe, masked, strict=True))


def mask_pan_like(text: str) -> str:
    """Return `text` with every PAN-like digit sequence masked (see the module text)."""
    return _mask_text(text, strict=False)


def holds_pan_like(text: str) -> bool:
    """Whether `text` holds anything `mask_pan_like` would mask, or a card inside a
    digest-sized hex word or in an IPv4-like dotted quad: for what a caller sends, which
    gets no exemption."""
    try:
        return _mask_text(text, strict=True) != text
    except Exception:  # noqa: BLE001 - a detector bug refuses the input (fail closed)
        # A StopIteration here once hung the request in its worker thread: refusing what
        # cannot be checked is safe, letting it through is not.
        return True


# Unicode letters (word characters that are neither digits nor "_"): what breaks a
# digit chain for `metadata_holds_pan_like`.
_LETTERS: Final = re.compile(r"[^\W\d_]+")


# Letters that print as blank space (the Hangul fillers, category Lo): between digits
# they are a space to whoever reads the text, not a letter (atk49l: ``41111111ㅤ11111111``
# was stored in clear).
_BLANK_LETTERS: Final = dict.fromkeys(map(ord, "\u115f\u1160\u3164\uffa0"), " ")


def metadata_holds_pan_like(text: str) -> bool:
    """`holds_pan_like`, and more aggressive, for metadata (stored in clear and answered
    to every reader of the token): the digits of `text` are read together wherever only
    non-letters stand between them (``4111 1111.1111-1111``, ``41111111,11111111``, a
    JSON list's text of quoted and bare pieces), and any Luhn-valid window of 12 to 19
    of them refuses the text. Some innocent values are refused too (about one in ten
    12-digit chains, such as a date and time written with spaces); that is the price of
    not storing a card in clear, and the caller gets a 422 saying why.

    Digits are read in every form a reader reads as digits (atk49l): any script's, the
    compatibility digits (superscripts, subscripts, circled and dingbat digits, which
    are word characters that are not `\\d` and counted as letters: ``⁴¹¹¹¹¹¹¹¹¹¹¹¹¹¹¹``
    was stored in clear), and the text as NFKC spells it (``⑪`` is ``11``); a letter
    that prints blank (a Hangul filler) is no letter between digits."""
    if holds_pan_like(text):
        return True
    if text.isascii():
        return _chain_holds(text)
    for form in {text, unicodedata.normalize("NFKC", text)}:
        probe = form.translate(_TO_ASCII_COMPAT)
        if holds_pan_like(probe) or _chain_holds(probe.translate(_BLANK_LETTERS)):
            return True
    return False


def _chain_holds(probe: str) -> bool:
    """Whether a chain of ASCII digits of `probe` with no letter in it holds a Luhn-valid
    12 to 19 digit window."""
    if sum(map(probe.count, _ASCII_DIGITS)) < MIN_DIGITS:
        return False
    for chain in _LETTERS.split(probe):
        digits = _NOT_DIGIT.sub("", chain)
        if len(digits) >= MIN_DIGITS and _luhn_window(digits):
            return True
    return False


# What stands for a text the detector failed on: neither the clear text nor an error.
WITHHELD: Final = "[withheld: PAN masking failed on this text]"


def mask_pan_like_or_withhold(text: str) -> str:
    """`mask_pan_like`, or `WITHHELD` if the detector fails: for text the vault did not
    choose (error details, log lines), where an exception would be a 500 or a lost log
    line, and returning the text unmasked could show a card."""
    try:
        return mask_pan_like(text)
    except Exception:  # noqa: BLE001 - the placeholder shows the failure, never the text
        return WITHHELD


def mask_pan_values_or_withhold(value: Any) -> Any:
    """`mask_pan_values`, or `WITHHELD` for the whole value if the detector fails."""
    try:
        return mask_pan_values(value)
    except Exception:  # noqa: BLE001 - the placeholder shows the failure, never the value
        return WITHHELD


_NAME_SEPARATORS: Final = re.compile(r"[^0-9A-Za-z]")


def name_holds_pan_like(name: str) -> bool:
    """`holds_pan_like` for a name a caller chooses (a format, a route, a request id, an
    idempotency key), also with its separators taken out: text keeps ``41111111.11111111``
    (a float's benefit of the doubt), a name gets none."""
    return holds_pan_like(name) or holds_pan_like(_NAME_SEPARATORS.sub("", name))


def _piece(value: object) -> str | None:
    """The ASCII digits of a list item that may be a piece of a card number (fewer
    digits than a card), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value <= _MAX_LOOSE_PIECE_INT:
        return str(value)
    if isinstance(value, str) and 1 <= len(value) <= _MAX_LOOSE_PIECE:
        digits = _ascii_digits(value)
        return digits if digits.isascii() and digits.isdigit() else None
    return None


def _mask_pieces(out: list[Any], start: int, pieces: list[str]) -> None:
    """Mask, in `out` from `start`, the consecutive list items whose digits are `pieces`."""
    if len("".join(pieces)) < MIN_DIGITS:
        return
    if all(len(piece) <= _MAX_PIECE for piece in pieces):
        windows = [(0, len(pieces))]  # short pieces: masked together, no Luhn rule
    else:
        windows = _card_windows(pieces)
    for first, last in windows:
        masked = mask_digits("".join(pieces[first:last]))
        offset = 0
        for index in range(first, last):
            out[start + index] = masked[offset : offset + len(pieces[index])]
            offset += len(pieces[index])


def _mask_list(items: list[Any]) -> list[Any]:
    out = [mask_pan_values(item) for item in items]
    start = 0
    while start < len(items):
        if _piece(items[start]) is None:
            start += 1
            continue
        end = start
        pieces: list[str] = []
        while end < len(items) and (piece := _piece(items[end])) is not None:
            pieces.append(piece)
            end += 1
        _mask_pieces(out, start, pieces)
        start = end
    return out


def _mask_number(value: int | float) -> int | float | str:
    if isinstance(value, float):
        if not (math.isfinite(value) and abs(value) >= 10 ** (MIN_DIGITS - 1)):
            return value
        return mask_digits(str(int(abs(value))))
    digits = _int_digits(value)
    return mask_digits(digits) if len(digits) >= MIN_DIGITS else value


def _int_digits(value: int) -> str:
    """The decimal digits of `value`; asterisks for one longer than Python will print
    (its 4,300-digit limit raises ValueError): no card, and nothing to show."""
    try:
        return str(abs(value))
    except ValueError:
        return "*" * (MAX_DIGITS + 1)


class OwnDigest(str):
    """A lowercase hex digest Cofre computed itself (a policy file's SHA-256), left whole
    by `mask_pan_values`: about one SHA-256 in fifty holds a Luhn-valid 13 to 19 digit
    run by chance, and masking it broke the link from the log line to the file (the
    `starting` line's ``policy_sha256``). A digest's length and a letter are required,
    so no card number fits; never wrap input in it."""

    __slots__ = ()

    def __new__(cls, value: str) -> OwnDigest:
        if len(value) not in _DIGEST_LENGTHS or not _OWN_DIGEST.fullmatch(value):
            raise TypeError("an OwnDigest is a lowercase hex digest with a letter in it")
        return super().__new__(cls, value)


_OWN_DIGEST: Final = re.compile(r"(?=[0-9a-f]*[a-f])[0-9a-f]+")


def mask_pan_values(value: Any) -> Any:
    """Return a copy of the JSON-like `value` (dicts, lists, strings, numbers) with every
    PAN-like value masked (see the module text). Masked numbers become strings; an
    `OwnDigest` is left whole."""
    if isinstance(value, str):
        return value if type(value) is OwnDigest else mask_pan_like(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _mask_number(value)
    if isinstance(value, dict):
        return {
            mask_pan_like(_int_digits(k) if isinstance(k, int) else str(k)): mask_pan_values(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return _mask_list(list(value))
    return value
