"""OUT OF THE VAULT'S TRUST: the witness, run by a party outside the vault's operators.

A small C2SP tlog-witness (c2sp.org/tlog-witness): it holds its own Ed25519 key and its
own SQLite file with the last checkpoint it cosigned per log, and cosigns a vault's new
checkpoint only with a valid consistency proof from that one. It never touches the
vault's database or HSM (an import-linter contract keeps `vault`, `hsm`, `sqlalchemy`
and `pkcs11` out of it); it shares only the note and Merkle code of `audit`.
"""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "client",
    "core",
    "errors",
    "server",
    "state",
]
