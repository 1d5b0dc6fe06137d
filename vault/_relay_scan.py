"""The relay's answer scan in one place: what an upstream's answer goes through before
it reaches the caller, who may be outside PCI scope (moved out of
`vault.operations.relay`, session 41, so that a genuine answer can be run through the
very steps a relay runs, and its false positives measured).

IN PCI SCOPE: `Sent` holds the card numbers and details a relay sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vault._relay_details import CallerGuesses
from vault._relay_month_year import withhold_month_year
from vault.relay import (
    mask_strings,
    withhold_echoed_pans,
    withhold_encoded_pans,
    withhold_sent,
    withhold_split_pans,
)


@dataclass(frozen=True)
class Sent:
    """What a relay call sent upstream that its answer must not give back: the card
    details sent beside a PAN (`withhold_sent`) and the PANs (`withhold_split_pans`,
    `withhold_echoed_pans`)."""

    details: list[str]
    pans: list[str]
    # An expiry sent as month and year apart: ("MM", ("YY", "YYYY")), each sent card's.
    month_years: list[tuple[str, tuple[str, str]]]
    # The caller's own texts that may guess a detail (`caller_guesses`), withheld alike.
    guesses: CallerGuesses | None


def scanned_answer(body: Any, sent: Sent) -> Any:
    """`body` (an upstream's answer, parsed; its `response_tokenize` cards already taken
    out) as the caller may see it: a PAN of `sent` read once decoded withheld
    (`withhold_encoded_pans`, before the masking, which stars the digit runs of a hex
    dump: review 37), every PAN-like value masked, a sent PAN split over an object's
    values (`withhold_split_pans`) or echoed in a shape the detector does not know
    (`withhold_echoed_pans`) withheld, then the card details sent (`withhold_sent`,
    after the masking: a code withheld first could split a spaced PAN the masking then
    misses) and a month and year sent apart (`withhold_month_year`)."""
    body = withhold_encoded_pans(body, sent.pans, sent.details, sent.guesses)
    masked = withhold_split_pans(mask_strings(body), sent.pans)
    # An echo of a sent number in a shape the detector does not know (review 29b).
    masked = withhold_echoed_pans(masked, sent.pans, decoded=False)  # read above
    masked = withhold_sent(masked, sent.details, sent.guesses)
    guessed = sent.guesses.month_years if sent.guesses is not None else ()
    return withhold_month_year(masked, sent.month_years, guessed)
