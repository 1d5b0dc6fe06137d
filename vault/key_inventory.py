"""The key inventory officers and evidence bundles see: token keys with their
attributes, data keys with their states, and how many records each key still protects.

IN PCI SCOPE (key management). Never key material: labels, attributes, versions, counts.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from hsm.provider import HSMProvider
from vault.keyring import DataKeyring, KeyPurpose
from vault.storage.schema import tokens


def record_counts(connection: Connection) -> tuple[dict[int, int], dict[int, int]]:
    """Records per PAN data key version, and per fingerprint key version."""
    counts: dict[int, int] = dict(
        connection.execute(
            select(tokens.c.key_version, func.count())
            .where(tokens.c.key_version.is_not(None))
            .group_by(tokens.c.key_version)
        ).all()
    )
    fp_counts: dict[int, int] = dict(
        connection.execute(
            select(tokens.c.fp_version, func.count())
            .where(tokens.c.fingerprint.is_not(None))
            .group_by(tokens.c.fp_version)
        ).all()
    )
    return counts, fp_counts


def describe_keys(
    counts: dict[int, int],
    fp_counts: dict[int, int],
    keyring: DataKeyring,
    provider: HSMProvider,
) -> dict[str, Any]:
    """The inventory: ``{"token_keys": [...], "data_keys": [...]}``."""
    data = []
    for info in keyring.inventory():
        entry = {
            "purpose": info.purpose.value,
            "version": info.version,
            "state": info.state.value,
            "kek": info.kek_label,
            "wrap_mechanism": info.wrap_mechanism,
            "created_at": info.created_at.isoformat(),
            "retired_at": info.retired_at.isoformat() if info.retired_at else None,
            "records": counts.get(info.version, 0) if info.purpose is KeyPurpose.PAN_GCM else None,
        }
        data.append(entry)
    token_keys = []
    stray = set(keyring.registry.unregistered())
    for key in provider.list_keys():
        if key.object_class == "PUBLIC_KEY":
            continue
        entry = {
            "label": key.label,
            "type": key.key_type,
            "sensitive": key.sensitive,
            "extractable": key.extractable,
            "never_extractable": key.never_extractable,
            "cka_id": key.key_id,
            # False for a key on the token that Cofre did not create (never used).
            "registered": key.label not in stray,
        }
        if key.label.startswith("cofre-fp-v"):
            entry["records"] = fp_counts.get(int(key.label.rsplit("v", 1)[1]), 0)
        token_keys.append(entry)
    return {"token_keys": token_keys, "data_keys": data}
