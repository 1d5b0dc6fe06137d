"""IN PCI SCOPE: the append-only, tamper-evident audit log (RFC 9162 Merkle tree).

Entries never hold a PAN (beyond BIN6/last4), a key or a PIN. Tree heads are signed by a
signer that the wiring injects (the HSM's audit key); `audit` itself never imports `hsm`.
"""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "archive",
    "archived_entries",
    "errors",
    "handover",
    "heads",
    "log",
    "merkle",
    "note",
    "partitions",
    "publisher",
    "retention",
    "schema",
    "segments",
    "sequencer",
    "store",
    "witness_lag",
    "witnessed",
]
