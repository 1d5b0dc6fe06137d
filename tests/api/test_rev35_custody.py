"""Review 35 (attack review of session 34's custody gate, `vault._custody_gate`): a
careless officer, with their own certificate and second factor, who has not yet
acknowledged key custody. An approval was refused for want of an acknowledgement
*before* the ceremony it names was read, and the refusal's audit entry named the path's
ceremony id as its ``key_id``, which the log keeps as written (ids are the vault's own,
never masked). Any text of up to 64 characters went into the append-only log that way:
a card number pasted in place of a ceremony id was kept there in clear, for good. Now
an unknown ceremony is 404 ``ceremony_not_found`` first, as for any officer.

Real mutual TLS and the officers' second factor, the shared token (no key is rotated),
SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from hsm.provider import HSMProvider
from tests.api.conftest import running_vault

ROTATIONS = "/v1/admin/keys/rotations"
VISA = "4111111111111111"


def test_an_unacknowledged_approval_of_a_card_number_leaves_no_card_in_the_log(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    with (
        running_vault(tmp_path / "v", hsm_provider, database_url, custodians=()) as vault,
        vault.client("officer-bob") as bob,
    ):
        answer = bob.post(f"{ROTATIONS}/{VISA}/approve")
        with vault.runtime.engine.connect() as connection:
            payloads = list(
                connection.execute(sa.text("SELECT payload FROM audit_entries")).scalars()
            )
        # Named by action and field only: the message must not carry the card either.
        leaked = [
            (entry["action"], [k for k, v in entry.items() if VISA in json.dumps(v)])
            for entry in map(json.loads, payloads)
            if VISA in json.dumps(entry)
        ]
        assert leaked == [], f"the card went into the audit log in clear: {leaked}"
        # No such ceremony: the answer an officer who acknowledged custody gets.
        assert answer.status_code == 404, answer.text
        assert answer.json()["code"] == "ceremony_not_found", answer.text
        assert VISA not in answer.text
