"""atk48a: one signed proposal, two rotations, proven dual-controlled offline.

Session 31's review found that a ceremony's id derives from its proposal's
``Signature`` header *as sent*, and that text is not all the officer's token signed:
the label (``cofre=``) is outside the RFC 9421 signature base, and an ECDSA signature
(r, s) also verifies as (r, n - s). A copy of a ceremony that had run, its proposal
relabelled or negated, had a new id, a proposal that verified under Alice's key for
that id, and one officer's approval (Bob's) started a second rotation on Alice's one
proposal. The vault now refuses it (``details.proposal`` on each start, the digest of
the signed parameters; ``tests/api/test_rev31c_ceremony_variant.py``).

Check 6c of the offline verifier never learnt it: it tells ceremonies apart by that
same malleable id only (``dual_control._check_start``: "no other start of the
ceremony", compared by id; ``dual_control_log.started_before`` likewise). The attack
(the operator who holds the HSM PIN and the database, whose log entries the vault's
key signs and the witnesses cosign; docs/threat-model.md's row "Operator with the HSM
PIN and database write access, with one real officer"): Alice proposes a KEK rotation,
Bob approves, it runs (entries 5-7). The operator writes a ``key.rotation.propose``
of the relabelled (or negated) copy of Alice's proposal, under its new id, and has Bob
approve that "pending" ceremony (one officer's consent), then writes its start: a
second KEK rotation, v2 -> v3. Both in one bundle, in the proposal's life. The
verifier reported the second rotation as proposed by Alice and approved by Bob, dual
control proven, and the bundle VERIFIED; the vault itself would have refused that
approval (``its proposal already started a ceremony``).

Now check 6c tells signed proposals apart as the vault does, by the digest of their
signed parameters (created, nonce, key id: `SignedRequest.proposal_digest`, the vault's
`proposal_digest` byte for byte), and fails a ceremony whose proposal already started
another one under another id: in the bundle (`dual_control_log.run_problem`), and across
``--previous`` (`started_before`). All four tests failed before.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import Row

from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.request_signature import SignedRequest
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    build,
    chained,
    day_log,
    payload,
    policy_payload,
    witness,
)
from tests.support.officers import (
    new_software_officer,
    officers_policy,
    signed_action,
    signed_proposal,
)
from vault._ceremony_guards import proposal_digest
from vault._signed_registration import signed_document
from vault.approval_proof import SignedAction, approval_path

ALICE, BOB = "spiffe://cofre/officer-alice", "spiffe://cofre/officer-bob"
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's order


def _unix(at: str) -> int:
    return int(datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(UTC).timestamp())


def _relabelled(action: SignedAction) -> SignedAction:
    """The same signed request with its signature's label renamed in both headers (the
    label is not in the signature base: it still verifies)."""
    label = action.signature.split("=", 1)[0]
    other = "cofrf" if label != "cofrf" else "cofrg"
    return dataclasses.replace(
        action,
        signature=other + action.signature[len(label) :],
        signature_input=other + action.signature_input[len(label) :],
    )


def _negated(action: SignedAction) -> SignedAction:
    """The same signed request with s replaced by n - s (it still verifies)."""
    label, value = action.signature.split("=", 1)
    raw = base64.b64decode(value.strip(":"))
    s = int.from_bytes(raw[32:], "big")
    raw = raw[:32] + (_N - s).to_bytes(32, "big")
    return dataclasses.replace(action, signature=f"{label}=:{base64.b64encode(raw).decode()}:")


def _registration(
    version: int, ceremony: str, proposal: SignedAction, approval: SignedAction, at: str
) -> str:
    """The `key.register` of `cofre-kek-v<version>` the vault writes with the start of
    `ceremony` (check 6d ties them), carrying the officers' signed requests."""
    return payload(
        "key.register",
        at,
        actor=BOB,
        key_id=f"cofre-kek-v{version}",
        details={
            "label": f"cofre-kek-v{version}",
            "how": f"created by key ceremony {ceremony}",
            "ceremony": ceremony,
        },
        document=signed_document(ALICE, proposal.to_json(), [(BOB, approval.to_json())]),
    )


def _log(
    variant: Callable[[SignedAction], SignedAction], second_at: tuple[int, int]
) -> tuple[list[str], str, str]:
    """The log: Alice's and Bob's one KEK ceremony at entries 4-7 (05:00Z: proposal,
    approval, registration of cofre-kek-v2, start), then the operator's copy of Alice's
    proposal under another id at entry `second_at[0]` and, from the hour
    `second_at[1]`, Bob's approval of it, the registration of cofre-kek-v3 and its start
    (kek v2 -> v3).
    Returns the log and both ceremony ids."""
    alice, bob = new_software_officer("officer-alice"), new_software_officer("officer-bob")
    policy = officers_policy([(ALICE, alice), (BOB, bob)])
    at = "2026-03-01T05:00:00.000000Z"
    proposal = signed_proposal(alice, "kek", created=_unix(at))
    ceremony = proposal.ceremony_id()
    copy = variant(proposal)
    second = copy.ceremony_id()
    assert second != ceremony
    log = day_log(20)
    log[0] = policy_payload("2026-03-01T00:00:00.000000Z", policy)
    # The officers' one ceremony: Alice proposes, Bob approves, it starts (kek v1 -> v2).
    log[4] = payload(
        "key.rotation.propose",
        at,
        actor=ALICE,
        key_id=ceremony,
        details={"kind": "kek"},
        document=proposal.to_json(),
    )
    approval = signed_action(bob, approval_path(ceremony), created=_unix(at) + 60)
    log[5] = payload(
        "key.rotation.approve",
        "2026-03-01T05:01:00.000000Z",
        actor=BOB,
        key_id=ceremony,
        details={"approvals": 1},
        document=approval.to_json(),
    )
    log[6] = _registration(2, ceremony, proposal, approval, "2026-03-01T05:01:00.500000Z")
    log[7] = payload(
        "key.rotation.start",
        "2026-03-01T05:01:00.500000Z",
        actor=BOB,
        key_id=ceremony,
        details={"kind": "kek", "old_version": 1, "new_version": 2, "records": 0},
    )
    # The operator's copy of Alice's proposal under another id, written by them; Bob is
    # asked to approve "Alice's pending rotation" and does (one officer's consent).
    index, hour = second_at
    log[index] = payload(
        "key.rotation.propose",
        f"2026-03-01T{hour:02d}:00:00.000000Z",
        actor=ALICE,
        key_id=second,
        details={"kind": "kek"},
        document=copy.to_json(),
    )
    approved = f"2026-03-01T{hour + 1:02d}:00:00.000000Z"
    again = signed_action(bob, approval_path(second), created=_unix(approved))
    log[index + 1] = payload(
        "key.rotation.approve",
        approved,
        actor=BOB,
        key_id=second,
        details={"approvals": 1},
        document=again.to_json(),
    )
    started = f"2026-03-01T{hour + 1:02d}:00:00.500000Z"
    log[index + 2] = _registration(3, second, copy, again, started)
    log[index + 3] = payload(
        "key.rotation.start",
        f"2026-03-01T{hour + 1:02d}:00:00.500000Z",
        actor=BOB,
        key_id=second,
        details={"kind": "kek", "old_version": 2, "new_version": 3, "records": 0},
    )
    return log, ceremony, second


def _checked_both(report: Report, ids: set[str]) -> None:
    summary = report.summary.get("dual_control")
    assert isinstance(summary, list)
    assert ids <= {c["ceremony"] for c in summary}, summary
    # Check 6d ties cofre-kek-v3's registration to the copy's start: the key is "put into
    # use by a key ceremony" whose second officer is Alice's one proposal, counted again.
    assert not [p for p in report.problems if p.startswith("key registrations:")], report.problems


VARIANTS = pytest.mark.parametrize(
    "variant", [_relabelled, _negated], ids=["relabelled", "negated"]
)


@VARIANTS
def test_one_signed_proposal_does_not_prove_two_rotations(
    tmp_path: Path, variant: Callable[[SignedAction], SignedAction]
) -> None:
    log, ceremony, second = _log(variant, (9, 7))
    w, key = witness(), AuditKey()
    bundle = build(log, 0, len(log), key=key, witnesses=[w])
    report = verify_bundle(
        bundle.write(tmp_path / "bundle.tar.gz"),
        key.pem,
        witness_keys=[w.verifier_key()],
        authorities=["localhost"],
        origin=ORIGIN,
    )
    _checked_both(report, {ceremony, second})
    assert not report.ok, (
        "Alice signed one proposal; the bundle proves two KEK rotations dual-controlled "
        "(the second on Bob's consent alone): VERIFIED"
    )


@VARIANTS
def test_one_signed_proposal_does_not_prove_a_rotation_in_each_of_two_periods(
    tmp_path: Path, variant: Callable[[SignedAction], SignedAction]
) -> None:
    """The same across a period boundary, with `--previous` (as
    `dual_control_log.started_before` catches a second start of the same id): the
    officers' ceremony in the first period, the copy in the second."""
    log, _ceremony, second = _log(variant, (11, 11))
    w, key = witness(), AuditKey()
    first, then = chained(log, 10, key=key, witnesses=[w])
    report = verify_bundle(
        then.write(tmp_path / "second.tar.gz"),
        key.pem,
        first.write(tmp_path / "first.tar.gz"),
        witness_keys=[w.verifier_key()],
        authorities=["localhost"],
        origin=ORIGIN,
    )
    _checked_both(report, {second})
    assert not report.ok, (
        "Alice signed one proposal, which started the previous period's KEK rotation; this "
        "period's second one, on Bob's consent alone, is proven dual-controlled: VERIFIED"
    )


def test_the_verifier_digests_a_proposal_as_the_vault_does() -> None:
    """The digest the vault writes on each start (``details.proposal``) is the one the
    verifier computes from the stored proposal, and a relabelled or negated copy has the
    same one (that is the point) under another ceremony id."""
    alice = new_software_officer("officer-alice")
    proposal = signed_proposal(alice, "kek", created=_unix("2026-03-01T05:00:00.000000Z"))
    row = cast("Row[Any]", SimpleNamespace(proposer_proof=proposal.to_json()))
    ours = SignedRequest.from_json(proposal.to_json()).proposal_digest()
    assert ours is not None
    assert ours == proposal_digest(row)
    for variant in (_relabelled, _negated):
        copy = variant(proposal)
        assert copy.ceremony_id() != proposal.ceremony_id()
        assert SignedRequest.from_json(copy.to_json()).proposal_digest() == ours
    other = signed_proposal(alice, "kek", created=_unix("2026-03-01T05:00:00.000000Z"))
    assert SignedRequest.from_json(other.to_json()).proposal_digest() != ours


@pytest.mark.parametrize("named", ["own", "another"])
def test_a_start_naming_another_proposal_than_its_own_fails(tmp_path: Path, named: str) -> None:
    """A start's ``details.proposal`` (the vault writes its proposal's digest there) that
    is not the digest of the proposal the ceremony verified fails check 6c; its own
    passes."""
    log, ceremony, _second = _log(_relabelled, (9, 7))
    log = log[:8] + day_log(20)[8:]  # the officers' one ceremony only
    proposal = SignedRequest.from_json(json.loads(log[4])["document"]).proposal_digest()
    start = json.loads(log[7])
    start["details"]["proposal"] = proposal if named == "own" else "ab" * 32
    log[7] = json.dumps(start, separators=(",", ":"), sort_keys=True)
    w, key = witness(), AuditKey()
    bundle = build(log, 0, len(log), key=key, witnesses=[w])
    report = verify_bundle(
        bundle.write(tmp_path / "bundle.tar.gz"),
        key.pem,
        witness_keys=[w.verifier_key()],
        authorities=["localhost"],
        origin=ORIGIN,
    )
    failed = [p for p in report.problems if ceremony in p and "another signed proposal" in p]
    assert (failed != []) is (named == "another"), report.problems
    assert report.ok is (named == "own"), report.problems


def _cancelled_log(*, names_proposal: bool, copy: bool) -> tuple[list[str], str]:
    """Alice proposes a KEK rotation and cancels it (entries 4-5; the cancel names the
    proposal's digest when `names_proposal`, as the vault writes it since session 31c);
    then the operator starts it anyway with Bob's approval (entries 9-12): under a copy
    of the proposal with another id when `copy`, else under its own id, set back to
    pending. Returns the log and the started ceremony's id."""
    alice, bob = new_software_officer("officer-alice"), new_software_officer("officer-bob")
    at = "2026-03-01T05:00:00.000000Z"
    proposal = signed_proposal(alice, "kek", created=_unix(at))
    ceremony = proposal.ceremony_id()
    digest = SignedRequest.from_json(proposal.to_json()).proposal_digest()
    log = day_log(20)
    log[0] = policy_payload(
        "2026-03-01T00:00:00.000000Z", officers_policy([(ALICE, alice), (BOB, bob)])
    )
    log[4] = payload(
        "key.rotation.propose", at, actor=ALICE, key_id=ceremony,
        details={"kind": "kek"}, document=proposal.to_json(),
    )  # fmt: skip
    log[5] = payload(
        "key.rotation.cancel", "2026-03-01T05:30:00.000000Z", actor=ALICE, key_id=ceremony,
        details={"proposal": digest} if names_proposal else {},
    )  # fmt: skip
    started = _relabelled(proposal) if copy else proposal
    second = started.ceremony_id()
    if copy:
        log[9] = payload(
            "key.rotation.propose", "2026-03-01T07:00:00.000000Z", actor=ALICE,
            key_id=second, details={"kind": "kek"}, document=started.to_json(),
        )  # fmt: skip
    approved = "2026-03-01T08:00:00.000000Z"
    approval = signed_action(bob, approval_path(second), created=_unix(approved))
    log[10] = payload(
        "key.rotation.approve", approved, actor=BOB, key_id=second,
        details={"approvals": 1}, document=approval.to_json(),
    )  # fmt: skip
    log[11] = _registration(2, second, started, approval, "2026-03-01T08:00:00.500000Z")
    log[12] = payload(
        "key.rotation.start", "2026-03-01T08:00:00.500000Z", actor=BOB, key_id=second,
        details={"kind": "kek", "old_version": 1, "new_version": 2, "records": 0},
    )  # fmt: skip
    return log, second


@pytest.mark.parametrize(
    ("names_proposal", "copy"),
    [(True, True), (False, True), (True, False), (False, False)],
    ids=["copy-cancel-names-it", "copy-old-cancel", "same-id", "same-id-old-cancel"],
)
def test_a_cancelled_proposal_proves_no_rotation(
    tmp_path: Path, names_proposal: bool, copy: bool
) -> None:
    """Review 48: check 6c never read ``key.rotation.cancel``. The vault refuses to start
    a ceremony whose signed proposal was cancelled, under its id or another (session
    31); the verifier proved such a start dual-controlled: Alice withdrew her proposal,
    and Bob's approval alone ran it."""
    log, started = _cancelled_log(names_proposal=names_proposal, copy=copy)
    w, key = witness(), AuditKey()
    bundle = build(log, 0, len(log), key=key, witnesses=[w])
    report = verify_bundle(
        bundle.write(tmp_path / "bundle.tar.gz"),
        key.pem,
        witness_keys=[w.verifier_key()],
        authorities=["localhost"],
        origin=ORIGIN,
    )
    assert any(started in p and "was cancelled (entry 5)" in p for p in report.problems), (
        report.problems
    )
    assert not report.ok
