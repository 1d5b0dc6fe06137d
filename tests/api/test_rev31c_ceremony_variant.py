"""Session 31's review of "a ceremony starts once": the same signed proposal under
another ceremony id.

A ceremony's id derives from its proposal's ``Signature`` header as sent
(`SignedAction.ceremony_id`), and the check that a ceremony starts once looks for a
start record of that id. But the header's text is not what the officer's token signed:
its label (``sig1=``) is outside the signature base, an ECDSA signature (r, s) verifies
as (r, n - s) too, and base64 leaves spare bits in its last character. A database
writer who copied a ceremony that had run into a new row, its proposal proof's label
renamed, had an id no start record named, a proposal that verified under Alice's key
for that id, and so one officer's approval started a second rotation on Alice's one
proposal. The check now also refuses a ceremony whose proposal (the nonce the token
signed, which no copy can change) already started one. Real mutual TLS, the officers'
second factor, SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.api.test_forged_ceremony_rows import ROTATIONS, _denials
from tests.api.test_sec31_ceremony_replay import _completed, _starts
from vault.approval_proof import SignedAction
from vault.storage.schema import key_ceremonies

VISA = "4111111111111111"
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's order


def _relabelled(proof: str) -> str:
    """The stored proof with its signature's label renamed in both headers."""
    action = json.loads(proof)
    label = action["signature"].split("=", 1)[0]
    other = "sig2" if label != "sig2" else "sig3"
    for field in ("signature", "signature_input"):
        action[field] = other + action[field][len(label) :]
    return json.dumps(action, separators=(",", ":"), sort_keys=True)


def _negated(proof: str) -> str:
    """The stored proof with its ECDSA signature's s replaced by n - s (it verifies)."""
    action = json.loads(proof)
    label, value = action["signature"].split("=", 1)
    raw = base64.b64decode(value.strip(":"))
    s = int.from_bytes(raw[32:], "big")
    raw = raw[:32] + (_N - s).to_bytes(32, "big")
    action["signature"] = f"{label}=:{base64.b64encode(raw).decode()}:"
    return json.dumps(action, separators=(",", ":"), sort_keys=True)


def _replayed(
    tmp_path: Path,
    provider: HSMProvider,
    database_url: str,
    kind: str,
    variant: Callable[[str], str],
) -> None:
    """Alice proposes a `kind` rotation, Bob approves it, it runs; the operator copies
    it under the id of `variant` of its proposal proof; Bob is asked to approve that."""
    with running_vault(tmp_path / "vault", provider, database_url) as vault:
        with vault.client() as payments:
            sealed = payments.post("/v1/tokenize", json={"pan": VISA, "format": "pan_bin6_last4"})
        assert sealed.status_code in {200, 201}, sealed.text
        with vault.client("officer-alice") as alice:
            proposed = alice.post(ROTATIONS, json={"kind": kind})
        assert proposed.status_code == 201, proposed.text
        ceremony = proposed.json()["id"]
        with vault.client("officer-bob") as bob:
            first = bob.post(f"{ROTATIONS}/{ceremony}/approve")
            assert first.status_code == 200, first.text
            assert first.json()["state"] in {"running", "completed"}, first.text
            _completed(vault, bob, ceremony)
            # What the operator writes: Alice's ceremony copied, pending, its proposal
            # proof's text changed where the signature does not cover it.
            with vault.runtime.engine.begin() as connection:
                row = connection.execute(
                    sa.select(key_ceremonies).where(key_ceremonies.c.id == ceremony)
                ).one()
                copy = dict(row._mapping)
                copy["proposer_proof"] = variant(row.proposer_proof)
                copy["id"] = SignedAction.from_json(copy["proposer_proof"]).ceremony_id()
                copy.update(
                    state="pending",
                    old_version=None,
                    new_version=None,
                    progress_done=0,
                    progress_total=0,
                    completed_at=None,
                )
                connection.execute(sa.insert(key_ceremonies).values(**copy))
            replay = copy["id"]
            assert replay != ceremony
            again = bob.post(f"{ROTATIONS}/{replay}/approve")
            after = bob.get(f"{ROTATIONS}/{replay}").json()
            if after["state"] == "pending":
                assert bob.post(f"{ROTATIONS}/{replay}/cancel").status_code == 200
        assert _starts(vault, replay) == 0, (
            f"Alice's one proposal started a second rotation as ceremony {replay}: {after}"
        )
        assert (again.status_code, again.json()["code"]) == (409, "ceremony_invalid"), again.text
        assert "already started" in again.json()["detail"]
        assert _denials(vault, replay) == ["its proposal already started a ceremony"]


@pytest.mark.parametrize("variant", [_relabelled, _negated], ids=["label", "ecdsa-s"])
def test_a_ceremony_copied_under_a_variant_of_its_proposal_does_not_start(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str, variant: Callable[[str], str]
) -> None:
    _replayed(tmp_path, hsm_provider, database_url, "data", variant)


def test_an_audit_key_ceremony_copied_so_does_not_start(
    tmp_path: Path, rotation_provider: HSMProvider, database_url: str
) -> None:
    """An audit key rotation writes its start in its own module (`vault.audit_rotation`),
    with the same mark: its copy is refused as a data rotation's is (on a token of the
    test's own: it makes audit keys)."""
    _replayed(tmp_path, rotation_provider, database_url, "audit", _relabelled)
