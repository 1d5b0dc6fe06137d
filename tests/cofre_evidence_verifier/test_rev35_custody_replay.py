"""Review 35: an old custody acknowledgement replayed after the period passed as current.

A custody record may be an entry outside the period (the exporter proves every
acknowledgement in the covering head with its inclusion proof, so one made after the
period's end, before the covering head, is in the bundle too). Its entry's time was
compared with the statement's date, and with nothing else: the operator holding the
HSM PIN wrote, at the log's end, an acknowledgement entry dated a year back carrying an
officer's genuine statement and signature of then, exported the period just before it,
and the verifier listed the officer as the custodian of the keys that old statement
names. Entry times follow leaf order (the entries and boundaries checks rely on it):
an entry after the period cannot be dated before the period began, nor one before it
after it ended, and the statement must be dated within a day of its entry.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import (
    ORIGIN,
    b64,
    build,
    cutoff,
    day_log,
    inclusion,
    payload,
    policy_payload,
    witness,
)

ALICE = "spiffe://cofre/officer-alice"


def _officer() -> tuple[ec.EllipticCurvePrivateKey, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, pem.decode()


def _acknowledgement(
    private: ec.EllipticCurvePrivateKey, pem: str, day: str, identity: str = ALICE
) -> str:
    """Alice's (or `identity`'s) acknowledgement of `day`, as the vault logs it
    (statement and signature)."""
    statement = json.dumps(
        {
            "date": day,
            "identity": identity,
            "keys": ["cofre-kek-v1"],
            "role": "security_officer",
            "text": "I acknowledge custody.",
            "type": "cofre-key-custody/v1",
        },
        sort_keys=True,
    )
    r, s = decode_dss_signature(private.sign(statement.encode(), ec.ECDSA(hashes.SHA256())))
    signature = base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()
    return payload(
        "key.custody.acknowledge",
        f"{day}T10:00:00.000000Z",
        actor=identity,
        document=statement,
        details={"signature": signature, "keyid": "k", "public_key": pem},
    )


@pytest.mark.parametrize(
    ("day", "verified"),
    [("2026-03-02", True), ("2025-03-01", False)],
    ids=["made after the period", "replayed from a year back"],
)
def test_an_acknowledgement_after_the_period_is_dated_after_it(
    tmp_path: Path, day: str, verified: bool
) -> None:
    private, pem = _officer()
    policy = (
        f'[identities."{ALICE}"]\nrole = "security_officer"\noperations = ["key_admin"]\n'
        f'mfa_public_key = """{pem}"""\n'
    )
    log = day_log(20)
    log[0] = policy_payload("2026-03-01T00:00:00.000000Z", policy)
    # The cutoff ends the period at entry 20; the acknowledgement follows it.
    log += [cutoff(), _acknowledgement(private, pem, day)]
    w = witness()
    bundle = build(log, 3, 20, size=len(log), witnesses=[w])
    leaves = [leaf_hash(p.encode()) for p in log]
    entry = json.loads(log[21])
    bundle.files["keys/custody.json"] = json.dumps(
        [
            {
                "identity": ALICE,
                "time": entry["time"],
                "statement": entry["document"],
                "signature": entry["details"]["signature"],
                "public_key": pem,
                "keyid": "k",
                "index": 21,
                "payload": log[21],
                "proof": [b64(h) for h in inclusion(leaves, 21)],
            }
        ]
    ).encode()
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert report.ok is verified, report.problems
    if verified:
        assert report.summary["custodians"] == {"cofre-kek-v1": [ALICE]}
    else:
        assert any("keys/custody.json" in p and "dated" in p for p in report.problems), (
            report.problems
        )


def test_an_identity_in_another_unicode_normal_form_is_another_identity(
    tmp_path: Path,
) -> None:
    """Held: the policy registers `officer-josé` composed (NFC), the entry's actor is
    decomposed (NFD). They draw alike; the verifier, like the vault, compares them as
    written, so the acknowledgement is not Alice's registered key's (it fails)."""
    private, pem = _officer()
    composed, decomposed = "spiffe://cofre/officer-jos\u00e9", "spiffe://cofre/officer-jose\u0301"
    policy = (
        f'[identities."{composed}"]\nrole = "security_officer"\noperations = ["key_admin"]\n'
        f'mfa_public_key = """{pem}"""\n'
    )
    entry = json.loads(_acknowledgement(private, pem, "2026-03-02"))
    statement = json.loads(entry["document"])
    statement["identity"] = decomposed
    document = json.dumps(statement, sort_keys=True)
    r, s = decode_dss_signature(private.sign(document.encode(), ec.ECDSA(hashes.SHA256())))
    entry["details"]["signature"] = base64.b64encode(
        r.to_bytes(32, "big") + s.to_bytes(32, "big")
    ).decode()
    entry.update(actor=decomposed, document=document)
    acknowledgement = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    log = day_log(20)
    log[0] = policy_payload("2026-03-01T00:00:00.000000Z", policy)
    log += [cutoff(), acknowledgement]
    w = witness()
    bundle = build(log, 3, 20, size=len(log), witnesses=[w])
    leaves = [leaf_hash(p.encode()) for p in log]
    bundle.files["keys/custody.json"] = json.dumps(
        [
            {
                "identity": decomposed,
                "statement": document,
                "signature": entry["details"]["signature"],
                "public_key": pem,
                "index": 21,
                "payload": acknowledgement,
                "proof": [b64(h) for h in inclusion(leaves, 21)],
            }
        ]
    ).encode()
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert not report.ok
    assert any("has no registered MFA key" in p for p in report.problems), report.problems
