"""What a writer of the vault's database who holds no HSM PIN can do with a backup
(session 38, bak38): read a token's row (and the wrapped data keys) as a backup holds
them, and put the row's card columns back over its tombstone later."""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import Engine

_CARD_COLUMNS: Final = "ciphertext, nonce, key_version, fingerprint, fp_version"


def backup(engine: Engine, token: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What a backup taken now holds of `token`'s row and of the data keys."""
    with engine.connect() as connection:
        row = connection.execute(
            sa.text(f"SELECT id, {_CARD_COLUMNS} FROM tokens WHERE token = :t"), {"t": token}
        ).one()
        keys = connection.execute(
            sa.text("SELECT purpose, version, wrapped FROM data_keys ORDER BY purpose, version")
        ).all()
    return dict(row._mapping), [dict(key._mapping) for key in keys]


def restore_row(engine: Engine, row: dict[str, Any]) -> None:
    """The writer puts the backup's card columns back over the tombstone."""
    with engine.begin() as connection:
        done = connection.execute(
            sa.text(
                "UPDATE tokens SET ciphertext = :ciphertext, nonce = :nonce, "
                "key_version = :key_version, fingerprint = :fingerprint, "
                "fp_version = :fp_version, deleted_at = NULL WHERE id = :id"
            ),
            row,
        )
        assert done.rowcount == 1
