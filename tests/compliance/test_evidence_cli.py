"""`cofre evidence export` and `verify` as a QSA runs them, against `cofre serve` in its
own process: a chain of bundles made with `--previous` meets exactly."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hsm.provider import HSMProvider
from tests.support.officers import token_officers
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault
from vault.httpsig import verify_ecdsa_p256

VISA = "4111111111111111"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: SoftHSMToken
) -> Iterator[VaultProcess]:
    vault = make_vault(tmp_path_factory.mktemp("evidence-cli") / "v", softhsm_token, None)
    vault.start()
    yield vault
    vault.stop()


def _traffic(vault: VaultProcess) -> None:
    with vault.client() as c:
        token = c.post("/v1/tokenize", json={"pan": VISA, "format": "pan_last4"}).json()["token"]
    with vault.client("settlement") as c:
        assert c.post("/v1/detokenize", json={"token": token}).status_code == 200


def _later() -> str:
    return (datetime.now(UTC) + timedelta(minutes=1)).isoformat()


def test_chained_exports_meet_exactly(
    served: VaultProcess, tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    _traffic(served)
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    made = served.cofre(
        "evidence", "export", "--from", since, "--to", _later(), "--out", str(first)
    )
    assert made.returncode == 0, made.stderr
    _traffic(served)
    made = served.cofre(
        "evidence", "export", "--previous", str(first), "--to", _later(), "--out", str(second)
    )
    assert made.returncode == 0, made.stderr
    key = tmp_path / "audit.pem"
    # The vault serves a copy of the session's token: the same audit key.
    key.write_bytes(hsm_provider.public_key_pem("cofre-audit-v1"))
    checked = served.cofre(
        "evidence",
        "verify",
        str(second),
        "--public-key",
        str(key),
        "--previous",
        str(first),
        "--unsafe-no-witness",
    )
    # The previous bundle pins the log (no --origin): it was verified before.
    assert checked.returncode == 0, checked.stdout
    assert "starts exactly where the previous bundle ended" in checked.stdout
    # A chained export that starts later than the previous ended is refused by name.
    _traffic(served)
    gap = served.cofre(
        "evidence",
        "export",
        "--previous",
        str(first),
        "--from",
        datetime.now(UTC).isoformat(),
        "--to",
        _later(),
        "--out",
        str(tmp_path / "c.tar.gz"),
    )
    assert gap.returncode == 1
    assert "evidence_chain_broken" in gap.stderr
    assert "in neither bundle" in gap.stderr


def test_sighup_reloads_the_policy_and_the_log_records_it(
    served: VaultProcess, tmp_path: Path
) -> None:
    policy = Path(served.env["COFRE_POLICY_FILE"])
    edited = policy.read_text() + "\n# reviewed 2026-12-01\n"
    policy.write_text(edited)
    assert served.process is not None
    served.process.send_signal(signal.SIGHUP)
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    digest = hashlib.sha256(edited.encode()).hexdigest()
    deadline = time.monotonic() + 30
    while True:
        out = tmp_path / "p.tar.gz"
        made = served.cofre(
            "evidence", "export", "--from", since, "--to", _later(), "--out", str(out)
        )
        assert made.returncode == 0, made.stderr
        with tarfile.open(out) as archive:
            handle = archive.extractfile("policy/versions.jsonl")
            assert handle is not None
            versions = [json.loads(line) for line in handle.read().splitlines()]
        reloads = [
            json.loads(v["payload"])
            for v in versions
            if json.loads(v["payload"])["action"] == "policy.reload"
        ]
        if reloads:
            break
        assert time.monotonic() < deadline, "SIGHUP did not reload the policy"
        time.sleep(0.2)
    assert reloads[-1]["details"]["sha256"] == digest
    assert reloads[-1]["document"] == edited


def test_custody_acknowledgement_lands_in_the_bundle(
    served: VaultProcess, tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    """PCI DSS 3.7.8: an officer signs the custody statement on their own token (`cofre
    keys acknowledge-custody`); the next bundle carries it, verifiable offline; the
    export itself was signed with the auditor's token (MFA)."""
    signed = served.cofre("keys", "acknowledge-custody", "--as", "officer-alice", "--yes")
    assert signed.returncode == 0, signed.stderr
    assert "custody acknowledged by spiffe://cofre/officer-alice" in signed.stdout
    out = tmp_path / "custody.tar.gz"
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    made = served.cofre(
        "evidence", "export", "--as", "auditor", "--from", since, "--to", _later(),
        "--out", str(out),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    with tarfile.open(out) as archive:
        handle = archive.extractfile("keys/custody.json")
        assert handle is not None
        records = json.loads(handle.read())
    alice = token_officers(served.token)["officer-alice"]
    [record] = [r for r in records if r["identity"] == "spiffe://cofre/officer-alice"][-1:]
    assert record["public_key"] == alice.pem
    assert json.loads(record["statement"])["keys"] == [
        "cofre-audit-v1",
        "cofre-fp-v1",
        "cofre-kek-v1",
    ]
    verify_ecdsa_p256(
        alice.pem.encode(), record["statement"].encode(), base64.b64decode(record["signature"])
    )
    key = tmp_path / "audit.pem"
    key.write_bytes(hsm_provider.public_key_pem("cofre-audit-v1"))
    # This vault runs no witness (tests/compliance/test_witnessed_evidence.py does).
    checked = served.cofre(
        "evidence", "verify", str(out), "--public-key", str(key), "--unsafe-no-witness",
        "--origin", "cofre-audit/cofre",
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout
