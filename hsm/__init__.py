"""IN PCI SCOPE, holds keys: the only package that speaks PKCS#11 (python-pkcs11).

Nothing above `hsm` ever sees a `pkcs11` exception, a session or an object handle: the
provider returns bytes and raises `hsm.errors.HSMError` subclasses. Only `vault` and the
CLI wiring may import this package (an import-linter contract enforces it).
"""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "aead",
    "errors",
    "keys",
    "library",
    "mechanisms",
    "models",
    "provider",
    "selftest",
    "session",
    "softhsm",
]
