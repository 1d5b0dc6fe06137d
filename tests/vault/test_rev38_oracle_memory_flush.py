"""Review rev38 of fin37's oracle-guard memory (`vault._suspected_buckets`): the
threat model bounds the guard's reruns of other callers' commit groups at one per full
bucket, worker and window, and one more once a worker holds 4,096 full buckets of one
identity. But a refusal in the group remembered every bucket of the call, a tokenize
batch's thousand, not only the full ones: a certificate that fills a few buckets (two
cards each under a guard of two) and sends, for each, its third card in a batch of
999 new cards of other buckets, flushed the full bucket it had been refused first out
of the memory after five batches, and its next new card of that bucket was refused in
the group again, rerunning another caller's operation (as many times as it cycles).
The guard now tells which buckets it found full, and only those are remembered.
Real PostgreSQL, the vault's own group committer (`tests.support.groups`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.groups import in_a_held_group
from tests.support.pans import card_number, cards_of_one_bucket
from tests.support.policies import vault_serving
from vault.errors import OracleSuspected
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService

POLICY = """
[identities."spiffe://cofre/sweeper"]
operations = ["tokenize"]
formats = ["pan_bin6_last4"]
rate_limit = { per_second = 0.001, burst = 100000 }
oracle_guard = { max_pans_per_bucket = 2 }
"""
SWEEPER = CallContext("spiffe://cofre/sweeper", "req-rev38-flush")
BATCHES = 5  # 5 x 1,000 buckets: past the 4,096 a worker remembers of one identity


@pytest.fixture
def vault(engine: Engine, softhsm_provider: HSMProvider) -> Iterator[VaultService]:
    yield from vault_serving(engine, softhsm_provider, POLICY)


def _tokenize(vault: VaultService, cards: list[str]) -> object:
    requests = [TokenizeRequest(Pan(card), "pan_bin6_last4") for card in cards]
    return vault.tokenize_batch(SWEEPER, requests)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_batches_of_new_buckets_do_not_flush_a_full_one_out_of_the_memory(
    vault: VaultService,
) -> None:
    first = cards_of_one_bucket("411111", 4)
    _tokenize(vault, first[:2])
    with pytest.raises(OracleSuspected):  # in its group: the worker learns the bucket
        _tokenize(vault, first[2:3])
    for batch in range(BATCHES):
        full = cards_of_one_bucket(f"52{batch:04d}", 3)
        _tokenize(vault, full[:2])
        others = [card_number(f"4{batch}{i:04d}", 7) for i in range(999)]  # a BIN each
        with pytest.raises(OracleSuspected):  # in its group too: this bucket is new
            _tokenize(vault, [full[2], *others])
    attacker, runs = in_a_held_group(vault, lambda: _tokenize(vault, first[3:4]))
    with pytest.raises(OracleSuspected):
        attacker.result(60)
    assert runs == [1], "the first full bucket was forgotten: its refusal reran the group"
