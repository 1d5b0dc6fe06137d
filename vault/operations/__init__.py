"""The vault's operations, one module each (as HashiCorp Vault's transit backend keeps
one file per path): tokenize, reveal (detokenize), lookup and metadata, relay, delete and
purge, update (a token's metadata, life and card details), audit access.
`vault.service.VaultService` puts them together; what they share is in `vault/_core.py`.

IN PCI SCOPE, holds card data.
"""

# The public modules of this package (its rooms); tests/test_exported_members.py pins
# this list.
__all__ = [
    "audit_access",
    "capture",
    "codes",
    "delete",
    "lookup",
    "relay",
    "reveal",
    "tokenize",
    "update",
]
