"""Session 49 (atk49a): a token sweep through `PATCH` (and `DELETE`) of the caller's own
domain, past the token-guess guard of session 37.

The attack. A stolen certificate of the payment service (the dev policy's `payments`:
tokenize, masked reads, metadata, update, delete) and one customer's BIN and last four
(a receipt). A `pan_bin6_last4` token hides six random digits behind them: about
9 x 10^5 tokens a bucket. Session 37 (F37-1) made every *read* of a token the vault does
not hold (detokenize, masked, batch, metadata, relay) count under the reader's oracle
guard, so that a sweep of that space gets at most `max_pans_per_bucket` answers telling
a guess apart, and the right token is refused with the wrong ones past it
(`tests/api/test_orc37_token_guessing.py`: the store's metadata sweep of its domain is
one of its cases). `PATCH /v1/tokens/{token}` is the same oracle in the caller's own
domain: a wrong guess is `404 token_not_found`, the right one `200` with the token's
format, dates and metadata, and `{"ttl_seconds": null}` changes nothing on a token made
without a life. It counted nothing, so the sweep ran at the rate limit alone (the dev
policy's 2,000 a second: the bucket in about 8 minutes), and once the token is known one
masked read (the card's expiry), a relay (a charge) or a full reveal of an identity
allowed one answers it: the read that the guard refuses after ten misses comes with no
miss at all. `DELETE` answers `"deleted": true` to the right guess the same way and
shreds the customer's card (a targeted destruction the read guard bounds otherwise).

docs/threat-model.md said "update and delete, which act on the caller's own domain
only, are not counted"; the reads F37-1 counts are the caller's own domain too.

What should hold: a `PATCH` or `DELETE` of a token the vault does not hold counts as a
missed read under the caller's guard, in the same buckets, and past
`max_pans_per_bucket` every `PATCH`/`DELETE` of that bucket's tokens, the right one
included, is `429 oracle_suspected` (nothing changed, nothing shredded).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault

VICTIM = "4556737586899855"
# The dev policy's guard for payments (policies.models.OracleGuard's default too).
LIMIT = 10


@pytest.fixture
def vault(tmp_path: Any, hsm_provider: HSMProvider) -> Iterator[VaultServer]:
    with running_vault(tmp_path / "vault", hsm_provider) as server:
        yield server


def _tokenize(vault: VaultServer) -> str:
    """The genuine shop's call: the customer's card on file, with its expiry."""
    with vault.client("payments") as payments:
        answer = payments.post(
            "/v1/tokenize",
            json={"pan": VICTIM, "format": "pan_bin6_last4", "expiry": "2031-07"},
        )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def _guesses(token: str, count: int) -> list[str]:
    """`count` tokens of `token`'s BIN, last four and length that are not `token`."""
    middle = int(token[6:-4])
    return [f"{token[:6]}{(middle + step) % 10**6:06d}{token[-4:]}" for step in range(1, count + 1)]


def _patch(client: httpx.Client, token: str) -> httpx.Response:
    # Changes nothing on a token made without a life: the sweep leaves no trace but its
    # audit entries.
    return client.patch(f"/v1/tokens/{token}", json={"ttl_seconds": None})


def _delete(client: httpx.Client, token: str) -> httpx.Response:
    return client.delete(f"/v1/tokens/{token}")


def _code(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json().get("code", "")


@pytest.mark.parametrize("probe", [_patch, _delete], ids=["patch", "delete"])
def test_a_sweep_through_update_or_delete_is_refused_before_it_reaches_the_token(
    vault: VaultServer, probe: Any
) -> None:
    token = _tokenize(vault)
    wrong = _guesses(token, LIMIT + 1)
    with vault.client("payments") as attacker:
        answers = [_code(probe(attacker, guess)) for guess in wrong[:LIMIT]]
        # At most LIMIT answers telling a guess apart: the miss that fills the bucket
        # is refused, as a read's is (orc37).
        assert answers[: LIMIT - 1] == [(404, "token_not_found")] * (LIMIT - 1), answers
        assert answers[LIMIT - 1] == (429, "oracle_suspected"), answers
        right = probe(attacker, token)
        assert _code(right) == (429, "oracle_suspected"), right.text
        # The bucket is refused to the attacker's reads as well (one guard for both).
        read = attacker.post("/v1/detokenize-masked", json={"token": token})
        assert _code(read) == (429, "oracle_suspected"), read.text
    # The right token was neither changed nor shredded: the card is still there for
    # those who hold its token (the ledger reads payments' domain, its own count).
    with vault.client("ledger") as ledger:
        masked = ledger.post("/v1/detokenize-masked", json={"token": token})
    assert masked.status_code == 200, masked.text


def test_a_patch_sweep_hands_the_masked_read_a_token_it_never_missed(vault: VaultServer) -> None:
    """The whole attack as it ran before: the sweep through PATCH finds the token, and
    the masked read (which the guard counts) answers the card's expiry at once."""
    token = _tokenize(vault)
    with vault.client("payments") as attacker:
        found = None
        for guess in [*_guesses(token, 3 * LIMIT), token]:
            answer = _patch(attacker, guess)
            if answer.status_code == 200:
                found = guess
                break
            if answer.status_code == 429:
                break
        assert found is None, "the PATCH sweep found the customer's token past the guard"
