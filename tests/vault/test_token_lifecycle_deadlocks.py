"""Two batches that deadlock on each other's tokens (session 31's review of the races
of a token's life): PostgreSQL aborts one with 40P01, the vault runs it again
(`VaultCore._settle`), and each call is answered once and audited once.

Two nodes tokenize batches of the same stored cards, with a new expiry each (so each
item reseals its card's row), in opposite orders. The interleaving is forced with no
sleep: another session holds the row of a card in the middle of each batch, so each
batch has resealed its first card and waits; once both are let go, each wants the row
the other resealed first. On SQLite the batches run one after the other. Held when
written (PostgreSQL counted one deadlock or two per run in ``pg_stat_database``, read
by hand: the count is not asserted, its statistics are flushed when the server likes).
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.vault.conftest import GETNET, PAYMENTS
from tests.vault.test_token_lifecycle_races import CONVERGENT, _Nodes
from tests.vault.test_token_update import _Calls, _Held
from vault.pan import Pan
from vault.service import TokenizeRequest, TokenRecord

A, B, C, D = "4111111111111111", "5555555555554444", "4242424242424242", "5105105105105100"


def _tokenize_entries(engine: Engine) -> dict[str, int]:
    """How many successful `tokenize` entries name each token id."""
    with engine.connect() as c:
        payloads = c.execute(sa.text("SELECT payload FROM audit_entries ORDER BY id")).scalars()
        entries = [json.loads(p) for p in payloads]
    counts: dict[str, int] = {}
    for entry in entries:
        if entry.get("action") == "tokenize" and entry.get("outcome") == "success":
            counts[entry["token_id"]] = counts.get(entry["token_id"], 0) + 1
    return counts


def test_two_batches_that_deadlock_are_each_answered_and_audited_once(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    nodes = _Nodes(engine, hsm_provider)
    try:
        stored = {
            pan: nodes.one.tokenize(PAYMENTS, TokenizeRequest(Pan(pan), CONVERGENT))
            for pan in (A, B, C, D)
        }

        def batch(pans: tuple[str, ...], expiry: str) -> list[TokenizeRequest]:
            return [TokenizeRequest(Pan(pan), CONVERGENT, expiry=expiry) for pan in pans]

        held_c, held_d = _Held(engine, stored[C].token), _Held(engine, stored[D].token)
        calls = _Calls()
        calls.start(lambda: nodes.one.tokenize_batch(PAYMENTS, batch((A, C, B), "03/29")))
        held_c.waiters(1)  # resealed A, waits on C
        calls.start(lambda: nodes.two.tokenize_batch(PAYMENTS, batch((B, D, A), "04/29")))
        held_d.waiters(2)  # resealed B, waits on D
        held_c.release()
        held_d.release()
        one, two = calls.join()
        assert isinstance(one, list), one
        assert isinstance(two, list), two
        assert all(isinstance(r, TokenRecord) for r in [*one, *two]), (one, two)
        assert [r.token for r in one] == [stored[p].token for p in (A, C, B)]
        assert [r.token for r in two] == [stored[p].token for p in (B, D, A)]
        counts = _tokenize_entries(engine)
        ids = {pan: stored[pan].token_id for pan in (A, B, C, D)}
        # The first tokenize of each card, then one entry per batch that holds it.
        assert {pan: counts.get(ids[pan]) for pan in ids} == {A: 3, B: 3, C: 2, D: 2}
        for pan in (A, B):  # one of the two expiries, whole: neither reseal was lost
            assert nodes.one.detokenize(GETNET, stored[pan].token).expiry in {
                "2029-03",
                "2029-04",
            }
    finally:
        nodes.close()
