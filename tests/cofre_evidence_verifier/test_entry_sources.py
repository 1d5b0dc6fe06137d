"""The offline verifier reads an entry's fields by name and never refuses one it does
not know: a bundle mixing entries written before origination was recorded and entries
with a `source` (PCI DSS 10.2.2) verifies, and an altered source is caught like any
altered entry."""

from __future__ import annotations

from pathlib import Path

from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, build, day_log, payload, witness

# A SHA-256 with a long digit run: written exactly, never masked.
SHA256 = "ab" + "4111111111111111" + "c" * 46


def _log() -> list[str]:
    log = day_log(12)
    return log + [
        payload(
            "tokenize",
            f"2026-03-01T15:00:{i:02d}.000000Z",
            request_id=f"req-s{i}",
            source={"address": "10.0.0.7", "certificate": SHA256},
        )
        for i in range(8)
    ]


def test_old_and_new_entries_verify_together(tmp_path: Path) -> None:
    w = witness()
    log = _log()
    bundle = build(log, 3, len(log), witnesses=[w])
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert report.ok, report.problems


def test_an_altered_source_is_caught(tmp_path: Path) -> None:
    w = witness()
    log = _log()
    entries = [(i, log[i]) for i in range(3, len(log))]
    index, text = entries[-1]
    entries[-1] = (index, text.replace("10.0.0.7", "10.0.0.8"))
    bundle = build(log, 3, len(log), witnesses=[w], entries=entries)
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert not report.ok
    assert any(str(index) in problem for problem in report.problems), report.problems
