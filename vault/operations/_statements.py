"""The token store's statements of `vault.operations.tokenize`, kept apart so that
module stays readable in one sitting. They read tokens only, never a PAN in clear.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sqlalchemy import Connection, bindparam, select

from vault.storage.rawsql import fetch_all
from vault.storage.schema import tokens

# On the driver's cursor (`vault.storage.rawsql`): every fresh token is checked.
_TAKEN_SQL: Final = "SELECT token FROM tokens WHERE token IN (?*)"


def _taken(connection: Connection, candidates: Sequence[str]) -> set[str]:
    """Which of `candidates` (at most 500) the store holds already."""
    rows = fetch_all(connection, _TAKEN_SQL, candidates, in_list=len(candidates))
    return {token for (token,) in rows}


_HELD: Final = (
    select(tokens.c.id).where(tokens.c.fingerprint.in_(bindparam("fps", expanding=True))).limit(1)
)

# Does the domain hold a convergent token of these fingerprints in this format? On the
# driver's cursor (SQLAlchemy's expanding IN was ~0.3 ms a call, issue 21); the rows only
# if it does. The format binds the middle column of `uq_tokens_domain_convergent`: without
# it PostgreSQL walked every convergent entry of the domain (a cost growing with the store).
_ANY_CONVERGENT: Final = (
    "SELECT 1 FROM tokens WHERE domain = ? AND format = ? AND convergent"
    " AND fingerprint IN (?*) LIMIT 1"
)
_CONVERGENT: Final = select(tokens).where(
    tokens.c.domain == bindparam("domain"),
    tokens.c.format == bindparam("format"),
    tokens.c.fingerprint.in_(bindparam("fps", expanding=True)),
    tokens.c.convergent,
)


_BY_IDEMPOTENCY: Final = select(tokens).where(
    tokens.c.domain == bindparam("domain"),
    tokens.c.idempotency_key.in_(bindparam("keys", expanding=True)),
)
