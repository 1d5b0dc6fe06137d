"""Review 28, the token-life and capture findings (moved out of test_rev28.py): a
batch's later item for the same card, and a shopper's capture of a card the shop
already holds as a token.

Each finding's test failed on the reviewed main and passes with its fix (fix28b): its
docstring keeps the severity, what the attacker gained and the fix; the others pin a
property that held when probed."""

from __future__ import annotations

from tests.api.conftest import VaultServer

MASTERCARD = "5555555555554444"
AMEX = "378282246310005"


# --- R28-2: a batch's later item for the same card gets the earlier item's short life ---


def test_a_batch_item_for_good_gets_a_token_for_good_after_an_earlier_expiring_item(
    vault_server: VaultServer,
) -> None:
    """R28-2, Low. 6e891dd made a convergent hit live at least as long as the call asks
    (a caller asking for a token for good was handed one about to expire, stored it and
    lost the card at the purge), but only for a hit on a *stored* token
    (`_answer_convergent` -> `_outlive`). Two items of one batch (or, the same path, two
    calls merged in one commit group) with the same card: the later item is answered
    by `_Answers.same` with the token the earlier item creates, whose ``expires_at`` is
    the earlier item's ``ttl_seconds``. A batch ``[card ttl 60, card for good]`` answers
    the second item a token that the purge shreds a minute later, which docs/api.md
    says cannot happen ("That token lives at least as long as the call asks"). No
    attacker gain beyond the domain's own callers; the harm is a lost card on file.
    Fixed: a new token lives as long as the longest life any item converging on it
    asks (None wins), a stored one too (`TokenizeOperations._lives`)."""
    with vault_server.client("payments") as client:
        answer = client.post(
            "/v1/tokenize/batch",
            json={
                "items": [
                    {"pan": MASTERCARD, "format": "pan_bin6_last4", "ttl_seconds": 60},
                    {"pan": MASTERCARD, "format": "pan_bin6_last4"},
                ]
            },
        )
        assert answer.status_code == 200, answer.text
        first, second = answer.json()["results"]
        assert first["token"] == second["token"]
        stored = client.get(f"/v1/tokens/{second['token']}").json()
    assert second["expires_at"] is None, second
    assert stored["expires_at"] is None, stored


def test_a_later_call_for_good_extends_a_stored_token(vault_server: VaultServer) -> None:
    """Holds (6e891dd): a single call for good on a card whose stored token expires is
    answered that token with no expiry."""
    with vault_server.client("payments") as client:
        first = client.post(
            "/v1/tokenize", json={"pan": AMEX, "format": "uuid", "ttl_seconds": 60}
        ).json()
        again = client.post("/v1/tokenize", json={"pan": AMEX, "format": "uuid"}).json()
    if first["token"] == again["token"]:  # uuid converges only where the space allows
        assert again["expires_at"] is None, again


# --- R28-3: a shopper's capture rewrites the shop's stored token (life and details) ----


def test_a_shoppers_capture_leaves_the_shops_expiring_token_to_expire(
    capture_vault: VaultServer,
) -> None:
    """R28-3a, Low. A capture asks no lifetime (a session has no ``ttl_seconds``), and
    6e891dd extends a convergent hit to what the call asks, ``None`` meaning for ever.
    So when the shop holds a card's token with a ``ttl_seconds`` (a one-off payment
    it chose not to keep), anyone who captures that card through any of the shop's
    checkout sessions (a shopper, no certificate: the cardholder paying again, or a
    card thief) silently turns it into a token kept for good: the shop's retention
    choice (PCI DSS 3.2.1) is overridden by an untrusted party, and the shop is not
    told (the capture answer has no ``expires_at``). Fixed: a capture, which asks no
    life, never extends a hit (docs/capture.md, "A card your domain already holds")."""
    card = "4000000000000028"
    with capture_vault.client("payments") as shop:
        kept = shop.post(
            "/v1/tokenize", json={"pan": card, "format": "pan_bin6_last4", "ttl_seconds": 600}
        ).json()
    assert kept["expires_at"] is not None
    captured = capture_vault.shopper_captures({"number": card})
    assert captured.status_code == 200, captured.text
    assert captured.json()["token"] == kept["token"]
    with capture_vault.client("payments") as shop:
        stored = shop.get(f"/v1/tokens/{kept['token']}").json()
    assert stored["expires_at"] is not None, stored


def test_a_shoppers_capture_keeps_the_shops_stored_card_details(
    capture_vault: VaultServer,
) -> None:
    """R28-3b, Low. "New details replace the stored ones" (docs/api.md, for a caller of
    the domain re-sending a reissued card) also holds for a capture: anyone on the
    internet who holds a card's number and reaches any checkout of the shop replaces
    the expiry (and cardholder name) the shop keeps with that card's token, which its
    later relays send to the acquirer (declines, or a name of the attacker's choosing
    on the shop's card on file). The shop's backend never sees it happen. Fix: a
    capture fills in missing details of an existing token but never replaces stored
    ones. Fixed so (an expiry that has passed gives way: the card reissued under its
    number; docs/capture.md, "A card your domain already holds")."""
    card = "4000000000000036"
    with capture_vault.client("payments") as shop:
        kept = shop.post(
            "/v1/tokenize",
            json={"pan": card, "format": "pan_bin6_last4", "expiry": "03/29"},
        ).json()
    captured = capture_vault.shopper_captures({"number": card, "expiry": "12/30"})
    assert captured.status_code == 200, captured.text
    assert captured.json()["token"] == kept["token"]
    with capture_vault.client("payments") as shop:
        shown = shop.post("/v1/detokenize-masked", json={"token": kept["token"]}).json()
    assert shown["expiry"] == "2029-03", shown


def test_a_capture_answers_the_shoppers_own_expiry_not_the_stored_one(
    capture_vault: VaultServer,
) -> None:
    """Holds: a shopper who captures a card the shop already holds, without an expiry,
    is answered ``expiry: null`` and the masked number, not the expiry stored with the
    shop's token (which would tell a holder of a bare PAN the card's expiry, and that
    the shop holds it)."""
    card = "4000000000000044"
    with capture_vault.client("payments") as shop:
        shop.post("/v1/tokenize", json={"pan": card, "format": "pan_bin6_last4", "expiry": "03/29"})
    captured = capture_vault.shopper_captures({"number": card})
    assert captured.status_code == 200, captured.text
    assert captured.json()["expiry"] is None
    assert set(captured.json()) == {"token", "format", "masked_pan", "expiry"}
