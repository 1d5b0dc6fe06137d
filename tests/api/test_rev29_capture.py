"""Review 29: the oracle guard seen from the capture listener, where the caller is any
shopper of the shop's checkout (no certificate: a session the shop's backend opened for
the page, docs/capture.md).

A test named ``test_finding_...`` FAILED on the reviewed main (its docstring: severity,
what the attacker gained, the fix); the other pins a property that held."""

from __future__ import annotations

import httpx

from tests.api.conftest import VaultServer
from vault.pan import luhn_valid

LIMIT = 10  # the dev policy's payments: oracle_guard.max_pans_per_bucket


def _cards(bin6: str, last4: str, n: int) -> list[str]:
    """`n` different Luhn-valid 16-digit cards of one oracle bucket (BIN and last four):
    what a guesser, or an attacker filling the bucket, sends."""
    cards = (f"{bin6}{middle:06d}{last4}" for middle in range(10**6))
    return [card for card, _ in zip((c for c in cards if luhn_valid(c)), range(n), strict=False)]


def _shop_tokenizes(vault: VaultServer, number: str) -> httpx.Response:
    with vault.client("payments") as shop:
        return shop.post("/v1/tokenize", json={"pan": number, "format": "pan_bin6_last4"})


def test_finding_shoppers_cannot_fill_the_shops_own_oracle_guard(
    capture_vault: VaultServer,
) -> None:
    """Medium (fixed). A capture tokenizes under the session creator's identity, and the
    oracle guard counted its card with that identity's own calls: 10 different cards of
    one BIN and last four a day, whoever sent them. So anyone who can load the shop's
    checkout page 11 times (no certificate, a few seconds, under the listener's
    per-address limit) and knows a customer's BIN and last four (printed on every
    receipt) could capture ten made-up Luhn-valid cards of that bucket, and the shop's
    backend was then refused ``429 oracle_suspected`` for every card of the bucket it
    had not seen within the window: the customer's card could not be tokenized, or
    charged through the relay, for one to two days. Now captures are counted in a
    bucket of their own (`vault.operations._items.shoppers_bucket`): shoppers can fill
    only the captures' count, and the backend's calls keep theirs."""
    cards = _cards("510510", "5100", LIMIT + 2)
    for card in cards[:LIMIT]:
        captured = capture_vault.shopper_captures({"number": card})
        assert captured.status_code == 200, captured.text
    # Captures of the bucket are now refused: that count is the shoppers' (see the docs).
    refused = capture_vault.shopper_captures({"number": cards[LIMIT]})
    assert (refused.status_code, refused.json()["code"]) == (429, "oracle_suspected")
    # The shop's backend still tokenizes a new card of the bucket (the customer's).
    answer = _shop_tokenizes(capture_vault, cards[LIMIT + 1])
    assert answer.status_code == 200, answer.text


def test_the_shops_own_calls_still_meet_the_guard_apart_from_captures(
    capture_vault: VaultServer,
) -> None:
    """The backend's own count is unchanged (a stolen certificate still guesses at most
    `LIMIT` cards of a bucket by tokenizing), and captures of a bucket count apart from
    it: the backend filling its count does not refuse a shopper's capture (on the
    reviewed main the capture was refused: one count)."""
    cards = _cards("400000", "0002", LIMIT + 2)
    for card in cards[:LIMIT]:
        assert _shop_tokenizes(capture_vault, card).status_code == 200
    refused = _shop_tokenizes(capture_vault, cards[LIMIT])
    assert (refused.status_code, refused.json()["code"]) == (429, "oracle_suspected")
    captured = capture_vault.shopper_captures({"number": cards[LIMIT + 1]})
    assert captured.status_code == 200, captured.text
