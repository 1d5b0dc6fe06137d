"""A witnessed vault (a real `cofre witness serve` process, pinned to the vault's audit
key before the rotation) rotates its audit key under dual control: the witness refuses
the handover until its operator pins the new key (given out of band), then the
publisher hands the witness over to the new key, the witness cosigns the heads the new
key signs, and
the stored log, the witness's view and the offline verifier (pinned to the OLD key and
the witness's key, no opt-out) all pass across the rotation.

Runs on the session's rotation token (the main token keeps its single audit key)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from audit.heads import log_origin, log_verifier_key
from audit.note import VerifierKey
from audit.publisher import PublisherThread
from audit.store import AuditStore
from audit.witnessed import check_witness_view, verify_witnessed
from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.support.officers import signed_approval, signed_proposal, software_officers
from tests.support.witness_process import WitnessProcess, witnessed_audit
from vault.ceremony import Ceremony
from vault.rotation import KeyRotation
from vault.signing import HSMTreeHeadSigner

PAN = "4111111111111111"
ALICE, BOB = "spiffe://cofre/officer-alice", "spiffe://cofre/officer-bob"


def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(600):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _pin_once_refused(
    thread: PublisherThread | None, witness: WitnessProcess, pinned: VerifierKey, new_pem: bytes
) -> None:
    """Wait for the witness to refuse the handover to the new key its operator has not
    pinned (the publisher reports it, reason ``refused``), then pin it as the operator
    does once the custodians gave them the new public key out of band."""

    assert thread is not None
    publisher = thread.publisher

    def handover_refused() -> bool:
        return "not pinned by the witness operator" in publisher.last_errors.get(pinned.name, "")

    _until(handover_refused, "the witness to refuse the unpinned handover")
    assert publisher.failures[(pinned.name, "refused")] >= 1
    witness.trust_key(log_verifier_key(log_origin("cofre"), new_pem).encode())


def _rotate_the_audit_key(rotation: KeyRotation) -> Ceremony:
    """Alice proposes, Bob approves: in process, with the proofs the API would store
    (`vault.approval_proof`)."""
    officers = software_officers()
    proposal = signed_proposal(officers["officer-alice"], "audit")
    ceremony = rotation.propose(ALICE, "audit", proof=proposal)
    return rotation.approve(
        BOB, ceremony.id, proof=signed_approval(officers["officer-bob"], ceremony.id)
    )


def test_a_witness_pinned_to_the_old_key_follows_the_rotation(
    tmp_path: Path, rotation_provider: HSMProvider
) -> None:
    old_pem = HSMTreeHeadSigner(rotation_provider).public_key_pem()
    witness = WitnessProcess(
        tmp_path / "witness", [log_verifier_key(log_origin("cofre"), old_pem).encode()]
    )
    witness.start()
    pinned = VerifierKey.parse(witness.vkey)
    audit = witnessed_audit(witness)
    try:
        with running_vault(tmp_path / "vault", rotation_provider, audit=audit) as vault:
            runtime = vault.runtime
            store = AuditStore(runtime.engine)

            def witnessed() -> bool:
                try:
                    verify_witnessed(runtime.engine, store.heads(), [pinned], 1)
                except Exception:  # noqa: BLE001 - not yet: retried until the deadline
                    return False
                return True

            with vault.client("payments") as c:
                assert c.post("/v1/tokenize", json={"pan": PAN, "format": "uuid"}).is_success
            _until(witnessed, "the first cosigned head")
            assert runtime.sequencer.signer.public_key_pem() == old_pem

            done = _rotate_the_audit_key(runtime.rotation)
            assert done.state == "completed"
            new_pem = runtime.sequencer.signer.public_key_pem()
            assert new_pem != old_pem
            handover = store.handover_notes()
            assert len(handover) == 1

            with vault.client("payments") as c:
                assert c.post("/v1/tokenize", json={"pan": PAN, "format": "uuid"}).is_success
            _pin_once_refused(runtime.publisher_thread, witness, pinned, new_pem)

            def new_head_witnessed() -> bool:
                latest = store.latest_head()
                return (
                    latest is not None
                    and latest.key_id == runtime.sequencer.signer.key_id
                    and witnessed()
                )

            _until(new_head_witnessed, "a head signed by the new key, cosigned")
            # The stored log verifies from the old pin; the witness's view holds.
            store.verify(old_pem)
            served = witness.get(f"/{hashlib.sha256(b'cofre-audit/cofre').hexdigest()}/checkpoint")
            assert served.status_code == 200, served.text
            log_keys = [
                log_verifier_key(log_origin("cofre"), pem)
                for pem in store.key_chain(old_pem).pems()
            ]
            check_witness_view(store, served.text, pinned, log_keys)

            body = {
                "from": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
                "to": (datetime.now(UTC) + timedelta(seconds=5)).isoformat(),
            }
            with vault.client("auditor") as c:
                response = c.post("/v1/evidence", json=body)
            assert response.status_code == 200, response.text
            bundle = tmp_path / "bundle.tar.gz"
            bundle.write_bytes(response.content)
            pem_file, vkey_file = tmp_path / "old.pem", tmp_path / "witness.vkey"
            pem_file.write_bytes(old_pem)
            vkey_file.write_text(witness.vkey + "\n")
            checked = subprocess.run(
                [sys.executable, "-m", "cofre_evidence_verifier", str(bundle), "--public-key",
                 str(pem_file), "--witness-key", str(vkey_file), "--origin", "cofre-audit/cofre"],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert checked.returncode == 0, checked.stdout + checked.stderr
            # The handover's ceremony was dual-controlled, from the officers' signatures.
            for shown in ("handover", "dual control: 1 key rotation started", done.id):
                assert shown in checked.stdout
    finally:
        witness.stop()
