"""The checks of `cofre audit verify` beyond the tree itself: the witnesses'
cosignatures and a signed head kept outside the database (moved from
`cofre_cli.commands.audit`), and the public key file it is given.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import typer

from cofre.errors import ConfigurationError


def read_pem(path: Path) -> bytes:
    """The public key file `path` (--public-key); `ConfigurationError` when it cannot be
    read (it was a traceback: review of session 32)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read --public-key ({exc.strerror})") from None


def check_witnesses(
    store: Any, files: list[Path], quorum: int, unsafe: bool, *, settings: Any, pem: bytes
) -> int | None:
    """Return how many stored cosignatures verify (None when no key is pinned and
    `unsafe`). Raises `AuditVerificationFailed` when one fails, the newest head lacks
    `quorum`, no key is pinned (fail closed), or a configured witness has cosigned a
    checkpoint this log no longer holds (asked live: a restore before any new write)."""
    from audit.errors import AuditVerificationFailed, NoteError
    from audit.note import VerifierKey
    from audit.witnessed import verify_witnessed
    from cofre_cli.witnessing import ask_witnesses

    if not files:
        if unsafe:
            return None
        raise AuditVerificationFailed(
            "no witness key pinned (--witness-key): nothing but the operator's own key "
            "vouches for this log, and its holder can rewrite it; pass the witnesses' "
            "keys, or --unsafe-no-witness to check the operator's signatures alone"
        )
    try:
        keys = [VerifierKey.parse(path.read_text(encoding="utf-8")) for path in files]
    except (OSError, NoteError) as exc:
        raise AuditVerificationFailed(f"cannot read a witness key: {exc}") from None
    for warning in ask_witnesses(settings, store, keys, pem):
        typer.echo(warning, err=True)
    return verify_witnessed(store.engine, store.heads(), keys, quorum)


def check_kept_head(store: Any, path: Path, pem: bytes) -> None:
    """Raise `AuditVerificationFailed` unless the log still contains the signed head in
    `path`: same entries up to its size, hence the same root."""
    from audit.errors import AuditVerificationFailed
    from audit.heads import SignedTreeHead, verify_tree_head

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        head = SignedTreeHead(
            tree_size=int(data["tree_size"]),
            root_hash=base64.b64decode(data["root_hash"]),
            timestamp_ms=int(data["timestamp_ms"]),
            key_id=str(data["key_id"]),
            checkpoint=str(data["checkpoint"]),
            signature=base64.b64decode(data["signature"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditVerificationFailed(
            f"cannot read the kept head {path} ({type(exc).__name__})"
        ) from None
    verify_tree_head(head, store.key_chain(pem).pem_for(head.tree_size))
    size = store.size()
    if size < head.tree_size:
        raise AuditVerificationFailed(
            f"the log has {size} entries, fewer than the {head.tree_size} of the kept head: "
            f"entries {size} to {head.tree_size - 1} were removed (a restore from an older "
            "backup, or tampering)"
        )
    if store.root_at(head.tree_size) != head.root_hash:
        raise AuditVerificationFailed(
            f"the log's first {head.tree_size} entries do not hash to the kept head's root: "
            "the log was rewritten or forked (a restore from an older backup followed by "
            "new entries, or tampering)"
        )
