"""Review 29b: the bound review 29 gave a stolen certificate of the shop's backend
(docs/threat-model.md: an identity that may capture has two counts of a bucket, its own
calls' and its captures', so at most twice `max_pans_per_bucket` guesses of a bucket a
window). Pinned here from the attacker's side: with both counts full, no route, format
or session of that certificate gets a further guess of the bucket answered."""

from __future__ import annotations

import httpx

from tests.api.conftest import VaultServer
from tests.api.test_rev29_capture import LIMIT, _cards


def _capture(vault: VaultServer, number: str, token_format: str) -> httpx.Response:
    """The stolen certificate opens a session and posts the card as a browser would
    (the `Origin` header is a browser's promise, not a client's)."""
    return vault.shopper_captures({"number": number}, token_format)


def _refused(answer: httpx.Response) -> bool:
    return (answer.status_code, answer.json().get("code")) == (429, "oracle_suspected")


def test_a_stolen_backend_certificate_tests_at_most_twice_the_limit_of_a_bucket(
    capture_vault: VaultServer,
) -> None:
    guesses = _cards("545454", "5454", 2 * LIMIT + 4)
    mine, captured, extra = guesses[:LIMIT], guesses[LIMIT : 2 * LIMIT], guesses[2 * LIMIT :]
    with capture_vault.client("payments") as shop:
        for card in mine:
            assert (
                shop.post(
                    "/v1/tokenize", json={"pan": card, "format": "pan_bin6_last4"}
                ).status_code
                == 200
            )
        # Its own count is full: another format or a lookup is the same bucket.
        for body, path in (
            ({"pan": extra[0], "format": "pan_fpe"}, "/v1/tokenize"),
            ({"pan": extra[0], "format": "pan_bin8_last4"}, "/v1/tokenize"),
            ({"pan": extra[0]}, "/v1/lookup"),
        ):
            answer = shop.post(path, json=body)
            assert _refused(answer), (path, body, answer.text)
    # The captures' count: LIMIT more, through sessions it opens itself.
    for card in captured:
        assert _capture(capture_vault, card, "pan_bin6_last4").status_code == 200
    # Then no session, whatever its format, gets another guess of the bucket answered.
    formats = ("pan_bin6_last4", "pan_bin8_last4", "pan_fpe")
    for card, token_format in zip(extra[1:], formats, strict=True):
        answer = _capture(capture_vault, card, token_format)
        assert _refused(answer), (token_format, answer.text)
