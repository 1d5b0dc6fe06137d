"""Key custodians' acknowledgements in tests (PCI DSS 3.7.8): an officer signs the custody
statement with their second factor, through the API, before taking part in a ceremony
(the vault refuses a proposal or an approval from an officer who has not: `vault._custody_gate`)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import httpx
from sqlalchemy import Engine

from policies.engine import PolicyEngine
from tests.support.officers import SigningOfficer
from vault.custody import Custody
from vault.service import VaultService

CUSTODY = "/v1/admin/keys/custody"


def acknowledge_custody(client: httpx.Client, officer: SigningOfficer) -> dict[str, Any]:
    """`officer` (whose certificate and second factor `client` carries) signs today's
    custody statement with their key; the vault's record of it."""
    statement = client.get(f"{CUSTODY}/statement")
    assert statement.status_code == 200, statement.text
    text = statement.json()["statement"]
    signature = base64.b64encode(officer.sign(text.encode())).decode()
    recorded = client.post(CUSTODY, json={"statement": text, "signature": signature})
    assert recorded.status_code == 201, recorded.text
    return dict(recorded.json())


def acknowledge_in_process(
    engine: Engine,
    service: VaultService,
    policy: PolicyEngine,
    officers: Mapping[str, SigningOfficer],
) -> None:
    """Each of `officers` (identity: their signing key, registered in `policy`) signs
    today's custody statement, recorded by `service`'s vault directly (the in-process
    `KeyRotation` tests, which have no API in front)."""
    custody = Custody(engine, service.keyring.registry, lambda: policy)
    for identity, officer in officers.items():
        statement = custody.statement_for(identity)
        signature = base64.b64encode(officer.sign(statement.encode())).decode()
        custody.acknowledge(identity, statement, signature)
