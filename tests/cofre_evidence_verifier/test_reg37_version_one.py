"""Check 6d on version 1 (session 37): a KEK, fingerprint or audit key of version 1 is
registered only at the log's first start (`cofre hsm init`, or the first start's
adoption); a later one is a key put into use with no ceremony. Synthetic bundles; the
end-to-end attack with a real vault, token and exporter is
tests/compliance/test_reg37_version_one.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.evidence_bundles import (
    REGISTRATION_CEREMONY,
    REGISTRATION_DAY,
    day_log,
    payload,
    registration_problems,
    rotation_start,
    verify_log,
)

DAY = REGISTRATION_DAY
CEREMONY = REGISTRATION_CEREMONY
INIT = ("cofre-kek-v1", "cofre-fp-v1", "cofre-audit-v1")


def _register(label: str, how: str, at: str = "00:00:00", **extra: object) -> str:
    details = {"label": label, "cka_id": "AQ==", "check": "x", "how": how, **extra}
    return payload("key.register", f"{DAY}T{at}.000000Z", key_id=label, details=details)


def _created(label: str) -> str:
    return payload("key.create", f"{DAY}T00:00:00.000000Z", key_id=label)


def _hsm_init() -> list[str]:
    """What `cofre hsm init` writes on a new log: each key's creation and registration."""
    return [e for label in INIT for e in (_created(label), _register(label, "cofre hsm init"))]


def test_hsm_init_and_the_first_start_verify(tmp_path: Path) -> None:
    """The genuine first start: `cofre hsm init`'s registrations open the log."""
    report = verify_log([*_hsm_init(), *day_log(10, DAY)], 0, tmp_path)
    assert report.ok, report.problems
    [line] = [c for c in report.checks if c.startswith("key registrations:")]
    assert all(f"{label} (entry" in line for label in INIT), line


def test_an_adoption_of_version_one_at_the_first_start_verifies(tmp_path: Path) -> None:
    adopted = [_register(label, "adopted at first start") for label in (*INIT, "cofre-kek-v2")]
    report = verify_log([*adopted, *day_log(10, DAY)], 0, tmp_path)
    assert report.ok, report.problems


@pytest.mark.parametrize("label", INIT)
@pytest.mark.parametrize("how", ["cofre hsm init", "adopted at first start", "cofre dev"])
def test_version_one_registered_again_after_the_first_start_fails(
    tmp_path: Path, label: str, how: str
) -> None:
    """The attack: the key destroyed and made again under its label, registered anew."""
    log = [*_hsm_init(), *day_log(10, DAY)]
    log.insert(12, _register(label, how, "04:30:00"))
    report = verify_log(log, 0, tmp_path)
    assert not report.ok
    [problem] = registration_problems(report)
    assert f"entry 12 registers {label}" in problem, problem
    assert "after the log's first start" in problem
    assert "without a key ceremony" in problem


def test_version_one_in_a_period_after_the_first_start_fails(tmp_path: Path) -> None:
    """A period that starts after the first start holds no version-1 registration."""
    log = [*_hsm_init(), *day_log(10, DAY)]
    log.insert(12, _register("cofre-fp-v1", "cofre hsm init", "04:30:00"))
    assert [p for p in registration_problems(verify_log(log, 8, tmp_path)) if "cofre-fp-v1" in p]
    # Without it, the same later period verifies.
    del log[12]
    assert verify_log(log, 8, tmp_path).ok


def test_a_kind_first_registered_after_the_first_start_fails(tmp_path: Path) -> None:
    """The audit key, absent at the first start, registered after an operation: the
    kinds are fixed by the software version, so this is no first start."""
    log = [*_hsm_init()[:4], *day_log(10, DAY)]
    log.insert(8, _register("cofre-audit-v1", "cofre hsm init", "04:30:00"))
    [problem] = registration_problems(verify_log(log, 0, tmp_path))
    assert "registers cofre-audit-v1" in problem


def test_an_init_after_an_adoption_fails(tmp_path: Path) -> None:
    """The first start adopts into an empty registry; `cofre hsm init` writes into
    one before it. An init's registration after the adoption is not the first start."""
    adopted = [_register(label, "adopted at first start") for label in INIT[:2]]
    log = [*adopted, _register("cofre-audit-v1", "cofre hsm init"), *day_log(10, DAY)]
    [problem] = registration_problems(verify_log(log, 0, tmp_path))
    assert "entry 2 registers cofre-audit-v1" in problem, problem


def test_a_carried_forward_record_is_named_as_one(tmp_path: Path) -> None:
    """Retention carries a key's last record forward; a bundle that does not carry the
    entry it copies with its proof (`audit/carried.jsonl`) fails it, naming the carry
    (tests/audit/test_ret37_carried_registrations.py: one that does verifies)."""
    log = [*_hsm_init(), *day_log(10, DAY)]
    log.insert(12, _register("cofre-kek-v1", "cofre hsm init", "04:30:00", carried_forward_from=1))
    [problem] = registration_problems(verify_log(log, 8, tmp_path))
    assert "carried forward by retention from entry 1" in problem, problem
    assert "does not carry entry 1 with its inclusion proof" in problem, problem
    how = f"created by key ceremony {CEREMONY}"
    log[12] = _register("cofre-kek-v2", how, "04:30:00", carried_forward_from=9)
    [problem] = registration_problems(verify_log(log, 8, tmp_path))
    assert "carried forward by retention from entry 9" in problem, problem


def test_rotations_after_the_first_start_still_verify(tmp_path: Path) -> None:
    how = f"created by key ceremony {CEREMONY}"
    for kind, label in (("kek", "cofre-kek-v2"), ("fingerprint", "cofre-fp-v2")):
        log = [*_hsm_init(), *day_log(10, DAY)]
        log[12:12] = [_register(label, how, "04:30:00"), rotation_start(2, kind)]
        report = verify_log(log, 0, tmp_path)
        # The synthetic ceremony has no signed requests: check 6c is not this test's.
        assert registration_problems(report) == [], report.problems
        assert "key_registrations" in report.passed_checks
