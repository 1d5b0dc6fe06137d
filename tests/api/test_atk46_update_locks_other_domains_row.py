"""atk46 (session 46's attacker): `PATCH /v1/tokens/{token}` of another domain's token
locked that domain's row (PostgreSQL), so the stranger's miss waited on the owner's
transactions and was answered `503 storage_unavailable` where a token never issued is
answered `404` at once.

`UpdateOperations._row_to_update` reads ``SELECT ... WHERE token = ? FOR UPDATE`` before
it checks the row's domain. Session 31's review removed exactly this from reveals
(`VaultCore._live_row` locks only a row it answers: "a miss on another domain's token
kept that domain's update or delete waiting on a stranger's call",
tests/vault/test_reveal_share_lock_misses.py); the update path still does it. While the
owner's side holds the row (a reveal's `FOR SHARE` to its commit, an update, a purge or
a data-key rotation batch), a stolen `payments` certificate's PATCH of a guessed token
that store holds waits for the statement bound and gets 503; a guess nobody holds gets
the documented 404 at once. The status code, not a timing, tells that the token exists.
The fix reads the row with its domain in the statement, so another domain's row is never
locked. The test judges status codes only; the times are in its message.

Real mutual TLS, SoftHSM2, PostgreSQL.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.support.pans import card_number


def _patch(client: httpx.Client, token: str) -> tuple[int, float, str]:
    started = time.monotonic()
    answer = client.patch(f"/v1/tokens/{token}", json={"metadata": {"probe": "x"}})
    return answer.status_code, time.monotonic() - started, answer.json().get("code", "")


def test_a_patch_of_another_domains_held_token_answers_what_a_never_issued_one_does(
    tmp_path: Path, hsm_provider: HSMProvider, pg_database: str
) -> None:
    with running_vault(tmp_path, hsm_provider, pg_database) as vault:
        with vault.client("store") as store:
            made = store.post(
                "/v1/tokenize", json={"pan": card_number("455556", 46), "format": "pan_bin6_last4"}
            )
        assert made.status_code == 200, made.text
        held = made.json()["token"]
        never = held[:6] + ("000000" if held[6:12] != "000000" else "111111") + held[12:]
        with vault.client("payments") as attacker:
            attacker.timeout = 30
            assert _patch(attacker, never)[0] == 404
            # The owner's side holds its row, as a reveal does (FOR SHARE) until its
            # commit; an update, the purge or a rotation batch would hold it likewise.
            with vault.runtime.engine.connect() as owner:
                owner.execute(
                    sa.text("SELECT id FROM tokens WHERE token = :t FOR SHARE"), {"t": held}
                ).all()
                started = time.monotonic()
                read = attacker.get(f"/v1/tokens/{held}").status_code
                read_took = time.monotonic() - started
                on_held = _patch(attacker, held)
                on_never = _patch(attacker, never)
                owner.rollback()
        assert on_held[0] == on_never[0] == 404, (
            f"another domain's token answered {on_held[0]} {on_held[2]} after {on_held[1]:.1f} s; "
            f"a never-issued one {on_never[0]} {on_never[2]} after {on_never[1]:.2f} s "
            f"(GET of the same held token: {read} after {read_took:.2f} s)"
        )
