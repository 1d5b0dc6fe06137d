"""rev49e: the caller's expiry guesses written as a month and a year apart, in objects
of their own (``{"month": "11", "year": "31"}``), still tell which one is the card's.

The answer withholds both members of any object that holds the month and the year of
the expiry the vault sent apart (`vault.relay.withhold_month_year`, review 31), but
only for the card's own month and year: the caller's guesses (review 36,
`caller_guesses`) are runs of three digits or more and expiry layouts, and a month
and a two-digit year are neither. So the holder of the adapter's certificate writes
the 72 months of six years, one object each, into a field the acquirer echoes, in the
one relay that sends the expiry: the one object withheld is the card's expiry.

What should hold: the answer is the same whatever the card's expiry is.

Run against the real HTTPS fake acquirer, the real SoftHSM token and SQLite.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.test_atk49b_encoded_guesses import _echo, _field
from tests.vault.test_relay_card import GETNET, _body, _card, relay
from vault.service import VaultService

__all__ = ["relay"]  # the fixture, imported for the tests here

pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True),
]

PAIRS = [(f"{month:02d}", f"{year}") for year in range(30, 36) for month in range(1, 13)]


def _answer(service: VaultService, expiry: str) -> dict[str, Any]:
    token = _card(service, code="739", expiry=expiry)
    refs = {_field(i): {"month": m, "year": y} for i, (m, y) in enumerate(PAIRS)}
    answer = service.relay(GETNET, "getnet-authorize", {**_body(token), "refs": refs})
    assert isinstance(answer.body, dict)
    return dict(answer.body["refs"])


def test_month_year_guesses_do_not_tell_the_cards_expiry(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    acquirer.answer = _echo
    first, second = _answer(relay, "11/31"), _answer(relay, "04/34")
    told = [f"{m}/{y}" for i, (m, y) in enumerate(PAIRS) if first[_field(i)] != second[_field(i)]]
    assert told == [], f"the answers differ only at {told}: the card's expiry is among them"
