"""The card's expiry sent as a month and a year apart, in an upstream's answer: both
members of an object that holds them withheld (review 31), and the caller's own pairs
with them (rev49e). Moved out of `vault.relay` (its size).

IN PCI SCOPE: the pairs looked for are a card's expiry.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Final

# What stands where the vault withheld a card detail it sent from the answer (also
# `vault.relay.WITHHELD_DETAIL`).
WITHHELD_DETAIL: Final = "[withheld]"


def withhold_month_year(
    value: Any,
    pairs: Sequence[tuple[str, Sequence[str]]],
    guesses: Collection[tuple[int, int]] = (),
) -> Any:
    """`value` (an upstream's answer) with both members of any object that holds the
    month and the year of an expiry the vault sent apart (`pairs`: the month "MM" and
    the year as "YY" and "YYYY", strings or numbers, leading zeros optional) replaced by
    `WITHHELD_DETAIL`. Alone, two digits are too common to withhold (`withhold_sent`);
    together in one object they are the card's expiry echoed, as an acquirer that
    echoes the request's card object does, and the caller may be outside PCI scope,
    where a card number joined to its expiry must not arrive (review 31, R31-1).
    `guesses` (the caller's own (month, year) pairs, `CallerGuesses.month_years`) are
    withheld alike when an expiry was sent apart (rev49e: else the one object withheld
    was the card's)."""
    if not pairs:
        return value
    wanted = {(int(month), int(year)) for month, years in pairs for year in years}
    wanted.update(guesses)

    def walk(node: Any) -> Any:
        # Recursion is bounded: `send` refuses an answer deeper than MAX_DEPTH.
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items()}
        keys: dict[int, list[Any]] = {}
        for k, v in out.items():
            if (number := _small_number(v)) is not None:
                keys.setdefault(number, []).append(k)
        withheld: set[Any] = set()
        for month in [n for n in keys if 1 <= n <= 12]:  # twelve at most: linear
            for year, found in keys.items():
                if (month, year) in wanted and (year != month or len(found) > 1):
                    withheld.update(keys[month], found)
        for k in withheld:
            out[k] = WITHHELD_DETAIL
        return out

    return walk(value)


def caller_month_years(body: Any) -> frozenset[tuple[int, int]]:
    """Each (month, year) that two members of one object of `body` hold, as
    `withhold_month_year` reads them (a month 1 to 12, a year of an expiry, 20 to 99 or
    2020 to 2099: both forms), at any depth. Rev49e: an expiry sent apart was withheld
    only where the answer held the card's month and year, so the caller's 72 objects of
    a month and a year, echoed, came back the same but the card's."""
    pairs: set[tuple[int, int]] = set()
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        values = {n for v in node.values() if (n := _small_number(v)) is not None}
        # A month (1 to 12) and a year (20 on) are never one member; each distinct
        # value once (a hostile object of 10,000 members costs 12 passes of them).
        years = {short for n in values if (short := _short_year(n)) is not None}
        for month in (n for n in values if 1 <= n <= 12):
            pairs.update(p for y in years for p in ((month, y), (month, 2000 + y)))
    return frozenset(pairs)


def _short_year(year: int) -> int | None:
    """`year` as the two digits of a card's expiry year, else None."""
    if 20 <= year <= 99:
        return year
    if 2020 <= year <= 2099:
        return year - 2000
    return None


def _small_number(member: Any) -> int | None:
    """`member` as `withhold_month_year` compares it (a string or number of at most four
    ASCII digits), else None."""
    if isinstance(member, bool) or not isinstance(member, int | str):
        return None
    text = str(member).strip()
    if text.isascii() and text.isdigit() and len(text) <= 4:
        return int(text)
    return None
