"""The verifier's parsing layer against the bundle's producer (session 37: an operator
holding the HSM PIN and the database, who wants a bundle read one way by the verifier
and another by a person or another tool).

Check 6c reads each officer's signed request from the ``document`` of a
``key.rotation.propose`` or ``key.rotation.approve`` entry: a JSON text inside the
entry's payload, and inside it the request body the officer signed (``{"kind": ...}``).
The bundle's own JSON refuses a key twice (review 33), but these two texts were read
with the standard parser, which keeps the last value: a stored request whose decoy
fields came first (another authority, another body, another signature) verified, while
a reader that keeps the first value saw the decoys. They are refused the same way now.

The RFC 9162 subtree vectors (transparency-dev/merkle `testdata/subtree*`, optional for
Cofre: the verifier has no proofs over ranges not starting at 0) are run where they are
plain RFC 9162 proofs: every case of a range starting at leaf 0 is an inclusion proof in
the tree of its end's size, or a consistency proof from that size.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from cofre_evidence_verifier.errors import NoteError, ProofError, SignedRequestError
from cofre_evidence_verifier.keychain import KeyChain, handover_note, handover_text, parse_handover
from cofre_evidence_verifier.merkle import leaf_hash, verify_consistency, verify_inclusion
from cofre_evidence_verifier.note import Checkpoint, VerifierKey, ecdsa_verifier_key
from cofre_evidence_verifier.request_signature import (
    PROPOSALS,
    SignedRequest,
    verify_signed_request,
)
from cofre_evidence_verifier.verify import verify_bundle
from tests.cofre_evidence_verifier.test_rev35_custody_replay import _acknowledgement, _officer
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    b64,
    build,
    cutoff,
    day_log,
    inclusion,
    policy_payload,
    witness,
)
from tests.support.officers import new_software_officer, signed_action, signed_approval
from tests.support.vectors import rfc9162_cases

ALICE = new_software_officer("officer-alice")
CEREMONY = "2b0f7e0c-0d3a-4c51-8f5e-9d1c6a7b8e90"


def _decoy_first(stored: str, key: str, decoy: object) -> str:
    """The stored request `stored` with `key` given once more, before the others, with
    `decoy`: the same request to a parser that keeps the last value."""
    doubled = "{" + json.dumps(key) + ": " + json.dumps(decoy) + ", " + stored.lstrip()[1:]
    assert json.loads(doubled) == json.loads(stored)
    return doubled


@pytest.mark.parametrize(
    ("key", "decoy"),
    [
        ("authority", "vault.prod.example"),
        ("signature", "sig1=:AAAA:"),
        ("body", base64.b64encode(b'{"kind": "data"}').decode()),
        ("path", "/v1/admin/keys/rotations/00000000-0000-4000-8000-000000000000/approve"),
    ],
)
def test_a_field_twice_in_a_stored_signed_request_is_refused(key: str, decoy: str) -> None:
    genuine = signed_approval(ALICE, CEREMONY, authority="vault.staging.example").to_json()
    verify_signed_request(SignedRequest.from_json(genuine), ALICE.pem)  # the last values
    with pytest.raises(SignedRequestError, match="twice"):
        SignedRequest.from_json(_decoy_first(genuine, key, decoy))


def test_a_signed_body_with_the_kind_twice_proposes_no_kind() -> None:
    # The officer's client never writes this body; a reader keeping the first value saw
    # a data-key rotation where the verifier counted an audit-key one.
    body = b'{"kind": "data", "kind": "audit"}'
    stored = signed_action(ALICE, PROPOSALS, body).to_json()
    request = SignedRequest.from_json(stored)
    verify_signed_request(request, ALICE.pem)  # the officer did sign these bytes
    assert request.proposed_kind() is None
    clean = signed_action(ALICE, PROPOSALS, b'{"kind": "audit"}').to_json()
    assert SignedRequest.from_json(clean).proposed_kind() == "audit"


@pytest.mark.parametrize("body", [b'{"kind": NaN}', b'{"kind": 1e999}', b"[" * 100_000])
def test_a_signed_body_json_never_holds_proposes_no_kind(body: bytes) -> None:
    request = SignedRequest.from_json(signed_action(ALICE, PROPOSALS, body).to_json())
    assert request.proposed_kind() is None


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _from_leaf_zero(kind: str) -> list[tuple[str, dict[str, Any]]]:
    cases = [(name, case) for name, case in rfc9162_cases(kind) if case["start"] == 0]
    assert len(cases) > 90, kind  # the vectors are there: a missing folder runs nothing
    return cases


SUBTREE_INCLUSION = _from_leaf_zero("subtreeinclusion")
SUBTREE_CONSISTENCY = _from_leaf_zero("subtreeconsistency")


@pytest.mark.parametrize(("name", "case"), SUBTREE_INCLUSION, ids=[n for n, _ in SUBTREE_INCLUSION])
def test_subtree_inclusion_vectors_from_leaf_zero(name: str, case: dict[str, Any]) -> None:
    proof = [_b64(p) for p in case["proof"] or []]
    args = (_b64(case["leafHash"]), case["leafIdx"], case["end"], proof, _b64(case["root"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize(
    ("name", "case"), SUBTREE_CONSISTENCY, ids=[n for n, _ in SUBTREE_CONSISTENCY]
)
def test_subtree_consistency_vectors_from_leaf_zero(name: str, case: dict[str, Any]) -> None:
    proof = [_b64(p) for p in case["proof"] or []]
    args = (case["end"], case["size"], proof, _b64(case["root1"]), _b64(case["root2"]))
    # The one difference: the subtree profile accepts the empty range [0, 0) as its own
    # subtree of an empty tree; RFC 9162's verifier (and transparency-dev/merkle's
    # `proof.VerifyConsistency`, the consistency vectors) refuse a proof from size 0.
    if case["wantErr"] or case["end"] == 0:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


@pytest.mark.parametrize(
    ("identity", "counted"),
    [("spiffe://cofre/officer-alice", True), ("spiffe://cofre/officer-\u0430lice", False)],
    ids=["the officer", "a lookalike (Cyrillic a)"],
)
def test_a_lookalike_custodian_no_certificate_can_carry_does_not_count(
    tmp_path: Path, identity: str, counted: bool
) -> None:
    """Check 6b listed the lookalike as the kek's custodian, drawn as Alice: the operator
    registered it (a key of theirs) in a policy version they logged and acknowledged
    custody with that key."""
    private, pem = _officer()
    policy = (
        f'[identities."{identity}"]\nrole = "security_officer"\noperations = ["key_admin"]\n'
        f'mfa_public_key = """{pem}"""\n'
    )
    log = day_log(20)
    log[0] = policy_payload("2026-03-01T00:00:00.000000Z", policy)
    log += [cutoff(), _acknowledgement(private, pem, "2026-03-02", identity)]
    w = witness()
    bundle = build(log, 3, 20, size=len(log), witnesses=[w])
    entry = json.loads(log[21])
    leaves = [leaf_hash(p.encode()) for p in log]
    record = {"identity": identity, "time": entry["time"], "statement": entry["document"]}
    record |= {"signature": entry["details"]["signature"], "public_key": pem, "keyid": "k"}
    record |= {"index": 21, "payload": log[21], "proof": [b64(h) for h in inclusion(leaves, 21)]}
    bundle.files["keys/custody.json"] = json.dumps([record]).encode()
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"), bundle.key.pem, witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )  # fmt: skip
    assert report.ok is counted, report.problems
    if not counted:
        assert any("\\u0430" in p and "not printable ASCII" in p for p in report.problems)


def _compressed(key: AuditKey) -> VerifierKey:
    """`key`'s type-0x02 vkey with its SubjectPublicKeyInfo holding the compressed point
    (02/03 || X): another spelling of the same public key, with another key ID."""
    spki = serialization.load_pem_public_key(key.pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    point = key.private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    der = spki[: -(65 + 3)] + bytes([0x03, 34, 0x00]) + point  # BIT STRING of 33 bytes
    der = bytes([0x30, len(der) - 2]) + der[2:]
    assert serialization.load_der_public_key(der) == key.private.public_key()
    return VerifierKey(ORIGIN, int.from_bytes(hashlib.sha256(der).digest()[:4]), 0x02, der)


def _note(
    old: AuditKey, old_vkey: VerifierKey, new: AuditKey, new_vkey: VerifierKey, size: int
) -> str:
    root = hashlib.sha256(str(size).encode()).digest()
    text = handover_text(Checkpoint(ORIGIN, size, root), old_vkey, new_vkey)
    return handover_note(text, old_vkey, old.sign(text.encode()), new_vkey, new.sign(text.encode()))


def test_a_key_spelt_with_its_compressed_point_is_refused() -> None:
    """The chain compared keys as SubjectPublicKeyInfo bytes: a handover from K1 to K1
    spelt with its compressed point was no handover to itself, and the retired K1
    revived so (K1 -> K2 -> K1') linked up past review 36's check. The vault and Go's
    x509 write the uncompressed point; any other spelling of a key is refused."""
    one, two = AuditKey(), AuditKey()
    one_v, two_v = ecdsa_verifier_key(ORIGIN, one.pem), ecdsa_verifier_key(ORIGIN, two.pem)
    one_c = _compressed(one)
    assert one_c.public != one_v.public
    with pytest.raises(NoteError, match="not the key's own encoding"):
        VerifierKey.parse(one_c.encode())
    with pytest.raises(NoteError):
        parse_handover(_note(one, one_v, one, one_c, 10))
    notes = [_note(one, one_v, two, two_v, 10), _note(two, two_v, one, one_c, 20)]
    with pytest.raises(NoteError):
        KeyChain.build([one.pem], notes)
