"""Evidence bundles carry the witnesses' cosignatures, and every verifier a QSA would use
(`cofre evidence verify`, the standalone `cofre-verify`) requires a quorum of them.

The vault runs with a real `cofre witness serve` process configured as its witness.
The reviewer's rewrite (one full-PAN detokenize removed, the tree rebuilt, every head
and the manifest re-signed through the HSM) and a point-in-time restore are replayed
into a second store and exported with the same HSM key: every other check passes, the
witness refuses the head, and the verifiers fail naming the witness check.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select

from audit.heads import log_origin, log_verifier_key
from audit.log import AuditEvent, AuditLog, Outcome
from audit.note import VerifierKey
from audit.publisher import CheckpointPublisher, PinnedWitness
from audit.schema import audit_cosignatures, audit_entries, audit_leaves, audit_queue
from audit.sequencer import Sequencer
from cofre_evidence_verifier.verify import verify_bundle
from compliance.export import EvidenceSources, export_bundle
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.vault_evidence import VAULT_ORIGIN, export_to
from tests.support.witness_process import WitnessProcess, witnessed_audit
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import create_database_engine, migrate
from witness.client import submit_checkpoint

PAN = "4111111111111111"


@pytest.fixture(scope="module")
def witnessed(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[tuple[VaultServer, WitnessProcess]]:
    tmp = tmp_path_factory.mktemp("witnessed")
    pem = HSMTreeHeadSigner(hsm_provider).public_key_pem()
    witness = WitnessProcess(tmp / "witness", [log_verifier_key(log_origin("cofre"), pem).encode()])
    witness.start()
    audit = witnessed_audit(witness)
    try:
        # No custody acknowledgements: the forged export below carries none, and this
        # module is about the witnesses, not the custodians.
        with running_vault(tmp / "vault", hsm_provider, audit=audit, custodians=()) as vault:
            with vault.client("payments") as c:
                token = c.post("/v1/tokenize", json={"pan": PAN, "format": "uuid"}).json()
            with vault.client("settlement") as c:
                for _ in range(3):
                    assert c.post("/v1/detokenize", json={"token": token["token"]}).is_success
            yield vault, witness
    finally:
        witness.stop()


def _export(vault: VaultServer, name: str) -> Path:
    """The last hour's bundle, written to `name` in the vault's directory."""
    return export_to(vault, datetime.now(UTC) - timedelta(hours=1), vault.tmp / name)


def _files(vault: VaultServer, witness: WitnessProcess) -> tuple[Path, Path]:
    pem = vault.tmp / "audit.pem"
    pem.write_bytes(vault.runtime.sequencer.signer.public_key_pem())
    vkey = vault.tmp / "witness.vkey"
    vkey.write_text(witness.vkey + "\n")
    return pem, vkey


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    """The verify command `args`, the log pinned as the auditor pins it (`--origin`)."""
    return subprocess.run(
        [sys.executable, *map(str, args), "--origin", VAULT_ORIGIN],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_witnessed_bundle_verifies_only_with_the_pinned_witness(
    witnessed: tuple[VaultServer, WitnessProcess], tmp_path: Path
) -> None:
    vault, witness = witnessed
    bundle = _export(vault, "witnessed.tar.gz")
    pem, vkey = _files(vault, witness)
    for command in (("-m", "cofre_cli", "evidence", "verify"), ("-m", "cofre_evidence_verifier")):
        ok = _cli(*command, bundle, "--public-key", pem, "--witness-key", vkey)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "cosigned by 1 of the 1 pinned witnesses required" in ok.stdout
        # Fail closed: no witness key pinned.
        alone = _cli(*command, bundle, "--public-key", pem)
        assert alone.returncode == 1
        assert "no witness key pinned" in alone.stdout
        more = _cli(*command, bundle, "--public-key", pem, "--witness-key", vkey, "--quorum", 2)
        assert more.returncode == 1
        assert "1 of the 2 witness cosignatures required" in more.stdout
    stranger = tmp_path / "stranger.vkey"
    stranger.write_text(WitnessProcess(tmp_path / "s", []).vkey)
    other = _cli(
        "-m", "cofre_evidence_verifier", bundle, "--public-key", pem, "--witness-key", stranger
    )
    assert other.returncode == 1
    assert "witness.test/w1 has no cosignature" in other.stdout


def _replay(
    source: Engine, target: Engine, *, skip: int | None = None, upto: int = 1 << 40
) -> None:
    with source.connect() as connection:
        rows = connection.execute(
            select(audit_entries.c.payload, audit_entries.c.created_at)
            .join(audit_leaves, audit_leaves.c.entry_id == audit_entries.c.id)
            .order_by(audit_leaves.c.leaf_index)
        ).all()
        cosignatures = connection.execute(select(audit_cosignatures)).all()
    with target.begin() as connection:
        for index, row in enumerate(rows[:upto]):
            if index != skip:
                key = connection.execute(
                    insert(audit_entries).values(payload=row.payload, created_at=row.created_at)
                ).inserted_primary_key
                assert key is not None
                connection.execute(insert(audit_queue).values(entry_id=key[0]))
        # The operator keeps the witnesses' old cosignatures too.
        for cosignature in cosignatures:
            connection.execute(insert(audit_cosignatures).values(**cosignature._mapping))


def _detokenize_index(engine: Engine) -> int:
    with engine.connect() as connection:
        rows = connection.execute(
            select(audit_leaves.c.leaf_index, audit_entries.c.payload)
            .join(audit_entries, audit_entries.c.id == audit_leaves.c.entry_id)
            .order_by(audit_leaves.c.leaf_index)
        ).all()
    return next(int(r.leaf_index) for r in rows if '"detokenize"' in r.payload)


@pytest.mark.parametrize("scenario", ["rewrite", "restore"])
def test_rewritten_or_restored_log_fails_every_verifier(
    witnessed: tuple[VaultServer, WitnessProcess], tmp_path: Path, scenario: str
) -> None:
    vault, witness = witnessed
    _export(vault, f"before-{scenario}.tar.gz")  # the witness has seen the whole log
    genuine = vault.runtime.engine
    copy = create_database_engine(f"sqlite:///{tmp_path / 'copy.sqlite3'}")
    try:
        migrate(copy)
        if scenario == "rewrite":
            _replay(genuine, copy, skip=_detokenize_index(genuine))
        else:
            with genuine.connect() as connection:
                size = len(connection.execute(select(audit_leaves.c.leaf_index)).all())
            _replay(genuine, copy, upto=size - 2)
            # ... and new writes on top of the restored log.
            with copy.begin() as connection:
                AuditLog().append_many(
                    connection,
                    [AuditEvent(action="tokenize", outcome=Outcome.SUCCESS, actor="after")] * 2,
                )
        signer = vault.runtime.sequencer.signer
        sequencer = Sequencer(copy, signer, sign_every_entries=10_000, sign_every_seconds=3600)

        def submit(pinned: PinnedWitness, body: bytes) -> tuple[int, str, str]:
            answer = submit_checkpoint(pinned.url, body)
            return answer.status, answer.content_type, answer.text

        publisher = CheckpointPublisher(
            copy,
            [PinnedWitness(witness.url, VerifierKey.parse(witness.vkey))],
            signer.public_key_pem,
            submit,
        )
        streamed = export_bundle(
            copy,
            signer,
            sequencer,
            EvidenceSources(lambda: {}, lambda: [], {}, {}, []),
            generator="officer-with-the-hsm-pin",
            period_from=datetime.now(UTC) - timedelta(hours=1),
            period_to=datetime.now(UTC) + timedelta(seconds=5),
            publish=publisher.publish_once,
        )
        with streamed:
            data = streamed.read()
        assert publisher.last_errors[witness.key.name]  # the witness refused the head
    finally:
        copy.dispose()
    forged = tmp_path / "forged.tar.gz"
    forged.write_bytes(data)
    pem, vkey = _files(vault, witness)
    unsafe = verify_bundle(forged, pem.read_bytes(), unsafe_no_witnesses=True, origin=VAULT_ORIGIN)
    assert unsafe.ok, unsafe.problems  # the operator's key alone: VERIFIED (the finding)
    report = verify_bundle(
        forged,
        pem.read_bytes(),
        witness_keys=[VerifierKey.parse(witness.vkey)],
        origin=VAULT_ORIGIN,
    )
    assert not report.ok
    assert report.missing_checks() == ["witnesses"]
    assert "is not witnessed" in " ".join(report.problems)
    for command in (("-m", "cofre_cli", "evidence", "verify"), ("-m", "cofre_evidence_verifier")):
        result = _cli(*command, forged, "--public-key", pem, "--witness-key", vkey)
        assert result.returncode == 1
        assert "audit/checkpoint.note: covering head" in result.stdout
        assert "is not witnessed" in result.stdout
