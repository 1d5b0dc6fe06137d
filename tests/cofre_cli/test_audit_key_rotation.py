"""`cofre keys rotate --kind audit` against a running `cofre serve` (its own process and
copy of the token): two officers rotate the audit signing key, the running vault signs
later heads with the new key, and `cofre audit verify` passes pinned to the old key (the
chain leads to the new one) or to the new one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

VISA = "4111111111111111"


@pytest.fixture
def vault(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[VaultProcess]:
    process = make_vault(tmp_path / "v", softhsm_token, None)
    process.start()
    yield process
    process.stop()


def _public_key(vault: VaultProcess, out: Path) -> bytes:
    exported = vault.cofre("audit", "export", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    return str(json.loads(out.read_text().splitlines()[0])["pem"]).encode()


def test_two_officers_rotate_the_audit_key(vault: VaultProcess, tmp_path: Path) -> None:
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    with vault.client() as c:
        assert c.post("/v1/tokenize", json={"pan": VISA, "format": "pan_bin6_last4"}).is_success
    old_pem = tmp_path / "old.pem"
    old_pem.write_bytes(_public_key(vault, tmp_path / "before.jsonl"))

    # PCI DSS 3.7.8: no ceremony before the officer acknowledges key custody, and the
    # CLI says how to.
    unacknowledged = vault.cofre("keys", "rotate", "--kind", "audit", "--as", "officer-alice")
    assert unacknowledged.returncode == 1
    assert "error [custody_not_acknowledged]" in unacknowledged.stderr
    assert "cofre keys acknowledge-custody --as" in unacknowledged.stderr
    vault.acknowledge_custody()
    proposed = vault.cofre("keys", "rotate", "--kind", "audit", "--as", "officer-alice")
    assert proposed.returncode == 0, proposed.stderr
    assert "audit rotation, pending" in proposed.stdout
    ceremony = proposed.stdout.split()[1].rstrip(":")
    own = vault.cofre("keys", "approve", ceremony, "--as", "officer-alice")
    assert own.returncode == 1
    assert "proposer cannot approve" in own.stderr
    # Bob means to approve a KEK rotation: shown what this id is, he signs nothing.
    wrong = vault.cofre("keys", "approve", ceremony, "--kind", "kek", "--as", "officer-bob")
    assert wrong.returncode == 1
    assert "audit rotation, pending" in wrong.stdout
    assert "rotates the audit key, not the kek key: not approved" in wrong.stderr
    status = vault.cofre("keys", "status", ceremony, "--as", "officer-bob")
    assert "approved by nobody yet" in status.stdout, status.stdout
    approved = vault.cofre("keys", "approve", ceremony, "--kind", "audit", "--as", "officer-bob")
    assert approved.returncode == 0, approved.stderr
    assert "audit rotation, completed" in approved.stdout

    new_pem = tmp_path / "new.pem"
    new_pem.write_bytes(_public_key(vault, tmp_path / "after.jsonl"))
    assert new_pem.read_bytes() != old_pem.read_bytes()
    with vault.client() as c:
        assert c.post("/v1/tokenize", json={"pan": VISA, "format": "pan_bin6_last4"}).is_success
    # The running vault's sequencer signs the next head with the new key; both pins pass.
    for pem in (old_pem, new_pem):
        for _ in range(300):
            verified = vault.cofre(
                "audit", "verify", "--public-key", str(pem), "--unsafe-no-witness"
            )
            assert verified.returncode == 0, verified.stderr
            log = (tmp_path / "after.jsonl").read_text()
            if '"key_id": "cofre-audit-v2"' in log:
                break
            vault.cofre("audit", "export", "--out", str(tmp_path / "after.jsonl"))
            time.sleep(0.2)
        else:
            raise AssertionError("no head signed by the new key")
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    # The evidence bundle carries the handover: `cofre evidence verify` follows the chain
    # from either pinned key (this vault runs no witness: the opt-out is named).
    bundle = tmp_path / "bundle.tar.gz"
    made = vault.cofre(
        "evidence", "export", "--as", "auditor", "--from", since, "--to", later,
        "--out", str(bundle),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    for pem in (old_pem, new_pem):
        checked = vault.cofre(
            "evidence", "verify", str(bundle), "--public-key", str(pem), "--unsafe-no-witness",
            "--origin", "cofre-audit/cofre",
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout
        assert "handover" in checked.stdout
    assert VISA not in vault.log.read_text()
