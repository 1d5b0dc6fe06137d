"""Review 28b (attacker): the capture listener's new refusal of a session whose origin
is not allowed now (`_refuse_an_origin_not_allowed_now`), reached without any secret
through the fields' page. Real server TLS, a real vault, a real policy reload."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from api.capture import LISTENER_REFUSALS
from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.api.test_capture_origin_now import _client, _denials, _dropped_session, _page
from tests.support.postgres import free_port

ADDRESSES = 10
LOADS_PER_ADDRESS = 55  # under the default per-address burst (60): no 429 on the way


@pytest.fixture(scope="module")
def vault(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[VaultServer]:
    """A capture listener with the default limits."""
    settings = CaptureSettings(port=free_port())
    with running_vault(tmp_path_factory.mktemp("rev28b-cap"), hsm_provider, capture=settings) as v:
        yield v


def test_page_loads_of_a_dropped_origins_session_write_no_entries_past_the_listeners_limit(
    vault: VaultServer,
) -> None:
    """R28b-C1, severity medium (audit-log flooding by an unauthenticated client).

    The fields' page needs no secret: its session id is in the iframe URL every shopper
    (and every script of the shop's page) sees. Once the session's origin is dropped
    from the policy (the very case the operator reacts to: a phishing origin), each
    GET of the page writes one ``capture`` denied entry through the vault itself. The
    listener caps the refusal entries of anonymous clients at `LISTENER_REFUSALS`
    (burst 200, then counted, not written: review 30) so that no one can grow the log
    at will; these entries are the operation's own, so `_CaptureGuard` only *charges*
    the listener for them and never asks whether it is spent. Only the per-address
    rate bounds them, so N addresses write ~60 N entries a burst and 2 N a second for
    the rest of the session's life (and of every such session), into the hash-chained,
    witnessed log that must be kept a year.

    Suggested fix: write the page's and the preflight's denial through the listener's
    budget (one entry per session per episode, the rest counted as the guard counts
    anonymous refusals), or answer them 404 like an unknown session and audit the
    origin's drop once per session."""
    with _dropped_session(vault) as session:
        statuses = []
        started = time.monotonic()
        for n in range(ADDRESSES):
            with _client(vault, f"127.0.28.{n + 1}") as client:
                statuses += [
                    _page(client, session.session_id).status_code for _ in range(LOADS_PER_ADDRESS)
                ]
        elapsed = time.monotonic() - started
        assert set(statuses) == {403}, sorted(set(statuses))
        written = len(_denials(vault, session.session_id))
    # What the listener lets anonymous refusals write in that time (its burst and its
    # refill), and one episode entry per address: the bound had the guard applied.
    allowed = LISTENER_REFUSALS.burst + LISTENER_REFUSALS.per_second * elapsed + ADDRESSES
    assert written <= allowed, (written, allowed)


def test_a_page_load_of_an_unknown_session_is_not_told_from_a_live_one_by_its_body(
    vault: VaultServer,
) -> None:
    """Holds: an unknown (well-formed) session id gets the same 404 problem whatever
    session exists; only the dropped origin's own session is answered 403, and that
    answer names neither the origin nor the creator."""
    with _dropped_session(vault) as session, _client(vault, "127.0.28.100") as client:
        unknown = _page(client, "cs_" + "q" * 32)
        dropped = _page(client, session.session_id)
    assert unknown.status_code == 404, unknown.text
    assert dropped.status_code == 403
    assert "shop-example.net" not in dropped.text
    assert "payments" not in dropped.text
