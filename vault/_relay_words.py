"""Numbers written in words, read as their digits: what `vault._relay_echo` reads a text
of a relay's answer as beside its escapes undone (session 40: English and Portuguese
digit words; session 41: Spanish, French and German, ``double``/``triple``, English
numbers of two digits, and a run of digit words joined into one number).

IN PCI SCOPE: the texts read here are an acquirer's answer to a body holding a card;
they are read in memory to be compared with the cards and details sent, never logged.

A digit word in English or Portuguese (``four``, ``quatro``) is read as its digit
wherever it stands (session 40). Spanish, French and German digit words are read only
in a run of two or more digit words: alone, several are everyday words of other
languages (Portuguese ``dos``, English ``Sept``, ``null``), and a card or a code echoed
in words is a run. In a run (digit words of any of these languages, with white space,
hyphens, commas, semicolons or dots between them, and ``double``/``triple`` before a
word, and English teens and tens: ``forty-one eleven``, a card read aloud in pairs),
the words become one run of digits: ``seven three nine`` is ``739``, which
`withhold_sent` finds as the code sent (session 41: read word by word, it was ``7 3 9``,
no code); for a card, the digits are the same either way.

One pass over the text, in C (a regular expression), and what it gives is at most as
long as the text: its cost is that of the escapes undone beside it.
"""

from __future__ import annotations

import re
from typing import Final

# Digit words, zero to nine, by language.
_ENGLISH: Final = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_PORTUGUESE: Final = [
    "zero",
    "um",
    "dois",
    "três",
    "quatro",
    "cinco",
    "seis",
    "sete",
    "oito",
    "nove",
]
_SPANISH: Final = [
    "cero",
    "uno",
    "dos",
    "tres",
    "cuatro",
    "cinco",
    "seis",
    "siete",
    "ocho",
    "nueve",
]
_FRENCH: Final = ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"]
_GERMAN: Final = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"]

# English numbers of two digits, as a card or a code is read aloud in pairs ("forty-one
# eleven"): read only in a run, as two digits each (compounds with a hyphen or a space).
_TEENS: Final = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS: Final = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ENGLISH_PAIRS: Final = {
    **{word: str(10 + at) for at, word in enumerate(_TEENS)},
    **{word: f"{2 + at}0" for at, word in enumerate(_TENS)},
    **{
        f"{word}{joint}{_ENGLISH[unit]}": f"{2 + at}{unit}"
        for at, word in enumerate(_TENS)
        for unit in range(1, 10)
        for joint in ("-", " ")
    },
}

# Read wherever they stand (session 40), and read only in a run (session 41).
_ALONE: Final = {
    **{word: str(digit) for digit, word in enumerate(_ENGLISH)},
    **{word: str(digit) for digit, word in enumerate(_PORTUGUESE)},
    "tres": "3",
    "uma": "1",
    "duas": "2",
}
_IN_RUNS: Final = {
    **_ALONE,
    **{
        word: str(digit)
        for language in (_SPANISH, _FRENCH, _GERMAN)
        for digit, word in enumerate(language)
    },
    "fuenf": "5",
    "funf": "5",
    "zwo": "2",
    "una": "1",
    **_ENGLISH_PAIRS,
}
# A word's edges: no letter (of any script) beside it.
_BEFORE: Final = r"(?<![^\W\d_])"
_AFTER: Final = r"(?![^\W\d_])"


def _alternatives(words: dict[str, str]) -> str:
    return "|".join(map(re.escape, sorted(words, key=len, reverse=True)))


_TIMES: Final = {"double": 2, "triple": 3}
# A tens word alone only where no unit follows it: "twenty-five" is one word of a run,
# never the two of a run ("twenty", "five"), so a lone compound is no run.
_UNITS: Final = "|".join(_ENGLISH[1:])
_ONE_WORD: Final = (
    _alternatives({word: digits for word, digits in _IN_RUNS.items() if word not in _TENS})
    + rf"|(?:{'|'.join(_TENS)})(?![ \t-]+(?:{_UNITS}){_AFTER})"
)
_ONE_IN_RUN: Final = rf"(?:(?:double|triple)[ \t-]+)?(?:{_ONE_WORD})"
_SEPARATOR: Final = r"[ \t\r\n,;.\-]{1,4}"
# A run of two or more digit words (any language), or one word after "double"/"triple".
_RUN_ONLY: Final = (
    rf"{_BEFORE}(?:{_ONE_IN_RUN}(?:{_SEPARATOR}{_ONE_IN_RUN})+|(?:double|triple)[ \t-]+"
    rf"(?:{_ONE_WORD})){_AFTER}"
)
_RUNS: Final = re.compile(_RUN_ONLY, re.IGNORECASE)
# ... or one English or Portuguese digit word alone.
_RUNS_OR_ALONE: Final = re.compile(
    rf"{_RUN_ONLY}|{_BEFORE}(?:{_alternatives(_ALONE)}){_AFTER}", re.IGNORECASE
)
_WORD_IN_RUN: Final = re.compile(
    rf"{_BEFORE}(?:(double|triple)[ \t-]+)?({_alternatives(_IN_RUNS)}){_AFTER}", re.IGNORECASE
)
# What a text holds when it may hold a digit word, a cheap test before the run scan: a
# run of letters (`_BEFORE`/`_AFTER`'s letters) that is a digit word, in the same engine
# and case rules (a long s or a dotless i reads as s or i to IGNORECASE). Every word's
# match is a whole run of letters, and a compound's (``forty-one``) begins with a tens
# word that is one: the test says what a search of every word with its edges said, which
# cost ~17 us a text against ~2.4 (session 44: 16% of the answer scan's CPU; a hostile
# 1 MB of two-letter words, 500 -> 250 ms). The runs are read one at a time: a list of
# them would hold a hostile text's 350,000 words at once.
_LETTER_RUN: Final = re.compile(r"[^\W\d_]+")
_SINGLE_WORDS: Final = {word: digits for word, digits in _IN_RUNS.items() if word.isalpha()}
_DIGIT_WORD: Final = re.compile(_alternatives(_SINGLE_WORDS), re.IGNORECASE)
_WORD_LENGTHS: Final = range(min(map(len, _SINGLE_WORDS)), max(map(len, _SINGLE_WORDS)) + 1)


def _holds_digit_word(text: str) -> bool:
    return any(
        run.end() - run.start() in _WORD_LENGTHS and _DIGIT_WORD.fullmatch(run.group())
        for run in _LETTER_RUN.finditer(text)
    )


def words_undone(text: str) -> str:
    """`text` with each run of digit words, and each English or Portuguese digit word
    alone, as its digits (module docstring), when it holds one: how the card is looked
    for."""
    if not _holds_digit_word(text):
        return text
    return _RUNS_OR_ALONE.sub(_run_digits, text)


def word_runs_undone(text: str) -> str:
    """`text` with each run of digit words as its digits, a digit word alone left as it
    is: how the code is looked for (`vault._relay_details.escapes_hold`). Session 41: a
    word alone read as its digit was the value of a code with two leading zeros, so
    ``six`` in a date or an address, or a key ``last_four``, was withheld whenever the
    code sent was ``006`` or ``004``; a code echoed in words is a run (``zero zero six``)."""
    if not _holds_digit_word(text):
        return text
    return _RUNS.sub(_run_digits, text)


def _run_digits(match: re.Match[str]) -> str:
    return "".join(
        _IN_RUNS[word.lower()] * _TIMES.get((times or "").lower(), 1)
        for times, word in _WORD_IN_RUN.findall(match.group(0))
    )
