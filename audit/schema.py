"""The audit log's tables (SQLAlchemy Core). Created by the migrations in
`vault/migrations/`, which also install the append-only triggers and grants.

IN PCI SCOPE.

- ``audit_entries``: the log's content, one canonical-JSON entry per row, written in the
  same transaction as the operation it records. Append-only.
- ``audit_queue``: entries written but not yet integrated into the tree (the Trillian
  "unsequenced" queue), each with its entry's ``created_at`` (the partition it is in).
  The sequencer deletes from it; it is not part of the log.
- ``audit_leaves``: leaf index -> entry, assigned by the sequencer. Append-only.
- ``audit_nodes``: the hash of every complete subtree (level, index), so proofs cost
  O(log n) lookups. Append-only; a cache that `cofre audit verify` never trusts.
- ``audit_heads``: signed tree heads. Append-only.
- ``audit_cosignatures``: the witnesses' cosignatures (c2sp.org/tlog-cosignature) of
  heads, as their signature lines' parts. Append-only (migration 0007).
- ``audit_handover_cosignatures``: the witnesses' cosignatures of the audit key's
  handover checkpoints (``audit_handovers``), kept apart from the heads' (a handover
  shares its tree size with a head but not its text). Append-only (migration 0011).
- ``audit_archive``: the sealed segments shipped to object storage by
  `cofre audit archive` (leaf range, object key, SHA-256). Append-only.
- ``audit_retired``: the monthly ``audit_entries`` partitions dropped from the database
  after their segments were archived and verified, and the leaf index from which the
  online log is complete again (``online_from``). Append-only.

On PostgreSQL ``audit_entries`` is range-partitioned by ``created_at`` (one partition a
month and a default one, `audit.partitions`); its primary key is then ``(id,
created_at)`` and the other tables carry no foreign key to it. SQLite keeps one table.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

# SQLite only auto-increments INTEGER PRIMARY KEY columns.
_BigId = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

audit_entries = Table(
    "audit_entries",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("payload", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

audit_queue = Table(
    "audit_queue",
    metadata,
    Column("entry_id", _BigId, ForeignKey("audit_entries.id"), primary_key=True),
    # The entry's own created_at (migration 0017), so that on PostgreSQL the sequencer
    # reads it from its partition alone. NULL for a row queued by code before 0017.
    Column("created_at", DateTime(timezone=True), nullable=True),
)

audit_leaves = Table(
    "audit_leaves",
    metadata,
    Column("leaf_index", BigInteger, primary_key=True, autoincrement=False),
    Column("entry_id", _BigId, ForeignKey("audit_entries.id"), nullable=False, unique=True),
)

audit_nodes = Table(
    "audit_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

audit_heads = Table(
    "audit_heads",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("timestamp_ms", BigInteger, nullable=False),
    Column("key_id", String(128), nullable=False),
    Column("checkpoint", Text, nullable=False),
    Column("signature", LargeBinary, nullable=False),
)

audit_cosignatures = Table(
    "audit_cosignatures",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("witness", String(200), primary_key=True),
    Column("key_id", BigInteger, primary_key=True, autoincrement=False),
    # The witness's own time (POSIX seconds), inside what it signed.
    Column("timestamp", BigInteger, nullable=False),
    Column("signature", LargeBinary, nullable=False),
)

# Handover checkpoints of the audit signing key (`audit.handover`): the signed note at
# the head where the key changed, by both keys. Append-only; the newest row names the key
# that signs every later head.
audit_handovers = Table(
    "audit_handovers",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("key_label", String(128), nullable=False),
    Column("note", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

# The witnesses' cosignatures (cosignature/v1) of each handover checkpoint, over the
# handover's whole text (its `cofre-key-handover` line included). A witness cosigns a
# handover only to a key its operator pinned, so these are what proves to an auditor that
# a rotation was not one HSM PIN holder's alone (review 29 M3). Append-only.
audit_handover_cosignatures = Table(
    "audit_handover_cosignatures",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("witness", String(200), primary_key=True),
    Column("key_id", BigInteger, primary_key=True, autoincrement=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("signature", LargeBinary, nullable=False),
)

audit_archive = Table(
    "audit_archive",
    metadata,
    Column("segment_start", BigInteger, primary_key=True, autoincrement=False),
    Column("segment_end", BigInteger, nullable=False, unique=True),
    Column("object_key", String(1024), nullable=False),
    Column("object_sha256", String(64), nullable=False),
    Column("object_bytes", BigInteger, nullable=False),
    Column("archived_at", DateTime(timezone=True), nullable=False),
)

audit_retired = Table(
    "audit_retired",
    metadata,
    Column("partition", String(63), primary_key=True),
    Column("range_from", DateTime(timezone=True), nullable=False),
    Column("range_to", DateTime(timezone=True), nullable=False),
    Column("entries", BigInteger, nullable=False),
    Column("max_leaf_index", BigInteger, nullable=True),
    Column("online_from", BigInteger, nullable=False),
    Column("retired_at", DateTime(timezone=True), nullable=False),
)

# Execution option for read-only work: on SQLite such a connection begins a deferred
# transaction instead of BEGIN IMMEDIATE, so readers never queue behind writers (WAL).
READ_ONLY = {"cofre_read_only": True}

APPEND_ONLY_TABLES = ("audit_entries", "audit_leaves", "audit_nodes", "audit_heads")
ARCHIVE_TABLES = ("audit_archive", "audit_retired")
