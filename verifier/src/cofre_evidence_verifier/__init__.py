"""Offline verification of Cofre evidence bundles, for a QSA with a file and a public key.

IN PCI SCOPE (as evidence), and deliberately standalone: its own distribution
(`cofre-evidence-verifier`), needing only the Python standard library and
`cryptography`. It imports nothing of the vault, its HSM code or its database, and uses
no network; an import-linter contract and a test that runs it from a fresh virtualenv
keep it that way. `verify.verify_bundle` is the entry point; each family of checks is a
module of its own (`files`, `heads`, `entries`, `boundaries`, `policy`, `custody`,
`dual_control`, `key_registrations` (with `carried`), `deleted_tokens`, `chain` (with `earlier`),
`witnesses`; `lifecycle` reports without a verdict).
"""

__version__ = "0.1.0"

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "__version__",
    "boundaries",
    "bundle",
    "carried",
    "chain",
    "cli",
    "custody",
    "deleted_tokens",
    "dual_control",
    "dual_control_log",
    "earlier",
    "entries",
    "errors",
    "files",
    "heads",
    "html",
    "key_registrations",
    "keychain",
    "lifecycle",
    "merkle",
    "note",
    "policy",
    "report",
    "request_signature",
    "vault_names",
    "verify",
    "witnesses",
]
