"""Review 30: a witness quorum that two disjoint sets of witnesses can each meet.

The attacker holds the HSM PIN, the database and the vault node, so they decide which
witnesses the vault's publisher reaches. They stop submitting checkpoints to one witness
(or never submit to a witness the auditor pins), rewrite the log past the last
checkpoint that witness cosigned, re-sign every head with the genuine audit key and
submit the rewritten head to it: a c2sp.org/tlog-witness cosigns any checkpoint that
extends the last one it cosigned, and this one does. The other witnesses, which saw
the genuine log, refuse it, but with a quorum of 1 of 2 pinned witnesses the rewritten
bundle needs only the lagging one. Any two quorums of the pinned witnesses must share
a witness, or each of two histories can meet one (a split view): the verifier refuses a
quorum that is not more than half of the distinct witness keys pinned.
"""

from __future__ import annotations

import json
from pathlib import Path

from cofre_evidence_verifier.cli import main
from cofre_evidence_verifier.note import CosignerKey
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    Bundle,
    build,
    cutoff,
    day_log,
    witness,
)

REMOVED = 7  # the entry the operator wants out of the evidence


def _logs() -> tuple[list[str], list[str]]:
    """The genuine log and the operator's rewrite of it, without entry `REMOVED` (both
    end with the export's cutoff entry)."""
    genuine = [*day_log(20), cutoff()]
    return genuine, [p for i, p in enumerate(genuine) if i != REMOVED]


def _rewritten_bundle(key: AuditKey, lagging: list[CosignerKey]) -> Bundle:
    """A bundle of the rewritten log, every head re-signed with the genuine audit key,
    its covering head cosigned by the `lagging` witnesses only: the ones the operator
    kept behind, which took the rewrite as an extension of what they last cosigned."""
    _genuine, rewritten = _logs()
    return build(rewritten, 3, len(rewritten) - 1, size=len(rewritten), key=key, witnesses=lagging)


def _verify(bundle: Bundle, tmp_path: Path, pinned: list[CosignerKey], quorum: int) -> Report:
    return verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key() for w in pinned],
        quorum=quorum,
        origin=ORIGIN,
    )


def test_a_rewrite_cosigned_by_one_lagging_witness_of_two_is_not_verified(
    tmp_path: Path,
) -> None:
    """Before the fix: VERIFIED, with both witnesses pinned and the default quorum."""
    current, lagging = witness("witness.example/w1"), witness("witness.example/w2")
    bundle = _rewritten_bundle(AuditKey(), [lagging])
    report = _verify(bundle, tmp_path, [current, lagging], quorum=1)
    assert not report.ok
    assert any(
        "quorum of 1 of the 2 witnesses pinned" in p and "split view" in p for p in report.problems
    ), report.problems


def test_half_of_four_witnesses_is_no_quorum(tmp_path: Path) -> None:
    ws = [witness(f"witness.example/w{i}") for i in range(1, 5)]
    bundle = _rewritten_bundle(AuditKey(), ws[2:])  # w3 and w4 kept behind
    report = _verify(bundle, tmp_path, ws, quorum=2)
    assert not report.ok
    assert any("quorum of 2 of the 4 witnesses pinned" in p for p in report.problems)


def test_a_majority_quorum_refuses_the_rewrite_and_takes_the_genuine_log(
    tmp_path: Path,
) -> None:
    """2 of 3: the one lagging witness is not enough for the rewrite, and the genuine log
    that the two current witnesses cosigned verifies."""
    ws = [witness(f"witness.example/w{i}") for i in range(1, 4)]
    key = AuditKey()
    report = _verify(_rewritten_bundle(key, ws[2:]), tmp_path, ws, quorum=2)
    assert not report.ok
    assert any("1 of the 2 witness cosignatures required" in p for p in report.problems)
    genuine, _rewritten = _logs()
    honest = build(genuine, 3, len(genuine) - 1, size=len(genuine), key=key, witnesses=ws[:2])
    assert _verify(honest, tmp_path, ws, quorum=2).ok


def test_one_witness_pinned_under_two_names_is_still_one_of_one(tmp_path: Path) -> None:
    """The majority is of distinct keys (a key pinned twice counts once), as the quorum."""
    w = witness()
    genuine, _rewritten = _logs()
    bundle = build(genuine, 3, len(genuine) - 1, size=len(genuine), witnesses=[w])
    assert _verify(bundle, tmp_path, [w, w], quorum=1).ok


def test_the_command_line_says_why_and_fails(tmp_path: Path, capsys: object) -> None:
    current, lagging = witness("witness.example/w1"), witness("witness.example/w2")
    bundle = _rewritten_bundle(AuditKey(), [lagging])
    (tmp_path / "audit.pem").write_bytes(bundle.key.pem)
    argv = [str(bundle.write(tmp_path / "b.tar.gz")), "--public-key", str(tmp_path / "audit.pem")]
    argv += ["--origin", ORIGIN]
    for number, w in enumerate((current, lagging)):
        (tmp_path / f"w{number}.vkey").write_text(w.verifier_key().encode())
        argv += ["--witness-key", str(tmp_path / f"w{number}.vkey")]
    assert main([*argv, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert any("--quorum 2" in p for p in out["problems"]), out["problems"]
