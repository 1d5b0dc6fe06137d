"""Session 39: a ``register`` ceremony in the evidence (checks 6c and 6d).

The officers' signed record that a label is the key the token holds (the repair of a
label a forged `key.register` took, `vault._signed_registration`): its bundle verifies,
6c counting its officers and 6d tying its registration to its start and proposal; the
forged record before it still fails the bundle of its period, naming it. Real SoftHSM2
(the session's rotation token), the API over mTLS with the officers' tokens, the real
exporter and verifier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm.keys import KeyKind
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.api.test_forged_ceremony_rows import ROTATIONS
from tests.support.registrations import served_registration_report
from tests.support.vault_evidence import (
    export_to,
    verify_by_vault_key,
    whole_log,
    write_entry,
)


@pytest.fixture
def vault(tmp_path: Path, rotation_provider: HSMProvider) -> Iterator[VaultServer]:
    with running_vault(tmp_path / "vault", rotation_provider) as server:
        yield server


def _register(vault: VaultServer, registered: dict[str, str | None]) -> None:
    with vault.client("officer-alice") as alice:
        proposed = alice.post(ROTATIONS, json={"kind": "register", **registered})
    assert proposed.status_code == 201, proposed.text
    with vault.client("officer-bob") as bob:
        approved = bob.post(f"{ROTATIONS}/{proposed.json()['id']}/approve")
    assert approved.status_code == 200, approved.text


@pytest.mark.parametrize("forged", [False, True])
def test_a_register_ceremony_is_proven_and_a_forged_row_is_not(
    vault: VaultServer, tmp_path: Path, forged: bool
) -> None:
    since = whole_log()
    registry = vault.runtime.service.keyring.registry
    label = registry.current_label(KeyKind.KEK)
    genuine = registry.registered(fresh=True)[label].as_details()
    if forged:
        details = {"label": label, "cka_id": "00", "check": "000000", "how": "init"}
        write_entry(vault, "key.register", "cofre", label, dict(details))
    _register(vault, genuine)
    # Session 45: CI once found the forged row still taken here (the export answered
    # 503 `hsm_key_unregistered`); the report names why, should it happen again.
    registered = registry.registered(fresh=True)[label].as_details()
    assert registered == genuine, served_registration_report(vault, label)
    report = verify_by_vault_key(export_to(vault, since, tmp_path / "b.tar.gz"), vault)
    if not forged:
        assert report.ok, report.problems
        [line] = [c for c in report.checks if c.startswith("key registrations:")]
        assert f"{label} (entry" in line, line
        return
    assert not report.ok
    [problem] = [p for p in report.problems if p.startswith("key registrations:")]
    assert f"registers {label} ('init')" in problem, problem  # the forged row, named
    assert not [p for p in report.problems if p.startswith("dual control")], report.problems
