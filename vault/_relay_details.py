"""The card details the relay sent (the security code, the cardholder's name, the
expiry) and the caller's guesses at them, as `vault.relay`'s withholding looks for
them: as written, with the answer's escapes undone, and in decoded words
(`vault._relay_echo`). Moved out of `vault.relay` (session 38) when the decoded words
were added, so that each reads in one sitting.

IN PCI SCOPE: the patterns are built from the code, name and expiry sent; they never
leave this process's memory.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from vault._relay_echo import escaped_forms

__all__ = [
    "DECODED_RUN",
    "DIGIT_RUN",
    "EXPIRY_LIKE",
    "CallerGuesses",
    "DecodedDetails",
    "Guesses",
    "Matcher",
    "ascii_digits",
    "decoded_details",
    "detail_pattern",
    "digit_values",
    "escapes_hold",
    "guesses_of",
    "run_key",
    "sent_patterns",
    "without_written",
]


class Matcher(Protocol):
    def sub(self, repl: str, string: str) -> str: ...
    def search(self, string: str) -> object: ...


# The texts of a caller's body that may be a guess at a detail the vault sends: a whole
# run of digits (a code; an expiry sent as MMYY), and an expiry in a layout of
# `_ECHOED_LAYOUTS` (`vault.operations.relay`).
DIGIT_RUN: Final = re.compile(r"(?<![0-9])[0-9]+(?![0-9])")
# Bounded as `detail_pattern` bounds a sent expiry, so that a guess is withheld exactly where the
# card's expiry would be.
EXPIRY_LIKE: Final = re.compile(
    r"(?<!\w)(?:[0-9]{2}/[0-9]{2}(?:[0-9]{2})?|[0-9]{4}-[0-9]{2})(?!\w)"
)


@dataclass(frozen=True)
class Guesses:
    """Matches what `pattern` finds whose `key` is one of `keys`, through `exact`, one
    regular expression of exactly those (`guesses_of`): one scan of a text, where a
    key per match took seconds for a hostile answer's million digit runs."""

    pattern: re.Pattern[str]
    keys: frozenset[str]
    key: Callable[[str], str]
    exact: re.Pattern[str]

    def sub(self, repl: str, string: str) -> str:
        return self.exact.sub(repl, string)

    def search(self, string: str) -> object:
        return self.exact.search(string)


def guesses_of(pattern: re.Pattern[str], keys: frozenset[str]) -> Guesses:
    """`Guesses` of `keys` found by `pattern`: `DIGIT_RUN` keyed by `run_key` (a run
    that is a key once its leading zeros are dropped), else `EXPIRY_LIKE` as written."""
    alternatives = "|".join(sorted(map(re.escape, keys - {""}), key=len, reverse=True))
    if pattern is DIGIT_RUN:
        digits = [f"0*(?:{alternatives})"] if keys - {""} else []
        body = "|".join([*digits, *(["0+"] if "" in keys else [])]) or "(?!)"
        exact = re.compile(rf"(?<![0-9])(?:{body})(?![0-9])")
        return Guesses(pattern, keys, run_key, exact)
    exact = re.compile(rf"(?<!\w)(?:{alternatives or '(?!)'})(?!\w)")
    return Guesses(pattern, keys, str, exact)


def run_key(run: str) -> str:
    return run.lstrip("0")


@dataclass(frozen=True)
class CallerGuesses:
    """A caller's texts that may guess a detail (`caller_guesses`): expiry layouts,
    then digit runs, in the order `withhold_sent` applies the details' own patterns."""

    layouts: Guesses
    runs: Guesses
    # Rev49e: a month and a year held by one object of the caller's (`month_year_pairs`),
    # withheld as `withhold_month_year` withholds the card's expiry sent apart.
    month_years: frozenset[tuple[int, int]] = frozenset()


def sent_patterns(sent: Sequence[str], guesses: CallerGuesses | None) -> list[Matcher]:
    """`withhold_sent`'s patterns, in the order it applies them (its docstring)."""
    texts = [text for text in sent if text]
    if not texts:
        return []
    layouts = [text for text in texts if EXPIRY_LIKE.fullmatch(text)]
    patterns: list[Matcher] = [detail_pattern(text) for text in layouts]
    if guesses is not None:
        patterns.append(guesses.layouts)
    patterns.extend(detail_pattern(text) for text in texts if text not in layouts)
    if guesses is not None:
        patterns.append(guesses.runs)
    return patterns


def without_written(item: str, patterns: Sequence[Matcher], withheld: str) -> str:
    """`item` with what `patterns` find in it as written replaced by `withheld`."""
    for pattern in patterns:
        item = pattern.sub(withheld, item)
    return item


def escapes_hold(item: str, patterns: Sequence[Matcher]) -> bool:
    """Whether `item` (its details as written withheld) holds one with its escapes
    undone, its digits read as ASCII or its compatibility characters as theirs (NFKC:
    session 41, a name echoed in fullwidth letters (U+FF21 on), as Japanese
    systems write text, came back)."""
    others = escaped_forms(item, lone_words=False)
    wide = [other for other in [item, *others] if not other.isascii()]
    others += [ascii_digits(other) for other in wide]
    others += [
        folded for other in wide if (folded := unicodedata.normalize("NFKC", other)) != other
    ]
    if not others:
        return False
    anyone = re.compile("|".join(map(_alternative, patterns)))  # one scan per form
    return any(anyone.search(other) for other in others)


def _alternative(pattern: Matcher) -> str:
    """`pattern` as one alternative of a regular expression that joins several."""
    if isinstance(pattern, Guesses):
        return f"(?:{pattern.exact.pattern})"
    assert isinstance(pattern, re.Pattern)  # noqa: S101 - `detail_pattern`'s, the rest
    flags = "(?i:" if pattern.flags & re.IGNORECASE else "(?:"
    return f"{flags}{pattern.pattern})"


# A run of digits in a decoded word: three or more (the shortest code; a code's leading
# zeros dropped left one or two, which random bytes hold every few hundred), neither
# beside a digit nor beside a byte past ASCII (an echo writes a code between quotes,
# spaces, colons or letters; decoded noise is half such bytes).
DECODED_RUN: Final = re.compile(r"(?<![0-9\x80-\xff])[0-9]{3,}(?![0-9\x80-\xff])")


# Every decimal digit past ASCII, to its ASCII digit (`ascii_digits`).
_DECIMALS: Final = {
    c: str(unicodedata.decimal(chr(c))) for c in range(0x80, 0x110000) if chr(c).isdecimal()
}
_LONG_RUN: Final = re.compile(r"[0-9]{3,}")
# What each run or layout `DecodedDetails` looks for holds.
_DIGITS_NEAR: Final = re.compile(r"[0-9]{2}[/-]?[0-9]")


@dataclass(frozen=True)
class DecodedDetails:
    """What `withhold_encoded_pans` looks for in a decoded word (`decoded_details`), in
    one scan of it: decoded words run to hundreds of KiB, and a scan per detail took
    seconds for a hostile answer."""

    pattern: re.Pattern[str]
    runs: frozenset[str]
    layouts: frozenset[str]
    quick: re.Pattern[str]  # what every match holds, found faster

    def search(self, string: str) -> bool:
        """Whether `string` holds a detail or a guess."""
        if self.quick.search(string) is None:
            return False  # no run of three digits, layout or name's word: most noise
        for match in self.pattern.finditer(string):
            layout, run = match.group("layout"), match.group("run")
            if layout is not None:
                # The layout took its digits from the run rule: "7391-12" holds a code.
                if layout in self.layouts or self.runs & {
                    run_key(digits) for digits in _LONG_RUN.findall(layout)
                }:
                    return True
            elif run is not None:
                if run_key(run) in self.runs:
                    return True
            else:
                return True  # a name
        return False


def decoded_details(sent: Sequence[str], guesses: CallerGuesses | None) -> DecodedDetails | None:
    """`withhold_sent`'s details and guesses as `withhold_encoded_pans` looks for them in
    a decoded word: a run of digits as `DECODED_RUN` reads it, an expiry layout, a name
    as `withhold_sent` reads it; None when nothing was sent."""
    texts = [text for text in sent if text]
    if not texts:
        return None
    runs = {run_key(text) for text in texts if text.isascii() and text.isdigit()}
    layouts = {text for text in texts if EXPIRY_LIKE.fullmatch(text)}
    names = [text for text in texts if text not in layouts and not text.isdigit()]
    if guesses is not None:
        runs |= guesses.runs.keys
        layouts |= guesses.layouts.keys
    parts = [f"(?P<layout>{EXPIRY_LIKE.pattern})", f"(?P<run>{DECODED_RUN.pattern})"]
    if names:
        parts.append("(?i:" + "|".join(detail_pattern(name).pattern for name in names) + ")")
    folded = [*names, *map(_ascii_folded, names)]
    words = {re.escape(word) for name in folded for word in name.replace("/", " ").split()}
    quick = re.compile("|".join([_DIGITS_NEAR.pattern, *sorted(words)]), re.IGNORECASE)
    pattern = re.compile("|".join(parts))
    return DecodedDetails(pattern, frozenset(runs), frozenset(layouts), quick)


@functools.cache
def digit_values() -> dict[int, str]:
    """Every character past ASCII with a digit value (`unicodedata.digit`: superscripts
    and circled digits too), to its ASCII digit; made once, on first use (a second)."""
    return {c: str(d) for c in range(0x80, 0x110000) if (d := unicodedata.digit(chr(c), -1)) >= 0}


def ascii_digits(text: str) -> str:
    """`text` with every Unicode decimal digit (fullwidth, Arabic-Indic, ...) as its ASCII
    digit; in C (a character at a time took seconds for a hostile answer)."""
    return text if text.isascii() else text.translate(_DECIMALS)


def detail_pattern(text: str) -> re.Pattern[str]:
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0")
        digits = rf"0*{re.escape(digits)}" if digits else "0+"
        return re.compile(rf"(?<![0-9]){digits}(?![0-9])")
    # Session 40: a name past ASCII is looked for transliterated too (``Joao`` for
    # ``João``: an acquirer's ASCII-only fields), as a magnetic stripe writes it.
    bodies = [_name_body(name) for name in dict.fromkeys((text, _ascii_folded(text)))]
    body = bodies[0] if len(bodies) == 1 else f"(?:{'|'.join(bodies)})"
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def _name_body(text: str) -> str:
    words = text.split()
    if len(words) < 2:
        return re.escape(text)
    # Any whitespace between the words, and the magnetic stripe's SURNAME/GIVEN.
    forward = r"\s+".join(map(re.escape, words))
    track = re.escape(words[-1]) + r"\s*/\s*" + r"\s+".join(map(re.escape, words[:-1]))
    return f"(?:{forward}|{track})"


def _ascii_folded(text: str) -> str:
    """`text` with its letters' accents dropped (NFKD, combining marks left out)."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))
