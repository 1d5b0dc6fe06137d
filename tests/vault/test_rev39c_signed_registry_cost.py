"""Review rev39c: what a flood of signed-looking `key.register` records costs each node.

The key registry reads every `key.register` record at most once a second, and since
session 39 each one that names a ceremony and carries a document is handed to the
officers' verifier (`vault._signed_registration.officers_verifier`), which remembers its
answers so that a database writer's copies are not verified again at every read. Two
attacks by a writer of the database without the HSM PIN:

- memory: the verifier remembered each answer under the record's details and document
  themselves, so records with large documents (a writer's padding field, which the
  document reader ignores) stayed in every worker's memory, up to 4,096 of them, long
  after the read that loaded them (64 KiB each as `AuditLog` writes them, 256 MiB a
  worker; more for rows inserted without it);
- work: past 4,096 distinct records the memory was cleared whole, so a read of a log
  holding more verified every one of them again, an ECDSA verification each, every
  second, under the registry's lock (now the answers kept stay: only the excess is
  verified again).
"""

from __future__ import annotations

import gc
import json
import tracemalloc

import pytest
from sqlalchemy import Engine

import vault._signed_registration as signed_module
from audit.log import AuditEvent, AuditLog, Outcome
from hsm.keys import KeyKind
from tests.support.officers import SigningOfficer, signed_registration
from tests.vault.conftest import ALICE
from vault._signed_registration import DOCUMENT_TYPE
from vault.rotation import KeyRotation
from vault.service import VaultService

_MIB = 1 << 20


def _flood(engine: Engine, label: str, proof: str, *, count: int, padding: int) -> None:
    """`count` signed-looking registrations of `label`, each a distinct document carrying
    Alice's genuine `proof` and `padding` bytes, as a writer of the database appends them
    (one transaction)."""
    with engine.begin() as connection:
        log = AuditLog()
        for n in range(count):
            document = json.dumps(
                {
                    "type": DOCUMENT_TYPE,
                    "proposal": {"officer": ALICE, "proof": proof},
                    "approvals": [],
                    "padding": f"{n:08d}" + "A" * padding,
                }
            )
            details = {"label": label, "cka_id": "00", "check": "000000", "ceremony": "x"}
            event = AuditEvent(
                action="key.register",
                outcome=Outcome.SUCCESS,
                actor="cofre",
                key_id=label,
                details=details,
                document=document,
            )
            log.append(connection, event)


def _genuine_proof(service: VaultService, officers: dict[str, SigningOfficer]) -> tuple[str, str]:
    label = service.keyring.registry.current_label(KeyKind.KEK)
    genuine = service.keyring.registry.registered(fresh=True)[label].as_details()
    return label, signed_registration(officers[ALICE], genuine).to_json()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_large_signed_looking_documents_are_not_kept_after_the_read(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    service = signing_rig[0]
    label, proof = _genuine_proof(service, signing_officers)
    _flood(engine, label, proof, count=200, padding=60_000)
    registry = service.keyring.registry
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        registry.registered(fresh=True)  # the flood read, each record verified
        registry.registered(fresh=True)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 12 MB of documents were read; what stays is the answers, not the documents.
    assert kept < 2 * _MIB, f"{kept / _MIB:.1f} MiB kept after the read"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_more_records_than_remembered_are_not_all_verified_again_at_each_read(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    signing_officers: dict[str, SigningOfficer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = signing_rig[0]
    label, proof = _genuine_proof(service, signing_officers)
    monkeypatch.setattr(signed_module, "_KNOWN", 1000)  # the bound, smaller for the test
    count = 1200
    _flood(engine, label, proof, count=count, padding=0)
    registry = service.keyring.registry
    registry.registered(fresh=True)  # every record verified once
    verified: list[int] = []
    real = signed_module.signed_registration_time

    def counting(*args: object, **kwargs: object) -> int | None:
        verified.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(signed_module, "signed_registration_time", counting)
    registry.registered(fresh=True)
    # Before: the memory was cleared whole at its bound, so all of them again, each read.
    assert len(verified) <= 200, f"{len(verified)} of {count} verified again"
