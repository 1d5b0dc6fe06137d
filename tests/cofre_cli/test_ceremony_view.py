"""How `cofre keys status/approve` show a ceremony (`_show_ceremony`)."""

from __future__ import annotations

from typing import Any

import pytest

from cofre_cli.commands.keys import _show_ceremony


def _ceremony(**fields: Any) -> dict[str, Any]:
    return {
        "id": "c-1",
        "kind": "kek",
        "state": "pending",
        "proposer": "spiffe://cofre/officer-alice",
        "approvers": ["spiffe://cofre/officer-bob"],
        "approvals_needed": 1,
        "new_version": None,
        **fields,
    }


def test_an_approval_that_does_not_count_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    _show_ceremony(_ceremony(approvals_counting=[]))
    out = capsys.readouterr().out
    assert "(0/1 approvals needed)" in out
    assert "not counting now: spiffe://cofre/officer-bob" in out


def test_an_older_vaults_answer_is_shown_and_said_to_be_older(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An officer's CLI may be upgraded before the vault (rolling upgrade): a ceremony
    without `approvals_counting` is shown, not a KeyError's traceback."""
    _show_ceremony(_ceremony())
    out = capsys.readouterr().out
    assert "(1/1 approvals needed)" in out
    assert "does not say which approvals count" in out
