"""Check 6d (`cofre_evidence_verifier.key_registrations`) on synthetic bundles: what
ties a key's registration to a ceremony or to the vault's first start, and what does
not. The end-to-end attack with a real vault, token and exporter is
tests/compliance/test_aud36_key_registration.py."""

from __future__ import annotations

from pathlib import Path

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


def _register(label: str, how: str, at: str = "00:00:00") -> str:
    details = {"label": label, "cka_id": "AQ==", "check": "x", "how": how}
    return payload("key.register", f"{DAY}T{at}.000000Z", key_id=label, details=details)


def test_the_first_start_adopting_later_versions_verifies(tmp_path: Path) -> None:
    """A vault's first start on a token holding kek-v2 adopts it with the rest."""
    adopted = [_register(label, "adopted at first start") for label in ("cofre-kek-v2",)]
    report = verify_log([*adopted, *day_log(10, DAY)], 0, tmp_path)
    assert report.ok, report.problems
    assert "key_registrations" in report.passed_checks


def test_an_adoption_after_another_registration_fails(tmp_path: Path) -> None:
    """The vault adopts only into an empty registry: after `cofre hsm init`'s
    registrations, an "adoption" of kek-v2 is the operator's entry."""
    log = [
        _register("cofre-kek-v1", "cofre hsm init"),
        _register("cofre-kek-v2", "adopted at first start", "00:00:01"),
        *day_log(10, DAY),
    ]
    report = verify_log(log, 0, tmp_path)
    assert not report.ok
    [problem] = registration_problems(report)
    assert "cofre-kek-v2" in problem
    assert "outside any key ceremony" in problem


def test_an_adoption_in_a_bundle_not_from_the_log_start_fails(tmp_path: Path) -> None:
    log = [*day_log(10, DAY)]
    log.insert(5, _register("cofre-fp-v2", "adopted at first start", "04:30:00"))
    report = verify_log(log, 3, tmp_path)
    assert [p for p in registration_problems(report) if "cofre-fp-v2" in p], report.problems


def test_a_registration_must_match_its_ceremony_start(tmp_path: Path) -> None:
    """The start after it rotates the KEK to version 3, not 2; and one start accounts
    for one registration (a second key under the same ceremony is a substitute)."""
    how = f"created by key ceremony {CEREMONY}"
    log = [*day_log(10, DAY)]
    log[5:5] = [_register("cofre-kek-v2", how, "04:30:00"), rotation_start(3)]
    report = verify_log(log, 1, tmp_path)
    [problem] = registration_problems(report)
    assert "registers cofre-kek-v2" in problem
    assert "rotating kek to version 2" in problem
    log = [*day_log(10, DAY)]
    twice = [_register("cofre-kek-v2", how, f"04:30:0{n}") for n in (0, 1)]
    log[5:5] = [*twice, rotation_start(2)]
    report = verify_log(log, 1, tmp_path)
    [problem] = registration_problems(report)
    assert "entry 6 registers cofre-kek-v2" in problem, problem


def test_other_labels_are_not_registrations_of_a_ceremony(tmp_path: Path) -> None:
    """A security-code epoch key is not a KEK, fingerprint or audit key: check 6d does
    not judge its registration. (Version 1 of those kinds mid-log fails since session
    37: tests/cofre_evidence_verifier/test_reg37_version_one.py.)"""
    log = [*day_log(10, DAY)]
    log[5:5] = [_register("cofre-csc-e494520", "security-code epoch", "04:30:01")]
    report = verify_log(log, 1, tmp_path)
    assert report.ok, report.problems
    assert any("0 keys put into use" in c for c in report.checks), report.checks


def test_a_ceremony_id_the_log_masked_still_ties_its_registration(tmp_path: Path) -> None:
    """The log masks a detail's run of twelve digits (a UUID's last group, sometimes all
    decimal) but keeps the start's `key_id` whole: the registration's `how` is matched
    in its masked form."""
    ceremony = "5b8e0f6a-3c2d-4e1f-9a7b-123456789012"
    start = rotation_start(2).replace(CEREMONY, ceremony)
    log = [*day_log(10, DAY)]
    masked = "created by key ceremony 5b8e0f6a-3c2d-4e1f-9a7b-12******9012"
    log[5:5] = [_register("cofre-kek-v2", masked, "04:30:00"), start]
    report = verify_log(log, 1, tmp_path)
    assert registration_problems(report) == []
    assert "key_registrations" in report.passed_checks
    other = masked.replace("-9a7b-", "-9a7c-")
    log[5] = _register("cofre-kek-v2", other, "04:30:00")
    assert registration_problems(verify_log(log, 1, tmp_path)), (
        "a masked id of another ceremony counted"
    )


def test_a_label_the_vault_parses_is_checked_as_the_vault_parses_it(tmp_path: Path) -> None:
    """The vault's label pattern ends in `$`, which also takes a final newline."""
    log = [*day_log(10, DAY)]
    log.insert(5, _register("cofre-kek-v2\n", "adopted at first start", "04:30:00"))
    assert [p for p in registration_problems(verify_log(log, 3, tmp_path)) if "cofre-kek-v2" in p]
