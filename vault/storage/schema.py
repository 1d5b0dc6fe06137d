"""The vault's tables (SQLAlchemy Core); created by `vault/migrations/`.

IN PCI SCOPE, holds card data, encrypted only:

- ``tokens``: one row per token. The PAN is stored only as AES-256-GCM ciphertext under
  a wrapped data key (AAD binds token id, token, key version and token domain; rows
  sealed before session 37 bind no domain until a data rotation), plus an HMAC-SHA256
  fingerprint under the HSM's fingerprint key for deduplication and lookup. Delete
  crypto-shreds: ciphertext, nonce and fingerprint are set to NULL, the row stays as a
  tombstone.
- ``data_keys``: data keys wrapped under a KEK that never leaves the HSM.
- ``rate_state``, ``usage_counters``, ``oracle_watch``: rate limits, daily quotas and
  the tokenize-oracle guard, in the database so that every node enforces one limit.
  They hold identities, counts and HMAC fingerprints, never a PAN.
- ``idempotency_keys``: which token each idempotency key answers, for the keys a token
  row cannot hold (a key first answered by convergence: the card's token was made by
  an earlier call, and one token may answer many keys). Keys, identities and token
  ids, never a PAN.
- ``capture_sessions``: short-lived hosted-fields sessions (`vault.capture`): the shop's
  origin, the formats, the creating identity and domain, and the SHA-256 of the client
  secret (never the secret). No card data.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
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

__all__ = [
    "capture_sessions",
    "data_keys",
    "idempotency_keys",
    "key_approvals",
    "key_ceremonies",
    "metadata",
    "oracle_watch",
    "rate_state",
    "security_code_counts",
    "security_code_epochs",
    "security_codes",
    "tokens",
    "usage_counters",
]

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
    # The token domain (policy): convergence, lookup and idempotency keys are per domain.
    Column("domain", String(255), nullable=False),
    Column("idempotency_key", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("owner", "idempotency_key"),
    # Partial (migration 0025): only a row with a key has an entry. Most rows have none (a
    # batch item, a call without the header), and an entry of a NULL key serves no read
    # and enforces nothing (NULLs never conflict): it was index upkeep per card.
    Index(
        "uq_tokens_domain_idempotency_keyed",
        "domain",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    # Convergent formats: one live token per domain, PAN and format. Two concurrent
    # tokenize calls for the same PAN race on this index; the loser re-reads the winner's.
    Index(
        "uq_tokens_domain_convergent",
        "domain",
        "format",
        "fingerprint",
        unique=True,
        sqlite_where=text("convergent AND fingerprint IS NOT NULL"),
        postgresql_where=text("convergent AND fingerprint IS NOT NULL"),
    ),
    Index("ix_tokens_fingerprint", "fingerprint"),
    Index("ix_tokens_key_version", "key_version"),
    # Partial (migration 0025), as above: a token without an expiry has no entry, and
    # every read of the column compares it (`expires_at <= now`), which implies the
    # predicate on both databases.
    Index(
        "ix_tokens_expiring",
        "expires_at",
        sqlite_where=text("expires_at IS NOT NULL"),
        postgresql_where=text("expires_at IS NOT NULL"),
    ),
)

# An idempotency key's answer (review tok, F2). A token row holds the key of the call
# that made it (older code reads keys there alone); every key the vault answers is
# recorded here too, in the transaction of its first answer, so a key answered by
# convergence is held like one that made a token. The primary key makes two concurrent
# first uses of one key in a domain meet (the loser runs again and finds the winner's);
# an identity keeps a key once across domains, as on the token rows. A record answers
# for a window (24 h by default), then the purge removes it (review 27).
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("domain", String(255), primary_key=True),
    Column("idempotency_key", String(128), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("token_id", String(36), ForeignKey("tokens.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("owner", "idempotency_key", name="uq_idempotency_keys_owner"),
    # The purge forgets the oldest records past the window first (migration 0019).
    Index("ix_idempotency_keys_created_at", "created_at"),
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
    # The thumbprint of the MFA key that signed the proposal (None: not through the API).
    Column("proposer_keyid", String(64), nullable=True),
    # The signed request that proposed it, as verified (`vault.approval_proof`): a
    # proposal counts only while it verifies under the proposer's registered MFA key.
    Column("proposer_proof", Text, nullable=True),
    # The client certificate (PEM) the proposal came with: while the CRL revokes it, the
    # ceremony takes no approval (migration 0020, `vault._ceremony_guards`).
    Column("proposer_certificate", Text, nullable=True),
)

key_approvals = Table(
    "key_approvals",
    metadata,
    Column("ceremony_id", String(36), ForeignKey("key_ceremonies.id"), primary_key=True),
    Column("officer", String(255), primary_key=True),
    Column("approved_at", DateTime(timezone=True), nullable=False),
    Column("keyid", String(64), nullable=True),  # the approval's MFA key, as above
    Column("proof", Text, nullable=True),  # the approval's signed request, as above
    Column("certificate", Text, nullable=True),  # its client certificate, as above
)

# Rate limits as GCRA (the generic cell rate algorithm): one "theoretical arrival time"
# per identity, moved forward by each call's cost in one conditional UPDATE, so every
# node shares one limit without a read-modify-write race.
rate_state = Table(
    "rate_state",
    metadata,
    Column("identity", String(255), primary_key=True),
    Column("tat", Float, nullable=False),
)

# Fixed-window counters: daily detokenize quotas (window = UTC day number).
usage_counters = Table(
    "usage_counters",
    metadata,
    Column("identity", String(255), primary_key=True),
    Column("counter", String(32), primary_key=True),
    Column("window", BigInteger, primary_key=True, autoincrement=False),
    Column("count", BigInteger, nullable=False),
)

# The tokenize-oracle guard: which distinct PANs (by fingerprint, or one row per fresh
# token in a small space) an identity sent into one BIN/last-four bucket in a window.
# `bucket` is a SHA-256 prefix of the bucket's name, not the digits.
oracle_watch = Table(
    "oracle_watch",
    metadata,
    Column("identity", String(255), primary_key=True),
    Column("bucket", LargeBinary(16), primary_key=True),
    Column("window", BigInteger, primary_key=True, autoincrement=False),
    Column("item", LargeBinary(32), primary_key=True),
)

# Officers' request signatures accepted (`vault.officer_mfa`): each nonce once, so a
# replayed signed request is refused on every node. Rows older than twice the accepted
# clock window are deleted as new ones arrive (a replay that old fails on `created`).
officer_request_nonces = Table(
    "officer_request_nonces",
    metadata,
    Column("nonce", String(64), primary_key=True),
    Column("identity", String(255), nullable=False),
    Column("keyid", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
)

# Hosted card capture (vault/capture.py): one row per session. `secret_hash` is the
# SHA-256 of a 256-bit random secret shown once to its creator; `uses` counts captures
# against `max_uses` (1 by default), moved by one conditional UPDATE in the capture's
# own transaction, so two captures cannot both spend the last use.
capture_sessions = Table(
    "capture_sessions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("secret_hash", LargeBinary(32), nullable=False),
    Column("origin", String(255), nullable=False),
    Column("formats", Text, nullable=False),
    Column("security_code", String(16), nullable=False),
    Column("owner", String(255), nullable=False),
    Column("domain", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("max_uses", Integer, nullable=False),
    Column("uses", Integer, nullable=False, server_default="0"),
    Column("last_token_id", String(36), nullable=True),
    Index("ix_capture_sessions_expires_at", "expires_at"),
    # Each session opened counts its owner's open ones (migration 0024).
    Index("ix_capture_sessions_owner_expires_at", "owner", "expires_at"),
)

# Card security codes, held once (`vault.security_codes`, PCI DSS 3.3.1 / 3.3.2): at most
# one per token, AES-256-GCM under the HSM key of its hour's epoch (AAD: token id, token
# and epoch), deleted by the first relay call that uses it or when it expires (an hour at
# most). The epoch's key is destroyed in the HSM once every code under it has expired.
security_codes = Table(
    "security_codes",
    metadata,
    Column("token_id", String(36), ForeignKey("tokens.id"), primary_key=True),
    Column("epoch", BigInteger, nullable=False, index=True),
    Column("iv", LargeBinary(12), nullable=False),
    Column("ciphertext", LargeBinary(32), nullable=False),
    Column("held_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

# One row per epoch key ever made: the primary key elects the one node that creates an
# hour's key; `destroyed_at` is the evidence that no backup can hold it any longer.
security_code_epochs = Table(
    "security_code_epochs",
    metadata,
    Column("epoch", BigInteger, primary_key=True, autoincrement=False),
    Column("label", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("destroyed_at", DateTime(timezone=True), nullable=True),
)

# Counts of codes held, used and expired per hour (metrics and evidence bundles count,
# never show): incremented in the transaction that holds, uses or expires the code.
security_code_counts = Table(
    "security_code_counts",
    metadata,
    Column("hour", BigInteger, primary_key=True, autoincrement=False),
    Column("event", String(16), primary_key=True),
    Column("count", BigInteger, nullable=False),
)
