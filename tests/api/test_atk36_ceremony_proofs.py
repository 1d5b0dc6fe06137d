"""Attack review of session 36: what a key ceremony action keeps of its signed request.

A proposal or approval stores the request the officer's token signed, whole
(`vault.approval_proof.SignedAction`: method, path, query, signature headers, body) in
``key_ceremonies.proposer_proof`` / ``key_approvals.proof``, and its audit entry carries
it as its document, which the log cannot shred. Parts of it are the officer's free text
that no model checks: the query string (no ceremony route takes one), the body of an
approval (no route model reads it), the first of two ``kind`` members of a proposal
(JSON's last one wins, so ``{"kind": CARD, "kind": "data"}`` validated), and the
signature's ``nonce`` (any 16-64 URL-safe characters, so a bare card number). Each put
a card into the database in clear, and the body's into the audit log as its base64. An
officer with their own second factor (a careless tool, or an insider filling the vault's
append-only records with card data) did it; the vault now refuses each, before anything
is written.

Real mutual TLS and the officers' second factor; a private token (an approval that
counts starts a rotation); SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.officers import software_officers
from vault.httpsig import sign_request

ROTATIONS = "/v1/admin/keys/rotations"
VISA = "4111111111111111"
# The card as the database or the audit log could hold it: plain, or as the base64 of a
# body holding it (any of the three alignments).
SHAPES = (VISA, *(base64.b64encode(b"x" * i + VISA.encode()).decode()[4:20] for i in range(3)))


def _signed(vault: VaultServer, officer: str, path: str, body: bytes, nonce: str) -> httpx.Response:
    """A POST signed by `officer`'s token with the `nonce` of our choosing."""
    signing = software_officers()[officer]
    authority = vault.url.removeprefix("https://")
    bare, _, query = path.partition("?")
    headers = sign_request(
        "POST",
        bare,
        query,
        body,
        authority=authority,
        keyid=signing.keyid,
        nonce=nonce,
        created=int(time.time()),
        sign=signing.sign,
    )
    headers["content-type"] = "application/json"
    with vault.client(officer, signed=False) as client:
        return client.post(path, content=body, headers=headers)


def _card_kept(vault: VaultServer) -> list[str]:
    """Where the card is now kept in clear (or as a body's base64): table names."""
    found = []
    with vault.runtime.engine.connect() as connection:
        for table in ("key_ceremonies", "key_approvals", "officer_request_nonces", "audit_queue"):
            for row in connection.execute(sa.text(f"SELECT * FROM {table}")):
                text = json.dumps([str(v) for v in row])
                if any(shape in text for shape in SHAPES):
                    found.append(table)
        payloads = connection.execute(sa.text("SELECT payload FROM audit_entries")).scalars()
        found += ["audit_entries" for p in payloads if any(s in str(p) for s in SHAPES)]
    return found


def test_a_ceremony_action_keeps_no_card_the_officer_wrote_into_it(
    tmp_path: Path, rotation_provider: HSMProvider, database_url: str
) -> None:
    with running_vault(tmp_path / "v", rotation_provider, database_url) as vault:
        # One kind each: a proposal taken (before the fix) would hold the others off.
        kek, audit = (json.dumps({"kind": kind}).encode() for kind in ("kek", "audit"))
        refused = {
            "a query": _signed(vault, "officer-alice", f"{ROTATIONS}?note={VISA}", kek, "n" * 22),
            "a repeated kind": _signed(
                vault,
                "officer-alice",
                ROTATIONS,
                f'{{"kind": "{VISA}", "kind": "fingerprint"}}'.encode(),
                "o" * 22,
            ),
            "a card as nonce": _signed(vault, "officer-alice", ROTATIONS, audit, VISA),
        }
        data = json.dumps({"kind": "data"}).encode()
        # A genuine proposal, then approvals that write a card into their request.
        proposed = _signed(vault, "officer-alice", ROTATIONS, data, "p" * 22)
        assert proposed.status_code == 201, proposed.text
        approve = f"{ROTATIONS}/{proposed.json()['id']}/approve"
        refused |= {
            "an approval's query": _signed(
                vault, "officer-bob", f"{approve}?note={VISA}", b"", "q" * 22
            ),
            "an approval's body": _signed(
                vault, "officer-bob", approve, json.dumps({"note": VISA}).encode(), "r" * 22
            ),
            "an approval's nonce": _signed(vault, "officer-bob", approve, b"", VISA),
        }
        answers = {name: (a.status_code, a.json().get("code")) for name, a in refused.items()}
        assert answers == {
            "a query": (422, "invalid_request"),
            "a repeated kind": (422, "invalid_request"),
            "a card as nonce": (401, "mfa_invalid"),
            "an approval's query": (422, "invalid_request"),
            "an approval's body": (422, "invalid_request"),
            "an approval's nonce": (401, "mfa_invalid"),
        }, answers
        time.sleep(0.5)  # the sequencer moves queued entries into the log
        assert _card_kept(vault) == []
        # Nothing else was refused: the ceremony still takes bob's plain approval.
        approved = _signed(vault, "officer-bob", approve, b"", "s" * 22)
        assert approved.status_code == 200, approved.text
        assert approved.json()["approvers"] == ["spiffe://cofre/officer-bob"]
