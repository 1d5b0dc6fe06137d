"""Review rev38 of 075e9e5 and d499687 (qsa37's lookalike officer): the vault refuses a
policy identity with a space in it (no certificate's SAN URI names one), but the
verifier's check took every printable ASCII name, the space included. A policy version
the operator logs before the period registering ``spiffe://cofre/officer-bob `` (a
trailing space) with a key of the operator's own made a ceremony of Alice and that
"Bob" proven, and the report drew the name as ``officer-bob``. Check 6c now counts only
the identities the vault can load: printable ASCII without a space. Real SoftHSM2
token, real exporter and verifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import VaultServer
from tests.compliance.test_qsa37_officer_names import _ceremony_with


@pytest.mark.parametrize(
    "lookalike",
    ["spiffe://cofre/officer-bob ", "spiffe://cofre/officer bob"],
    ids=["a trailing space", "a space for the hyphen"],
)
def test_an_officer_whose_name_holds_a_space_does_not_count(
    vault: VaultServer, tmp_path: Path, lookalike: str
) -> None:
    ceremony, report = _ceremony_with(vault, lookalike, tmp_path)
    assert not report.ok, f"Alice and {lookalike!r} of the operator's: VERIFIED"
    listed = {c["ceremony"]: c for c in report.summary.get("dual_control", [])}
    assert listed[ceremony]["proven"] is False
    assert any("not printable ASCII" in p for p in report.problems), report.problems
