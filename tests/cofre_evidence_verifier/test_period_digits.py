"""Review 35: the period's spelling check took any Unicode digit. Times are compared as
text, and an Arabic-Indic zero (U+0660) reads as "0" but sorts after "9": the PIN
holder's manifest moved the period's start by hours and left its first entries out,
yet VERIFIED."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, PERIOD, build, day_log, witness


@pytest.mark.parametrize("digit", ["\u0660", "\uff10", "\u09e6"])
def test_a_period_spelt_with_other_digits_cannot_hide_the_first_hours(
    tmp_path: Path, digit: str
) -> None:
    w = witness()
    # Shown as ...T00:00, sorts after every ...T09 time: entries 0..9 are left out.
    start = f"2026-03-01T0{digit}:00:00.000000Z"
    bundle = build(day_log(20), 10, 20, witnesses=[w], period=(start, PERIOD[1]))
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert not report.ok
    assert any("period" in problem for problem in report.problems), report.problems
