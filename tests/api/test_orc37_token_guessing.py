"""Session 37 (orc37): token enumeration by an identity that may read a domain.

A token of `pan_bin6_last4` shows its card's BIN and last four and hides six random
digits: about 9 x 10^5 tokens per BIN and last four (a `pan_fpe` token as many). The
out-of-scope adapter (`getnet-adapter`: masked reads and relays of payments' tokens),
the ledger or the store, with a stolen certificate and a customer's BIN and last four
(a receipt), swept that space: every wrong guess was a 404, the right one the masked
card, and through the relay a charge sent to the acquirer with the card of a token it
was never given. At the dev policy's 500 calls a second a bucket took half an hour; the
daily quota does not count masked reads (docs/threat-model.md).

Now the misses count under the identity's oracle guard, per BIN, last four and length
of the token guessed: the miss that makes `max_pans_per_bucket` different missing
tokens in its window and every later call on a token of that bucket, the right one
included, are 429 `oracle_suspected`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.fake_acquirer import FakeAcquirer, running_acquirer
from tests.support.pans import card_number

VICTIM = "4556737586899855"
NEIGHBOUR = card_number("455673", 1)  # another bucket (last four) of the same BIN
ROUTE = "acq37"
# The dev policy's guard for identities that set none (policies.models.OracleGuard).
LIMIT = 10


def _route(acquirer: FakeAcquirer) -> str:
    return f"""
[relay_routes.{ROUTE}]
identities = ["spiffe://cofre/getnet-adapter"]
upstream = "{acquirer.url}/v1/authorize"
detokenize = ["/card/number"]
ca_bundle = "{acquirer.ca}"
timeout_seconds = 5
"""


@pytest.fixture
def rig(tmp_path: Any, hsm_provider: HSMProvider) -> Iterator[tuple[VaultServer, FakeAcquirer]]:
    with (
        running_acquirer(tmp_path / "acquirer-pki") as acquirer,
        running_vault(tmp_path / "vault", hsm_provider, extra_policy=_route(acquirer)) as vault,
    ):
        yield vault, acquirer


def _tokenize(vault: VaultServer, pan: str) -> str:
    with vault.client("payments") as payments:
        answer = payments.post("/v1/tokenize", json={"pan": pan, "format": "pan_bin6_last4"})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def _guesses(token: str, count: int) -> list[str]:
    """`count` tokens of `token`'s BIN, last four and length that are not `token`."""
    middle = int(token[6:-4])
    return [f"{token[:6]}{(middle + step) % 10**6:06d}{token[-4:]}" for step in range(1, count + 1)]


def _masked(client: httpx.Client, token: str) -> httpx.Response:
    return client.post("/v1/detokenize-masked", json={"token": token})


def _metadata(client: httpx.Client, token: str) -> httpx.Response:
    return client.get(f"/v1/tokens/{token}")


def _relay(client: httpx.Client, token: str) -> httpx.Response:
    return client.post(f"/v1/relay/{ROUTE}", json={"card": {"number": token}, "amount": 100})


def _refusal(answer: httpx.Response) -> tuple[int, str, str]:
    body = answer.json()
    return answer.status_code, body.get("code", ""), body.get("detail", "")


@pytest.mark.parametrize(
    ("identity", "read"),
    [
        ("getnet-adapter", _masked),
        ("ledger", _masked),
        ("store", _metadata),
        ("getnet-adapter", _relay),
    ],
    ids=["adapter-masked", "ledger-masked", "store-metadata", "adapter-relay"],
)
def test_a_reader_sweeping_a_bucket_is_refused_before_it_reaches_the_token(
    rig: tuple[VaultServer, FakeAcquirer], identity: str, read: Any
) -> None:
    vault, acquirer = rig
    token = _tokenize(vault, VICTIM)
    wrong = _guesses(token, LIMIT + 1)
    with vault.client(identity) as attacker:
        for guess in wrong[: LIMIT - 1]:
            assert read(attacker, guess).status_code == 404
        # The miss that fills the bucket is refused (the limit-th answer telling a
        # guess apart); after it the right token and a wrong one answer alike.
        filled = read(attacker, wrong[LIMIT - 1])
        assert _refusal(filled)[:2] == (429, "oracle_suspected"), filled.text
        right, other = read(attacker, token), read(attacker, wrong[LIMIT])
        assert _refusal(right)[:2] == (429, "oracle_suspected"), right.text
        assert _refusal(right) == _refusal(other)
        assert abs(int(right.headers["retry-after"]) - int(other.headers["retry-after"])) <= 1
    assert acquirer.received == []  # no charge went out with the card


def test_the_same_missing_token_read_again_is_one_guess_and_other_buckets_are_answered(
    rig: tuple[VaultServer, FakeAcquirer],
) -> None:
    """A client that keeps reading a token deleted long ago is not a sweep; a full
    bucket refuses that bucket only."""
    vault, _ = rig
    token, neighbour = _tokenize(vault, VICTIM), _tokenize(vault, NEIGHBOUR)
    with vault.client("payments") as payments:
        assert payments.delete(f"/v1/tokens/{token}").status_code == 200
    with vault.client("ledger") as ledger:
        for _ in range(3 * LIMIT):
            assert _masked(ledger, token).status_code == 404
        for guess in _guesses(token, LIMIT + 1):
            ledger_answer = _masked(ledger, guess)
        assert ledger_answer.status_code == 429
        assert _masked(ledger, neighbour).status_code == 200
    with vault.client("getnet-adapter") as adapter:  # another identity: its own count
        assert _masked(adapter, neighbour).status_code == 200
        assert _masked(adapter, _guesses(token, 1)[0]).status_code == 404


def test_a_batch_with_a_token_of_a_full_bucket_is_refused_whole(
    rig: tuple[VaultServer, FakeAcquirer],
) -> None:
    vault, _ = rig
    token, neighbour = _tokenize(vault, VICTIM), _tokenize(vault, NEIGHBOUR)
    with vault.client("ledger") as ledger:
        for guess in _guesses(token, LIMIT + 1):
            _masked(ledger, guess)
        batch = ledger.post("/v1/detokenize/batch", json={"tokens": [neighbour, token]})
        assert _refusal(batch)[:2] == (429, "oracle_suspected"), batch.text
        # A batch's misses count too: its first missing token is the one it answers.
        fresh = _tokenize(vault, card_number("455673", 2))
        for guess in _guesses(fresh, LIMIT - 1):
            missed = ledger.post("/v1/detokenize/batch", json={"tokens": [neighbour, guess]})
            assert missed.status_code == 422, missed.text
        filled = ledger.post("/v1/detokenize/batch", json={"tokens": [_guesses(fresh, LIMIT)[-1]]})
        assert _refusal(filled)[:2] == (429, "oracle_suspected"), filled.text
        after = ledger.post("/v1/detokenize/batch", json={"tokens": [fresh]})
        assert _refusal(after)[:2] == (429, "oracle_suspected"), after.text
