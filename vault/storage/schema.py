"""The vault's tables (SQLAlchemy Core); created by `vault/migrations/`.

IN PCI SCOPE, holds card data, encrypted only:

- ``tokens``: one row per token. The PAN is stored only as AES-256-GCM ciphertext under
  a wrapped data key (AAD binds token id, token and key version), plus an HMAC-SHA256
  fingerprint under the HSM's fingerprint key for deduplication and lookup. Delete
  crypto-shreds: ciphertext, nonce and fingerprint are set to NULL, the row stays as a
  tombstone.
- ``data_keys``: data keys wrapped under a KEK that never leaves the HSM.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from audit.schema import metadata

__all__ = ["data_keys", "key_approvals", "key_ceremonies", "metadata", "tokens"]

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("token", String(64), nullable=False, unique=True),
    Column("format", String(64), nullable=False),
    Column("convergent", Boolean, nullable=False),
    Column("fingerprint", LargeBinary(32), nullable=True),
    Column("fp_version", Integer, nullable=True),
    Column("key_version", Integer, nullable=True),
    Column("nonce", LargeBinary(12), nullable=True),
    Column("ciphertext", LargeBinary, nullable=True),
    Column("metadata", Text, nullable=False, server_default="{}"),
    Column("owner", String(255), nullable=False),
    Column("idempotency_key", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("owner", "idempotency_key"),
    # Convergent formats: one live token per PAN and format. Two concurrent tokenize
    # calls for the same PAN race on this index; the loser re-reads the winner's token.
    Index(
        "uq_tokens_convergent",
        "format",
        "fingerprint",
        unique=True,
        sqlite_where=text("convergent AND fingerprint IS NOT NULL"),
        postgresql_where=text("convergent AND fingerprint IS NOT NULL"),
    ),
    Index("ix_tokens_fingerprint", "fingerprint"),
    Index("ix_tokens_key_version", "key_version"),
    Index("ix_tokens_expires_at", "expires_at"),
)

data_keys = Table(
    "data_keys",
    metadata,
    Column("purpose", String(32), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("wrapped", LargeBinary, nullable=False),
    # The wrap *algorithm* (hsm.mechanisms.WrapAlgorithm, e.g. "aes-kwp-rfc5649"); the
    # column keeps its first name, its values were relabelled by migration 0003.
    Column("wrap_mechanism", String(32), nullable=False),
    Column("kek_label", String(64), nullable=False),
    Column("algorithm", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True), nullable=True),
)

key_ceremonies = Table(
    "key_ceremonies",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(24), nullable=False),
    Column("proposer", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("old_version", Integer, nullable=True),
    Column("new_version", Integer, nullable=True),
    Column("progress_done", Integer, nullable=False, server_default="0"),
    Column("progress_total", Integer, nullable=False, server_default="0"),
    Column("destroy_after", DateTime(timezone=True), nullable=True),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("detail", Text, nullable=False, server_default=""),
)

key_approvals = Table(
    "key_approvals",
    metadata,
    Column("ceremony_id", String(36), ForeignKey("key_ceremonies.id"), primary_key=True),
    Column("officer", String(255), primary_key=True),
    Column("approved_at", DateTime(timezone=True), nullable=False),
)
