"""Session 41: does the vault hold token X? Asked of the WORK a denial does, not of its
answer, with one stolen certificate.

The attacker holds the certificate of the guide's shop backend (`capture` and masked
reads of the payments domain, no `rate_limit`): every read, update or delete of a token
is refused 403 ``policy_denied``, a masked read of another domain's token 404, whether
the vault holds the token or not. Session 40 made a refusal that names a token name its
record (``token_id``) when the vault holds it, and gave such refusals an allowance of
entries of their own (`api._refusal_sieve.NAMED_REFUSALS`, 1,000) beside the caller's
other refusals' (`UNMETERED_REFUSALS`, 100). So past 100 probes of tokens it does not
hold, a probe of a token the vault holds was still a durable write (two INSERTs and a
commit) while one of a token it does not hold was only counted in memory: a timing
oracle on the denied path, one request per guess.

No clock decides here: the test counts the statements each denial runs on the token
store and the audit log (the engine's `before_cursor_execute`), compares the answers'
bytes and headers, and the entries written, for a held and an unheld token of the same
shape, on every denied route naming a token. Real TLS, SoftHSM, SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from api._refusal_sieve import UNMETERED_REFUSALS, RequestSieve
from api.pki import issue_client
from audit.log import request_source
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.api.test_orc37_token_guessing import ROUTE, _route
from tests.api.test_refusal40_named_refusals import SHOP_BACKEND
from tests.api.test_refuse39_refusal_sieve import SERVICE, _discard, _event, _limiters
from tests.support.fake_acquirer import running_acquirer
from tests.support.pans import card_number
from vault.service import Outcome, naming_token
from vault.storage import rawsql

# What a denial may touch: the token store; what it writes: the audit log's entries and
# queue (the vault's background workers read the log, on their own schedule).
_WATCHED = re.compile(r"\btokens\b|^INSERT INTO audit_(entries|queue)\b")
_REQUEST_ID = re.compile(rb'"request_id":"[^"]*"')
# Headers that differ between any two answers.
_VOLATILE = frozenset({"date", "x-request-id", "traceparent"})
Probe = Callable[[httpx.Client, str], httpx.Response]
SHOP = "spiffe://cofre/shop-backend"

# Every route that names a token, refused to the shop backend's certificate 403.
DENIED: dict[str, Probe] = {
    "detokenize": lambda c, t: c.post("/v1/detokenize", json={"token": t}),
    "metadata": lambda c, t: c.get(f"/v1/tokens/{t}"),
    "update": lambda c, t: c.patch(f"/v1/tokens/{t}", json={"metadata": {"a": "b"}}),
    "delete": lambda c, t: c.delete(f"/v1/tokens/{t}"),
    "detokenize_batch": lambda c, t: c.post("/v1/detokenize/batch", json={"tokens": [t, t]}),
    "relay": lambda c, t: c.post("/v1/relay/acquirer", json={"card": {"number": t}}),
}
# Granted, but the token is another owner's (store's domain): answered 404 as not held.
OTHER_DOMAIN: dict[str, Probe] = {
    "masked": lambda c, t: c.post("/v1/detokenize-masked", json={"token": t}),
}


def _lookup(client: httpx.Client, pan: str) -> httpx.Response:
    return client.post("/v1/lookup", json={"pan": pan})


# The routes whose refusal names the token's record (session 40); a batch and the relay
# name none.
NAMING = frozenset({"detokenize", "metadata", "update", "delete", "masked"})


@contextmanager
def _statements(vault: VaultServer) -> Iterator[list[str]]:
    """The statements run on the vault's engine on the token store or the audit log
    while the block runs (their text: the parameters differ between any two requests),
    those it runs on the driver's cursor (`vault.storage.rawsql`) too, and the HSM calls
    made for a request (in a request's context: not the sequencer's signatures)."""
    engine, provider = vault.runtime.engine, vault.runtime.provider
    seen: list[str] = []
    observer = provider.observer

    def called(name: str, ms: float) -> None:
        if request_source() is not None:
            seen.append(f"hsm: {name}")
        if observer is not None:
            observer(name, ms)

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if _WATCHED.search(statement.strip()):
            seen.append(" ".join(statement.split()))

    run = rawsql._run

    def noted(connection: sa.Connection, sql: str, *args: Any, **kwargs: Any) -> Any:
        answer = run(connection, sql, *args, **kwargs)
        if _WATCHED.search(sql.strip()):
            seen.append(f"raw: {' '.join(sql.split())}")
        return answer

    sa.event.listen(engine, "before_cursor_execute", note)
    rawsql._run = noted  # observed, never changed: the same call, its text noted
    provider.observer = called
    try:
        yield seen
    finally:
        provider.observer = observer
        rawsql._run = run
        sa.event.remove(engine, "before_cursor_execute", note)


def _last_entry_id(vault: VaultServer) -> int:
    with vault.runtime.engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT max(id) FROM audit_entries")).scalar_one())


def _entries_since(vault: VaultServer, after: int, actor: str) -> list[dict[str, Any]]:
    with vault.runtime.engine.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE id > :id ORDER BY id"), {"id": after}
        ).scalars()
        entries = [json.loads(p) for p in payloads]
    return [e for e in entries if e["actor"] == actor]


def _work(
    vault: VaultServer, client: httpx.Client, probe: Probe, token: str, actor: str
) -> dict[str, Any]:
    """What one denial did: its statements, its answer, and the entries written for it
    (their shape: every field but the time, the request id and the record named)."""
    before = _last_entry_id(vault)
    with _statements(vault) as seen:
        answer = probe(client, token)
    entries = _entries_since(vault, before, actor)
    shapes = [{k: v for k, v in e.items() if k not in {"time", "request_id"}} for e in entries]
    named = [s.pop("token_id") for s in shapes]
    headers = sorted((k, v) for k, v in answer.headers.items() if k not in _VOLATILE)
    return {
        "statements": seen,
        "status": answer.status_code,
        "body": _REQUEST_ID.sub(b"", answer.content.replace(token.encode(), b"<token>")),
        "headers": headers,
        "entries": shapes,
        "named": named,
    }


def _compare(
    vault: VaultServer,
    client: httpx.Client,
    routes: dict[str, Probe],
    held: str,
    other: str,
    *,
    actor: str = SHOP,
) -> list[str]:
    """The routes whose denial of `held` did other work than that of `other`. Each
    denial of `held` on a route naming its token still names its record, and only there
    do the two entries differ: the record's id (36 characters) for ``null``."""
    differ = []
    for route, probe in routes.items():
        mine = _work(vault, client, probe, held, actor)
        theirs = _work(vault, client, probe, other, actor)
        assert all(n is None for n in theirs.pop("named")), route
        named = mine.pop("named")
        assert all(n is not None for n in named) if route in NAMING else not any(named), route
        if mine != theirs:
            differ.append(f"{route}: {mine} != {theirs}")
    return differ


@pytest.mark.slow
def test_a_denial_does_the_same_work_whether_the_vault_holds_the_token(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    with running_vault(tmp_path, hsm_provider, database_url, extra_policy=SHOP_BACKEND) as vault:
        issue_client(vault.pki, "shop-backend")
        held = {}
        for owner in ("payments", "store"):
            with vault.client(owner) as client:
                made = client.post(
                    "/v1/tokenize", json={"pan": card_number("411111", 7), "format": "uuid"}
                )
            assert made.status_code in (200, 201), made.text
            held[owner] = made.json()["token"]
        unheld = str(uuid.uuid4())  # the same shape, no record
        with vault.client("shop-backend") as stolen:
            # Within the allowance every denial is written...
            differ = _compare(vault, stolen, DENIED, held["payments"], unheld)
            differ += _compare(vault, stolen, DENIED | OTHER_DOMAIN, held["store"], unheld)
            assert not differ, "\n".join(differ)
            # A lookup names a card, not a token: refused before any read, a card the
            # vault holds as one it does not.
            lookup = {"lookup": _lookup}
            differ = _compare(
                vault, stolen, lookup, card_number("411111", 7), card_number("411111", 8)
            )
            assert not differ, "\n".join(differ)
            # (The probe sees the reads of the vault's driver cursor too.)
            work = _work(vault, stolen, OTHER_DOMAIN["masked"], unheld, SHOP)
            assert any(s.startswith("raw: ") for s in work["statements"]), work
            with vault.client("payments") as payments, _statements(vault) as seen:
                made = payments.post(
                    "/v1/tokenize", json={"pan": card_number("411111", 9), "format": "uuid"}
                )
            assert any(s.startswith("hsm: ") for s in seen), seen  # its card's HMAC
            # ...and past the allowance of its refusals (spent on tokens the vault does
            # not hold), a denial of a held token must not be the only one written.
            for _ in range(UNMETERED_REFUSALS.burst + 5):
                refused = stolen.post("/v1/detokenize", json={"token": str(uuid.uuid4())})
                assert refused.status_code == 403
            differ = _compare(vault, stolen, DENIED, held["payments"], unheld)
            differ += _compare(vault, stolen, DENIED | OTHER_DOMAIN, held["store"], unheld)
            assert not differ, "\n".join(differ)
        # A metered caller (store: its own rate limit, and masked reads of payments'
        # tokens) refused the operations it was not granted, on payments' token.
        refused = {k: v for k, v in DENIED.items() if k != "metadata"}
        with vault.client("store") as store:
            differ = _compare(
                vault, store, refused, held["payments"], unheld, actor="spiffe://cofre/store"
            )
            assert not differ, "\n".join(differ)
        # The owner of another domain (payments, granted metadata, update, delete and
        # masked reads of its own tokens) on store's token: 404s and 403s alike.
        with vault.client("payments") as payments:
            differ = _compare(
                vault,
                payments,
                DENIED | OTHER_DOMAIN,
                held["store"],
                unheld,
                actor="spiffe://cofre/payments",
            )
            assert not differ, "\n".join(differ)


def test_the_allowance_is_chosen_by_the_token_named_never_by_its_record() -> None:
    """The sieve alone: a denial naming a token the vault does not hold (no record
    found, no ``token_id``) spends the allowance a held one's does."""
    limiter, _ = _limiters(_discard)
    # The allowance of refusals naming no token spent first.
    for _ in range(UNMETERED_REFUSALS.burst + 1):
        RequestSieve(limiter, lambda: SERVICE)(_event(Outcome.DENIED, error="not_found"))
    assert not RequestSieve(limiter, lambda: SERVICE)(_event(Outcome.DENIED, error="not_found"))
    kept = []
    for n in range(UNMETERED_REFUSALS.burst):
        with naming_token(f"tok-{n}"):
            denial = _event(Outcome.DENIED, reason="this identity may not call detokenize")
            kept.append(RequestSieve(limiter, lambda: SERVICE)(denial))
    assert all(kept)


@pytest.mark.slow
def test_a_relay_of_another_domains_token_does_the_work_of_an_unheld_ones(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    """The adapter granted the relay (payments' tokens only) sends store's token."""
    with (
        running_acquirer(tmp_path / "acquirer-pki") as acquirer,
        running_vault(
            tmp_path / "vault", hsm_provider, database_url, extra_policy=_route(acquirer)
        ) as vault,
    ):
        with vault.client("store") as store:
            made = store.post(
                "/v1/tokenize", json={"pan": card_number("411111", 5), "format": "uuid"}
            )
        assert made.status_code == 200, made.text
        relay = {"relay": lambda c, t: c.post(f"/v1/relay/{ROUTE}", json={"card": {"number": t}})}
        with vault.client("getnet-adapter") as adapter:
            differ = _compare(
                vault,
                adapter,
                relay,
                made.json()["token"],
                str(uuid.uuid4()),
                actor="spiffe://cofre/getnet-adapter",
            )
        assert not differ, "\n".join(differ)
        assert acquirer.received == []
