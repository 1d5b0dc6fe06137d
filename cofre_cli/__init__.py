"""The roof of the house: the `cofre` command line, the wiring and the dev environment.

IN PCI SCOPE (wiring). This package builds the runtime from every other package
(database, HSM, vault, audit, API) and nothing of ours imports it; only the console
script, the tests and the bench do. The base every package may import is `cofre`
(errors, settings, redaction, database-error helpers); it imports nothing of ours.
"""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "audit_trail",
    "capture",
    "commands",
    "devenv",
    "devwitness",
    "informational",
    "key_management",
    "main",
    "officer_token",
    "serving",
    "stopping",
    "wiring",
    "witnessing",
    "workers",
]
