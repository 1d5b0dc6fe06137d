"""`vault._ceremony_guards.revoked_officers`: which of a ceremony's proposer and counted
approvers acted with a certificate the CRL now revokes (an approver's as well as the
proposer's; a stored certificate that cannot be read refuses too, fail closed; a NULL
one, from before migration 0020, is not checked)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, insert, select

from vault._ceremony_guards import revoked_officers
from vault.storage.schema import key_approvals, key_ceremonies, metadata

REVOKED, GOOD, UNREADABLE = "pem-revoked", "pem-good", "pem-unreadable"


def _revoked(pem: str) -> bool:
    if pem == UNREADABLE:
        raise ValueError("not a certificate")
    return pem == REVOKED


@pytest.mark.parametrize(
    ("proposer", "approvers", "found"),
    [
        (GOOD, {"bob": GOOD, "carol": None}, []),
        (REVOKED, {"bob": GOOD}, ["the proposer alice's certificate is revoked"]),
        (GOOD, {"bob": REVOKED, "carol": GOOD}, ["the approver bob's certificate is revoked"]),
        (
            None,
            {"bob": UNREADABLE},
            ["the certificate stored for the approver bob is not readable"],
        ),
    ],
)
def test_revoked_officers(
    proposer: str | None, approvers: dict[str, str | None], found: list[str]
) -> None:
    engine = create_engine("sqlite://")
    metadata.create_all(engine, tables=[key_ceremonies, key_approvals])
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            insert(key_ceremonies).values(
                id="c1", kind="data", state="pending", proposer="alice", created_at=now,
                expires_at=now, proposer_certificate=proposer,
            )
        )  # fmt: skip
        for officer, pem in approvers.items():
            connection.execute(
                insert(key_approvals).values(
                    ceremony_id="c1", officer=officer, approved_at=now, certificate=pem
                )
            )
        row = connection.execute(select(key_ceremonies)).one()
        assert revoked_officers(connection, row, sorted(approvers), _revoked) == found
