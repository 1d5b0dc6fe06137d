"""IN PCI SCOPE, holds card data: tokens, token formats, FF1 and the token store.

`vault` is the only package that ever sees a PAN in clear. Everything here is hazmat in
pyca/cryptography's sense: a PAN is carried as `vault.pan.Pan`, never as a `str`, and
leaves only through `Pan.reveal()`.
"""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "approval_proof",
    "audit_rotation",
    "capture",
    "card",
    "ceremony",
    "cryptoperiod",
    "custody",
    "errors",
    "fpe",
    "httpsig",
    "key_inventory",
    "key_presence",
    "key_registry",
    "keyring",
    "limits",
    "migrations",
    "models",
    "officer_mfa",
    "operations",
    "pan",
    "policy_record",
    "purge",
    "relay",
    "relay_client",
    "rotation",
    "rotation_worker",
    "sad",
    "security_codes",
    "service",
    "signing",
    "storage",
    "tokens",
]
