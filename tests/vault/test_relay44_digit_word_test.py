"""Session 44: the answer scan's test for a digit word (`vault._relay_words`) reads runs
of letters instead of searching every word with its edges (~17 -> ~2.4 us a text, 16%
of the scan's CPU). It must say exactly what the search said: a text it calls free of
digit words is not read for them, so a miss is a card or a code echoed in words that
reaches the caller. Checked against the search it replaced, on texts built from digit
words of every language, their compounds, letters IGNORECASE folds onto theirs (a long
s, a dotless i, the Kelvin sign), accented and other scripts' letters, digits and
separators."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.genuine_answers import genuine_answers
from vault import _relay_words as words

# The search the test replaced, as session 41 wrote it.
_SEARCH = re.compile(
    rf"{words._BEFORE}(?:{words._alternatives(words._IN_RUNS)}){words._AFTER}", re.IGNORECASE
)
_LETTERS = "abcdefghijklmnopqrstuvwxyz\u00e0\u00e9\u00fc\u0131\u017f\u212a\u03bc"
_PIECES = st.one_of(
    st.sampled_from(sorted(words._IN_RUNS)),
    st.sampled_from(sorted(words._IN_RUNS)).map(str.upper),
    st.sampled_from(["\u017fix", "s\u0131x", "\u212aeins", "f\u00fcnf", "zw\u00f6", "\u00e9"]),
    st.text(
        alphabet="abcdefghijklmnopqrstuvwxyz\u00e0\u00e9\u00fc\u0131\u017f\u212a\u03bc", max_size=4
    ),
    st.text(alphabet="0123456789 -_.,;/\t\n'\"", max_size=3),
    st.text(max_size=3),
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_PIECES, max_size=8).map("".join))
def test_the_test_says_what_the_search_said(text: str) -> None:
    assert words._holds_digit_word(text) == (_SEARCH.search(text) is not None)


def test_the_same_on_the_genuine_answers() -> None:
    texts: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                texts.append(key)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            texts.append(node)

    for _, _sale, answer in genuine_answers():
        walk(answer)
    held = [text for text in texts if _SEARCH.search(text) is not None]
    assert held, "the corpus holds digit words"
    assert [t for t in texts if words._holds_digit_word(t)] == held
