"""Evidence bundles across an audit key rotation: the bundle carries the handover
checkpoint(s) (`audit/handovers.jsonl`), and the offline verifier follows the key chain
from the key the auditor pinned, old or new. A forged handover, or heads signed by a key
no handover introduced, fail it with a message naming what is wrong.

The two audit keys are software ECDSA P-256 keys behind the HSM signer's interface (the
ceremony itself runs against the HSM in tests/vault/test_audit_rotation.py)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from audit.handover import hold_sequencer_lock, record_handover, sign_handover
from audit.heads import SignedTreeHead, checkpoint_text, log_origin, log_verifier_key
from audit.log import AuditEvent, AuditLog, Outcome
from audit.note import VerifierKey, parse_note, require_quorum
from audit.publisher import CheckpointPublisher, PinnedWitness
from audit.sequencer import Sequencer
from audit.store import AuditStore
from cofre_evidence_verifier.verify import verify_bundle
from compliance.export import EvidenceSources, write_bundle
from tests.support.signers import SoftSigner
from tests.support.vault_evidence import VAULT_ORIGIN
from tests.support.witness_process import WitnessProcess
from vault.policy_record import policy_event
from witness.client import submit_checkpoint

SOURCES = EvidenceSources(
    key_inventory=dict, ceremonies=list, settings={}, tls_settings={}, certificates=[]
)


def _append(engine: Engine, count: int, tag: str) -> None:
    with engine.begin() as connection:
        for i in range(count):
            AuditLog().append(
                connection,
                AuditEvent(action="tokenize", outcome=Outcome.SUCCESS, actor=f"{tag}-{i}"),
            )


def _load_policy(engine: Engine) -> None:
    """A policy load at the log's start, so the bundle has a policy in force."""
    with engine.begin() as connection:
        AuditLog().append(
            connection, policy_event("policy.load", actor="cofre", source="t", text="# p\n")
        )


def _hand_over(engine: Engine, head: SignedTreeHead, old: SoftSigner, new: SoftSigner) -> None:
    """Record the handover from `old`'s key to `new`'s at `head`, as the rotation does."""
    with engine.begin() as connection:
        hold_sequencer_lock(connection)
        record_handover(connection, head.tree_size, new.key_id, sign_handover(head, old, new))


def _rotated_log(engine: Engine, old: SoftSigner, new: SoftSigner) -> SignedTreeHead:
    """A log across an audit-key rotation: a policy load and 6 entries signed by `old`,
    the handover to `new` at that head, then 5 entries signed by `new`. Returns the head
    handed over at."""
    _load_policy(engine)
    _append(engine, 6, "a")
    Sequencer(engine, old).drain()
    head = AuditStore(engine).latest_head()
    assert head is not None
    _hand_over(engine, head, old, new)
    _append(engine, 5, "b")
    Sequencer(engine, new).drain()
    return head


def _export(
    engine: Engine,
    signer: SoftSigner,
    since: datetime,
    out: Path,
    publish: Callable[[], object] | None = None,
) -> Path:
    with out.open("wb") as handle:
        write_bundle(
            engine,
            signer,
            Sequencer(engine, signer),
            SOURCES,
            out=handle,
            generator="auditor",
            period_from=since,
            period_to=datetime.now(UTC) + timedelta(minutes=1),
            publish=publish,
        )
    return out


def _rewrite(bundle: Path, out: Path, name: str, data: bytes) -> Path:
    """The bundle with member `name` replaced (the manifest then no longer matches)."""
    with tarfile.open(bundle, "r:gz") as source, tarfile.open(out, "w:gz") as target:
        for member in source.getmembers():
            content = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == name:
                content, member.size = data, len(data)
            target.addfile(member, io.BytesIO(content))
    return out


def test_bundle_across_a_rotation_verifies_from_either_key(engine: Engine, tmp_path: Path) -> None:
    old, new, rogue = (SoftSigner(f"cofre-audit-v{n}") for n in (1, 2, 3))
    since = datetime.now(UTC) - timedelta(seconds=1)
    _rotated_log(engine, old, new)
    bundle = _export(engine, new, since, tmp_path / "b.tar.gz")
    for pinned in (old, new):
        report = verify_bundle(
            bundle, pinned.public_key_pem(), unsafe_no_witnesses=True, origin=VAULT_ORIGIN
        )
        assert report.ok, report.problems
        assert any("handover" in check for check in report.checks), report.checks
    # Pinned to a key that is not on the chain: refused, by name.
    report = verify_bundle(
        bundle, rogue.public_key_pem(), unsafe_no_witnesses=True, origin=VAULT_ORIGIN
    )
    assert not report.ok
    assert any("none of the pinned audit keys" in p for p in report.problems), report.problems

    # A forged handover (the new key's signature on both lines) is no handover.
    note = AuditStore(engine).handover_notes()[0]
    text = note[: note.rindex("\n\n") + 1]
    signature_lines = note[len(text) + 1 :].splitlines(keepends=True)
    forged_line = signature_lines[1].split(" ")
    forged_old = [*signature_lines[0].split(" ")[:2], forged_line[2]]
    forged = text + "\n" + " ".join(forged_old) + signature_lines[1]
    forged_bundle = _rewrite(
        bundle,
        tmp_path / "forged.tar.gz",
        "audit/handovers.jsonl",
        (json.dumps({"note": forged}) + "\n").encode(),
    )
    report = verify_bundle(
        forged_bundle, old.public_key_pem(), unsafe_no_witnesses=True, origin=VAULT_ORIGIN
    )
    assert not report.ok
    assert any("not signed by the old key" in p for p in report.problems), report.problems

    # Without the handover, the new key's heads are signed by a key nobody introduced.
    stripped = _rewrite(bundle, tmp_path / "stripped.tar.gz", "audit/handovers.jsonl", b"")
    report = verify_bundle(
        stripped, old.public_key_pem(), unsafe_no_witnesses=True, origin=VAULT_ORIGIN
    )
    assert not report.ok
    assert any("signed by another key" in p for p in report.problems), report.problems


def test_a_head_at_the_handover_size_must_be_the_handover_tree(
    engine: Engine, tmp_path: Path
) -> None:
    """Security review (LOW): pinning the new key vouched for the old key at every size
    up to the handover's, so a leaked old key signed another tree at that very size."""
    old, new = (SoftSigner(f"cofre-audit-v{n}") for n in (1, 2))
    since = datetime.now(UTC) - timedelta(seconds=1)
    head = _rotated_log(engine, old, new)
    bundle = _export(engine, new, since, tmp_path / "b.tar.gz")
    with tarfile.open(bundle, "r:gz") as source:
        member = source.extractfile("audit/heads.jsonl")
        assert member is not None
        lines = [json.loads(line) for line in member.read().decode().splitlines()]
    assert head.tree_size in [line["tree_size"] for line in lines]
    # The leaked old key signs a different tree at the handover's size.
    text = checkpoint_text("cofre", head.tree_size, b"\x01" * 32, head.timestamp_ms)
    forged = SignedTreeHead(
        head.tree_size, b"\x01" * 32, head.timestamp_ms, old.key_id, text, old.sign(text.encode())
    ).as_json()
    rewritten = [forged if line["tree_size"] == head.tree_size else line for line in lines]
    data = "".join(json.dumps(line) + "\n" for line in rewritten).encode()
    altered = _rewrite(bundle, tmp_path / "altered.tar.gz", "audit/heads.jsonl", data)
    report = verify_bundle(
        altered, new.public_key_pem(), unsafe_no_witnesses=True, origin=VAULT_ORIGIN
    )
    assert not report.ok
    wanted = f"head {head.tree_size}: its root is not the root of the key handover at size"
    assert any(wanted in p for p in report.problems), report.problems


def test_a_witnessed_rotation_ships_the_handover_cosignature(
    engine: Engine, tmp_path: Path
) -> None:
    """Review 29 M3: the publisher keeps the witness's cosignature of the handover
    checkpoint and the bundle carries it (a cosignature line of the handover's note),
    so a verifier requiring witnesses follows the rotation."""
    old, new = (SoftSigner(f"cofre-audit-v{n}") for n in (1, 2))
    process = WitnessProcess(
        tmp_path / "witness", [log_verifier_key(log_origin("cofre"), old.public_key_pem()).encode()]
    )
    process.start()
    try:
        pinned = VerifierKey.parse(process.vkey)
        current = [old]

        def submit(witness: PinnedWitness, body: bytes) -> tuple[int, str, str]:
            answer = submit_checkpoint(witness.url, body)
            return answer.status, answer.content_type, answer.text

        def current_key() -> bytes:  # what the vault's signer answers: the key now
            return current[0].public_key_pem()

        publisher = CheckpointPublisher(
            engine, [PinnedWitness(process.url, pinned)], current_key, submit
        )
        since = datetime.now(UTC) - timedelta(seconds=1)
        _load_policy(engine)
        _append(engine, 6, "a")
        Sequencer(engine, old).drain()
        publisher.publish_once()
        head = AuditStore(engine).latest_head()
        assert head is not None
        _hand_over(engine, head, old, new)
        current[0] = new
        process.trust_key(log_verifier_key(log_origin("cofre"), new.public_key_pem()).encode())
        _append(engine, 5, "b")
        Sequencer(engine, new).drain()
        assert publisher.publish_once()[pinned.name].startswith("cosigned")
        bundle = _export(engine, new, since, tmp_path / "b.tar.gz", publish=publisher.publish_once)
    finally:
        process.stop()
    with tarfile.open(bundle, "r:gz") as archive:
        member = archive.extractfile("audit/handovers.jsonl")
        assert member is not None
        (line,) = member.read().decode().splitlines()
    text, signatures = parse_note(json.loads(line)["note"])
    assert [s.name for s in signatures] == ["cofre-audit/cofre"] * 2 + [pinned.name]
    require_quorum(text, signatures, [pinned], 1)
    report = verify_bundle(bundle, old.public_key_pem(), witness_keys=[pinned], origin=VAULT_ORIGIN)
    assert report.ok, report.problems
    wanted = f"key handover at size {head.tree_size} cosigned by 1 of the 1"
    assert any(wanted in check for check in report.checks), report.checks
