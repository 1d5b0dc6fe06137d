"""Check 6e across periods and for every answer from a deleted row (session 39), on
synthetic bundles: a token deleted in the previous bundle (its entries or its list,
`audit/deleted_tokens.txt`) and answering in this one fails the chain, naming both
entries; a list that leaves out a deletion the previous bundle shows fails, named; a
listed token answering fails even without the previous bundle; a previous bundle of
another log carries nothing in unseen; any successful entry naming a deleted token
(a `token.update`, a convergent `tokenize`, a `capture`, a `security_code.hold`)
answers from its row, not only the four reveals session 38 counted. The end-to-end
attack with a real vault is tests/compliance/test_ev39_deleted_across_bundles.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofre_evidence_verifier.deleted_tokens import LISTED
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    Bundle,
    build,
    chained,
    day_log,
    payload,
    verify_log,
    witness,
)

TOKEN_ID = "0b5e1c9e-4f0d-4a51-9a64-6a1d1bd0c0de"
OTHER_ID = "7d2f3c1a-0e4b-4c8e-8b1d-2f6a9e3c5b7a"
STAGING = "cofre-audit/staging"


def _at(hour: int, action: str, token_id: str = TOKEN_ID, outcome: str = "success") -> str:
    return payload(
        action,
        f"2026-03-01T{hour:02d}:00:{hour:02d}.000000Z",
        token_id=token_id,
        outcome=outcome,
        request_id=f"req-{hour}",
    )


def _problems(report: Report) -> list[str]:
    return [p for p in report.problems if p.startswith("deleted tokens:")]


def _pair(
    log: list[str], tmp_path: Path, *, origins: tuple[str, str] = (ORIGIN, ORIGIN)
) -> tuple[Bundle, Bundle, list[object]]:
    w = witness()
    first, second = chained(log, 10, key=AuditKey(), witnesses=[w], origins=origins)
    return first, second, [w.verifier_key()]


def _verify_chain(first: Bundle, second: Bundle, keys: list[object], tmp_path: Path) -> Report:
    return verify_bundle(
        second.write(tmp_path / "b.tar.gz"),
        second.key.pem,
        first.write(tmp_path / "a.tar.gz"),
        witness_keys=keys,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("answer", ["detokenize", "token.update", "tokenize", "relay.send"])
def test_a_token_deleted_in_the_previous_bundle_answering_fails_the_chain(
    tmp_path: Path, answer: str
) -> None:
    log = day_log(20)
    log[5], log[12] = _at(5, "delete"), _at(12, answer)
    first, second, keys = _pair(log, tmp_path)
    report = _verify_chain(first, second, keys, tmp_path)
    assert not report.ok
    problems = _problems(report)
    assert any(
        p.startswith(
            f"deleted tokens: entry 12 ({answer}, success) reveals token {TOKEN_ID}, which "
            "entry 5 (delete) of the previous bundle shredded"
        )
        for p in problems
    ), report.problems
    # The list of the second bundle leaves it out (it has none): named too.
    assert any(
        f"token {TOKEN_ID}, deleted by entry 5 (delete) of the previous bundle, is missing "
        f"from this bundle's {LISTED}" in p
        for p in problems
    ), problems


def test_the_previous_bundles_list_is_carried_forward(tmp_path: Path) -> None:
    log = day_log(20)
    log[5], log[12] = _at(5, "purge", OTHER_ID), _at(12, "metadata")
    first, second, keys = _pair(log, tmp_path)
    first.files[LISTED] = f"{TOKEN_ID}\n".encode()
    second.files[LISTED] = f"{TOKEN_ID}\n{OTHER_ID}\n".encode()
    report = _verify_chain(first, second, keys, tmp_path)
    [line] = _problems(report)
    assert line.startswith(
        f"deleted tokens: entry 12 (metadata, success) reveals token {TOKEN_ID}, which the "
        f"previous bundle's {LISTED} lists as deleted before its period"
    ), line
    # The exporter drops it from the second list: the first bundle's list still counts.
    second.files[LISTED] = f"{OTHER_ID}\n".encode()
    report = _verify_chain(first, second, keys, tmp_path)
    problems = _problems(report)
    assert any(
        f"token {TOKEN_ID}, deleted by the previous bundle's {LISTED} lists as deleted "
        "before its period, is missing" in p
        for p in problems
    ), problems
    assert any(f"entry 12 (metadata, success) reveals token {TOKEN_ID}" in p for p in problems)


def test_a_genuine_chain_with_deletions_verifies(tmp_path: Path) -> None:
    log = day_log(20)
    log[5], log[12] = _at(5, "delete"), _at(12, "detokenize", outcome="failed")
    log[13] = _at(13, "detokenize", OTHER_ID)
    first, second, keys = _pair(log, tmp_path)
    second.files[LISTED] = f"{TOKEN_ID}\n".encode()
    report = _verify_chain(first, second, keys, tmp_path)
    assert report.ok, report.problems
    [line] = [c for c in report.checks if c.startswith("deleted tokens:")]
    assert "0 tokens deleted or purged in the period, 1 before it" in line, line
    assert "proven by the previous bundle" in line, line


def test_a_previous_bundle_of_another_log_does_not_verify(tmp_path: Path) -> None:
    """The exporter hands the auditor, as the previous bundle, one of a log with no
    deletions (staging): the chain's origin check fails it, whatever it carries."""
    log = day_log(20)
    log[12] = _at(12, "detokenize")
    first, second, keys = _pair(log, tmp_path, origins=(STAGING, ORIGIN))
    report = _verify_chain(first, second, keys, tmp_path)
    assert not report.ok
    assert any(f"a bundle of log {STAGING}, not of log {ORIGIN}" in p for p in report.problems)


def _verify_listed(log: list[str], listed: bytes, tmp_path: Path) -> Report:
    """`log` as one bundle whose list of deleted tokens is `listed`, verified alone."""
    bundle = build(log, 0, len(log))
    bundle.files[LISTED] = listed
    return verify_bundle(
        bundle.write(tmp_path / "l.tar.gz"), bundle.key.pem, unsafe_no_witnesses=True, origin=ORIGIN
    )


def test_a_listed_token_answering_fails_without_the_previous_bundle(tmp_path: Path) -> None:
    log = [*day_log(10), _at(10, "detokenize_masked")]
    [line] = _problems(_verify_listed(log, f"{TOKEN_ID}\n".encode(), tmp_path))
    assert line.startswith(
        f"deleted tokens: entry 10 (detokenize_masked, success) reveals token {TOKEN_ID}, "
        f"which the bundle's {LISTED} lists as deleted before the period"
    ), line
    report = _verify_listed(log, f"{OTHER_ID}\n".encode(), tmp_path)
    assert report.ok, report.problems
    [line] = [c for c in report.checks if c.startswith("deleted tokens:")]
    assert "1 before it" in line, line
    assert "not proven: verify with --previous" in line, line


@pytest.mark.parametrize(
    "listed", [f"{OTHER_ID}\n{TOKEN_ID}\n", f"{TOKEN_ID}\n{TOKEN_ID}\n", f" {TOKEN_ID}\n"]
)
def test_a_list_out_of_order_fails(tmp_path: Path, listed: str) -> None:
    report = _verify_listed(day_log(10), listed.encode(), tmp_path)
    assert any("is not a token id in ascending order" in p for p in _problems(report))


@pytest.mark.parametrize(
    "answer", ["tokenize", "token.update", "capture", "security_code.hold", "some.new.action"]
)
def test_any_success_naming_a_deleted_token_fails(tmp_path: Path, answer: str) -> None:
    """Session 38 counted four reveals: a written-back row answering a `token.update`
    (its metadata and life), a convergent `tokenize` or `capture` that found its
    fingerprint (the card's old token again), or holding a security code, verified."""
    log = day_log(10)
    log += [_at(10, "delete"), _at(11, answer)]
    report = verify_log(log, 0, tmp_path)
    assert not report.ok
    [line] = _problems(report)
    assert line.startswith(
        f"deleted tokens: entry 11 ({answer}, success) reveals token {TOKEN_ID}, which "
        "entry 10 (delete) shredded"
    ), line


def test_a_previous_list_out_of_order_fails_closed(tmp_path: Path) -> None:
    """The previous bundle's list is read as this one's: a line out of order there
    stops the ids after it from being carried, so it fails here, named."""
    first, second, keys = _pair(day_log(20), tmp_path)
    first.files[LISTED] = f"{OTHER_ID}\n{TOKEN_ID}\n".encode()
    second.files[LISTED] = f"{TOKEN_ID}\n{OTHER_ID}\n".encode()
    report = _verify_chain(first, second, keys, tmp_path)
    assert not report.ok
    assert any(
        f"the previous bundle's {LISTED} line 2 is not a token id" in p for p in report.problems
    ), report.problems
