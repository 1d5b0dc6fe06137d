"""The `cofre` command groups, one module per group; `cofre_cli.main` assembles them."""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "api",
    "audit",
    "config",
    "db",
    "evidence",
    "hsm",
    "infra",
    "keys",
    "mfa",
    "pki",
    "serve",
    "tokens",
    "witness",
]
