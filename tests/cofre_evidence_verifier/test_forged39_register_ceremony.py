"""Check 6d on a ``register`` ceremony's registration (session 39): the officers' signed
record that a label is the key the token holds, the repair of a label a forged
`key.register` took. It counts only when its ceremony's start (kind ``register``, the
same label) follows it and the proposal its document carries is that ceremony's one
proposal (whose signature check 6c proves), naming exactly the registered key.
Synthetic bundles; the vault side is tests/vault/test_forged39_signed_registration.py."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.evidence_bundles import (
    REGISTRATION_DAY,
    day_log,
    payload,
    registration_problems,
    verify_log,
)
from tests.support.officers import new_software_officer, signed_registration
from vault.approval_proof import SignedAction

DAY = REGISTRATION_DAY
KEY = {"label": "cofre-kek-v2", "cka_id": "AQ==", "check": "kcv:aabbcc"}


def _ceremony(
    registered: dict[str, str], *, start: bool = True, proposed: str | None = None
) -> list[str]:
    """Alice's proposal (`proposed`: another stored proposal in its place), then the
    registration and the start the vault writes."""
    proof = signed_registration(new_software_officer("officer-alice"), KEY).to_json()
    ceremony = SignedAction.from_json(proof).ceremony_id()
    document = json.dumps({"type": "cofre-signed-registration/v1", "proposal": {"proof": proof}})
    at = f"{DAY}T04:4"
    propose = payload(
        "key.rotation.propose", f"{at}0:00.000000Z", key_id=ceremony, document=proposed or proof
    )
    how = f"registered by key ceremony {ceremony}"
    entries = [
        propose,
        payload(
            "key.register",
            f"{at}5:00.000000Z",
            key_id=registered["label"],
            details={**registered, "how": how},
            document=document,
        ),
    ]
    if start:
        details = {"kind": "register", "label": KEY["label"]}
        entries.append(
            payload("key.rotation.start", f"{at}5:00.000000Z", key_id=ceremony, details=details)
        )
    return entries


def _problems(entries: list[str], tmp_path: Path) -> list[str]:
    log = day_log(10, DAY)
    return registration_problems(verify_log([*log[:5], *entries, *log[5:]], 1, tmp_path))


def test_the_officers_registration_is_tied_to_its_start(tmp_path: Path) -> None:
    assert _problems(_ceremony(KEY), tmp_path) == []


def test_a_registration_of_another_key_than_the_signed_one_fails(tmp_path: Path) -> None:
    [problem] = _problems(_ceremony({**KEY, "check": "kcv:000000"}), tmp_path)
    assert "signed proposal names another key" in problem, problem


def test_a_registration_without_its_start_fails(tmp_path: Path) -> None:
    [problem] = _problems(_ceremony(KEY, start=False), tmp_path)
    assert "no start of that ceremony registering cofre-kek-v2" in problem, problem


def test_a_registration_carrying_another_proposal_fails(tmp_path: Path) -> None:
    other = signed_registration(new_software_officer("officer-alice"), KEY).to_json()
    [problem] = _problems(_ceremony(KEY, proposed=other), tmp_path)
    assert "does not carry that ceremony's one proposal" in problem, problem
