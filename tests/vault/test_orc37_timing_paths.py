"""Session 37 (orc37): timing oracles across domains, tested on their mechanism.

An answer's time tells what its path did. Where one identity may not learn what another
domain holds, its calls must take the same path whether the other domain holds the
token or card or not: the same statements, in the same order (measured over mTLS on a
real vault with PostgreSQL: no separation at 4,000 samples a case, AUC 0.507 for a
detokenize and 0.505 for a tokenize; docs/threat-model.md, "Timing and shape of
answers"). Never timed here: the statements each path runs are compared, on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.pans import card_number
from tests.support.policies import vault_on
from tests.support.statements import every_statement
from vault.errors import BatchItemInvalid, TokenNotFound
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService

POLICY = """
[identities."spiffe://cofre/payments"]
operations = ["tokenize", "detokenize", "detokenize_masked", "metadata", "delete"]
formats = ["pan_bin6_last4", "uuid"]
reveal = "masked"

[identities."spiffe://cofre/store"]
operations = ["tokenize", "detokenize_masked", "metadata", "delete"]
formats = ["pan_bin6_last4", "uuid"]
reveal = "masked"
"""
PAYMENTS = CallContext("spiffe://cofre/payments", "req-p")
STORE = CallContext("spiffe://cofre/store", "req-s")


@pytest.fixture
def vault(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    svc = vault_on(engine, hsm_provider, POLICY)
    yield svc
    svc.close()


def _card(serial: int) -> Pan:
    # One bucket (BIN and last four) each: the guard never meets its limit here.
    return Pan(card_number("455673", 37_000 + serial * 1_013))


def _token(vault: VaultService, ctx: CallContext, serial: int) -> str:
    return vault.tokenize(ctx, TokenizeRequest(_card(serial), "pan_bin6_last4")).token


def _unheld(token: str) -> str:
    return token[:6] + f"{(int(token[6:-4]) + 1) % 10**6:06d}" + token[-4:]


def _path(engine: Engine, monkeypatch: pytest.MonkeyPatch, call: Callable[[], object]) -> list[str]:
    with (
        every_statement(engine, monkeypatch) as seen,
        contextlib.suppress(TokenNotFound, BatchItemInvalid),
    ):
        call()
    return seen


def test_reading_another_domains_token_runs_what_a_token_never_issued_runs(
    vault: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """payments reads store's live token, store's deleted token, its own deleted token
    and a token nobody was issued: one path for all four (the answer is 404 each)."""
    live, deleted, own_deleted = (
        _token(vault, STORE, 1),
        _token(vault, STORE, 2),
        _token(vault, PAYMENTS, 3),
    )
    vault.delete(STORE, deleted)
    vault.delete(PAYMENTS, own_deleted)
    never = _unheld(_token(vault, PAYMENTS, 4))
    reads: list[Callable[[CallContext, str], object]] = [vault.detokenize_masked, vault.token_info]
    for read in reads:
        paths = {
            name: _path(engine, monkeypatch, functools.partial(read, PAYMENTS, token))
            for name, token in (
                ("another domain's", live),
                ("another domain's deleted", deleted),
                ("own deleted", own_deleted),
                ("never issued", never),
            )
        }
        assert paths["never issued"], "nothing was traced"
        for name, path in paths.items():
            assert path == paths["never issued"], f"{read}: {name} token"
    # A batch beside a token payments holds: stopped at the same item, the same way.
    mine = _token(vault, PAYMENTS, 5)
    batches = [
        _path(engine, monkeypatch, functools.partial(vault.detokenize_batch, PAYMENTS, [mine, t]))
        for t in (live, never)
    ]
    assert batches[0] == batches[1]


def test_tokenizing_a_card_another_domain_holds_runs_what_a_new_card_runs(
    vault: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """payments tokenizes a card store holds and a card nobody holds, alone and in a
    batch: the same statements (convergence reads payments' domain only)."""
    held = [_card(10 + n) for n in range(3)]
    for card in held:
        vault.tokenize(STORE, TokenizeRequest(card, "pan_bin6_last4"))
    new = [_card(20 + n) for n in range(4)]
    vault.tokenize(PAYMENTS, TokenizeRequest(_card(30), "pan_bin6_last4"))  # caches warm

    def one(card: Pan) -> Callable[[], object]:
        return lambda: vault.tokenize(PAYMENTS, TokenizeRequest(card, "pan_bin6_last4"))

    def batch(cards: list[Pan]) -> Callable[[], object]:
        requests = [TokenizeRequest(card, "pan_bin6_last4") for card in cards]
        return lambda: vault.tokenize_batch(PAYMENTS, requests)

    held_path = _path(engine, monkeypatch, one(held[0]))
    assert held_path == _path(engine, monkeypatch, one(new[0]))
    held_batch = _path(engine, monkeypatch, batch([new[1], held[1], held[2]]))
    assert held_batch == _path(engine, monkeypatch, batch([*new[2:], _card(31)]))
