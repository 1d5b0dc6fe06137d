"""Review 37b: the token-guess guard's memory of full buckets, attacked.

The guard (`vault.operations._guesses`) refuses a hit on a full bucket only from each
worker's memory of the buckets it saw refused: the database is asked only on a miss.
That memory held 4,096 buckets for all identities together and dropped the oldest
past them, so an identity that filled 4,096 other buckets (a miss each under a guard
of one) had its first full bucket forgotten, and the right token of that bucket was
answered again: cycling through 4,097 full buckets, every read was a guess answered,
the guard no bound at all, and one identity's misses made another's full buckets
readable again too. Now each identity's memory is its own, and an identity with more
full buckets than it holds is refused every read of a guessable token until the last
of them clears.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.pans import card_number
from tests.support.policies import vault_on
from vault._token_guesses import GUESSED_ENTRIES, GuessedBuckets, guess_bucket
from vault.errors import OracleSuspected, TokenNotFound
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService

POLICY = """
[identities."spiffe://cofre/payments"]
operations = ["tokenize", "detokenize_masked", "metadata"]
formats = ["pan_bin6_last4"]
reveal = "masked"
oracle_guard = { max_pans_per_bucket = 1 }
"""
PAYMENTS = CallContext("spiffe://cofre/payments", "req-p")


@pytest.fixture
def vault(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    svc = vault_on(engine, hsm_provider, POLICY)
    yield svc
    svc.close()


def _other_bucket(serial: int) -> str:
    """A 16-digit token in a bucket of its own (first six and last four), held by none."""
    return f"{400000 + serial:06d}123456{serial % 10_000:04d}"


def test_filling_other_buckets_does_not_reopen_a_full_one(vault: VaultService) -> None:
    victim = vault.tokenize(
        PAYMENTS, TokenizeRequest(Pan(card_number("455673", 3_701)), "pan_bin6_last4")
    ).token
    wrong = victim[:6] + f"{(int(victim[6:-4]) + 1) % 10**6:06d}" + victim[-4:]
    with pytest.raises(OracleSuspected):  # the guard of one: the first miss fills it
        vault.detokenize_masked(PAYMENTS, wrong)
    with pytest.raises(OracleSuspected):
        vault.detokenize_masked(PAYMENTS, victim)
    for serial in range(GUESSED_ENTRIES):
        with pytest.raises((OracleSuspected, TokenNotFound)):
            vault.token_info(PAYMENTS, _other_bucket(serial))
    with pytest.raises(OracleSuspected):  # was: the masked card, the sweep's hit
        vault.detokenize_masked(PAYMENTS, victim)
    with pytest.raises(OracleSuspected):
        vault.token_info(PAYMENTS, victim)


def test_one_identitys_full_buckets_are_not_forgotten_for_anothers() -> None:
    memory = GuessedBuckets()
    victim = "4556737586899855"
    memory.learn("spiffe://cofre/ledger", [_bucket(victim)], clears_at=1_000.0, now=10.0)
    for serial in range(GUESSED_ENTRIES + 1):
        bucket = _bucket(_other_bucket(serial))
        memory.learn("spiffe://cofre/store", [bucket], clears_at=1_000.0, now=10.0)
    assert memory.refused_until("spiffe://cofre/ledger", [victim], now=10.0) == 1_000.0
    # The identity past its own memory is refused every guessable token, not answered.
    assert memory.refused_until("spiffe://cofre/store", ["5105105105105100"], 10.0) == 1_000.0
    assert memory.refused_until("spiffe://cofre/store", ["5105105105105100"], 1_001.0) is None


def _bucket(token: str) -> bytes:
    bucket = guess_bucket(token)
    assert bucket is not None
    return bucket


def test_buckets_cleared_by_now_do_not_count_towards_an_identitys_memory() -> None:
    memory = GuessedBuckets()
    for serial in range(GUESSED_ENTRIES):
        bucket = _bucket(_other_bucket(serial))
        memory.learn("spiffe://cofre/store", [bucket], clears_at=100.0, now=10.0)
    memory.learn("spiffe://cofre/store", [_bucket("4556737586899855")], clears_at=900.0, now=200.0)
    assert memory.refused_until("spiffe://cofre/store", ["5105105105105100"], 300.0) is None
    assert memory.refused_until("spiffe://cofre/store", ["4556737586899855"], 300.0) == 900.0
