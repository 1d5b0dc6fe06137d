"""atk47: the oracle guard's captures' count, once full, is a membership oracle for the
cards real shoppers captured in the window.

`vault.limits.RateLimits.watch` refuses a call when ``seen | new`` would pass
`max_pans_per_bucket`; a card already in ``seen`` is "no new guess" and is answered.
For the shop's own count that reasoning holds (the backend sent those cards itself).
For the captures' count (`shoppers_bucket`, review 29) ``seen`` holds the cards of
*every* shopper of the shop, not the caller's: whoever captures a bucket's cards (a
stolen certificate of the shop's backend opening sessions, docs/threat-model.md rows
135/141; or any visitor of the checkout, each page load a session) fills the count with
made-up Luhn-valid cards, then each further capture of the bucket is answered 200 (a
token) for a card some shopper captured in the window and 429 oracle_suspected for any
other. Refusals store nothing and spend no session use, so guesses are bounded only by
rate limits, not by "twice max_pans_per_bucket a window" (docs/threat-model.md,
"The tokenize oracle is narrowed"): the attacker learns the shopper's full card number
from its BIN and last four (which a pan_bin6_last4 token or receipt shows) among
~10^5 candidates.

Both tests failed before the fix (the real card answered 200, the 29 guesses 429); the
guard now counts each card sent as new, so a full bucket refuses every card
(`vault.limits.RateLimits.watch`).
"""

from __future__ import annotations

import httpx

from tests.api.conftest import VaultServer
from tests.api.test_rev29_capture import LIMIT, _cards


def _outcome(answer: httpx.Response) -> tuple[int, str | None]:
    body = answer.json()
    return answer.status_code, body.get("code")


def test_a_full_captures_count_does_not_tell_a_shoppers_card_from_a_guess(
    capture_vault: VaultServer,
) -> None:
    candidates = _cards("532610", "4242", LIMIT + 30)
    shoppers_card = candidates[LIMIT + 17]  # unknown to the attacker: one of the guesses
    # A real shopper pays at the shop through the hosted fields.
    paid = capture_vault.shopper_captures({"number": shoppers_card})
    assert paid.status_code == 200, paid.text
    # The attacker fills the captures' count of that BIN and last four with made-up cards.
    fill = [card for card in candidates[:LIMIT] if card != shoppers_card][: LIMIT - 1]
    for card in fill:
        assert capture_vault.shopper_captures({"number": card}).status_code == 200
    # Then guesses: more than twice the limit, every one answered by whether a shopper
    # captured it in the window.
    guesses = candidates[LIMIT:]
    answers = {card: _outcome(capture_vault.shopper_captures({"number": card})) for card in guesses}
    found = [card for card, outcome in answers.items() if outcome[0] == 200]
    # The guard's promise: no answer past a full count depends on what the vault holds.
    # Every guess of the full bucket must be answered alike, the shopper's card included.
    assert len(set(answers.values())) == 1, (
        f"the shopper's card was told apart from {len(guesses) - 1} guesses: "
        f"{found == [shoppers_card]}"
    )


def test_a_full_own_count_does_not_tell_the_shops_card_from_a_guess(
    capture_vault: VaultServer,
) -> None:
    """The same root cause on the backend's own count: a stolen certificate that may
    tokenize fills it, then tells the cards the backend tokenized in the window (real
    customers' cards, which the attacker never sent) from its guesses."""
    candidates = _cards("601100", "0009", LIMIT + 30)
    customers_card = candidates[LIMIT + 11]
    with capture_vault.client("payments") as shop:

        def tokenize(card: str) -> httpx.Response:
            return shop.post("/v1/tokenize", json={"pan": card, "format": "pan_bin6_last4"})

        assert tokenize(customers_card).status_code == 200  # the shop's real business
        fill = [card for card in candidates[:LIMIT] if card != customers_card][: LIMIT - 1]
        for card in fill:
            assert tokenize(card).status_code == 200  # the attacker, same certificate
        answers = {card: _outcome(tokenize(card)) for card in candidates[LIMIT:]}
    found = [card for card, outcome in answers.items() if outcome[0] == 200]
    assert len(set(answers.values())) == 1, (
        f"the customer's card was told apart from {len(answers) - 1} guesses: "
        f"{found == [customers_card]}"
    )
