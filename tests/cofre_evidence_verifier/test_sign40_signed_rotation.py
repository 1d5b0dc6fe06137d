"""Session 40: check 6d asks a rotation's registration of a version 2 or later for its
ceremony's signed requests, as the vault now writes them and its registry requires.

A vault since session 40 writes the proposal and approvals of a ``kek``, ``fingerprint``
or ``audit`` rotation on the `key.register` of the key it makes and on the start. When
the start carries them, the registration must carry that ceremony's one proposal (whose
signature check 6c proves) proposing a rotation of the key's kind; a registration and
start that carry none are a vault before session 40's, judged by the start alone.
The log's entries here are the records as the vault writes them (check 6c proves the
signatures; this check compares what the registration carries with the proposal)."""

from __future__ import annotations

import base64
import json
from typing import Any

from cofre_evidence_verifier.key_registrations import _proposals, _starts, _unsigned_problem

CEREMONY = "5b8e0f6a-3c2d-4e1f-9a7b-2c3d4e5f6a7b"


def _proof(kind: str) -> str:
    body = base64.b64encode(json.dumps({"kind": kind}).encode()).decode()
    return json.dumps({"body": body, "method": "POST", "path": "/v1/admin/keys/rotations"})


def _document(proof: str) -> str:
    return json.dumps({"proposal": {"officer": "alice", "proof": proof}, "approvals": []})


def _pool(registered: str | None, started: str | None, proposed: str) -> dict[int, Any]:
    """A proposal, the registration of ``cofre-kek-v2`` and the start, as logged."""
    return {
        0: {
            "action": "key.rotation.propose",
            "outcome": "success",
            "key_id": CEREMONY,
            "document": proposed,
        },
        1: {"action": "key.register", "outcome": "success", "document": registered},
        2: {
            "action": "key.rotation.start",
            "outcome": "success",
            "key_id": CEREMONY,
            "details": {"kind": "kek", "new_version": 2},
            "document": started,
        },
    }


def _problem(pool: dict[int, Any]) -> str | None:
    assert _starts(pool, set(pool))[CEREMONY] == [2]
    return _unsigned_problem(pool, _proposals(pool), 1, 2, "kek")


def test_a_signed_rotations_registration_carrying_its_proposal_counts() -> None:
    proof = _proof("kek")
    assert _problem(_pool(_document(proof), _document(proof), proof)) is None


def test_a_registration_before_session_40_is_judged_by_its_start_alone() -> None:
    assert _problem(_pool(None, None, _proof("kek"))) is None


def test_an_unsigned_registration_beside_a_signed_start_fails() -> None:
    proof = _proof("kek")
    problem = _problem(_pool(None, _document(proof), proof))
    assert problem is not None
    assert "does not carry that ceremony's one proposal" in problem


def test_another_ceremonys_proposal_on_the_registration_fails() -> None:
    proof, other = _proof("kek"), _proof("fingerprint")
    problem = _problem(_pool(_document(other), _document(proof), proof))
    assert problem is not None
    assert "one proposal" in problem


def test_a_proposal_of_another_kind_fails() -> None:
    proof = _proof("data")
    problem = _problem(_pool(_document(proof), _document(proof), proof))
    assert problem is not None
    assert "not of a kek rotation" in problem
