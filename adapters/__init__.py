"""OUT OF PCI SCOPE: the thin adapter tier the rest of the platform uses.

It speaks HTTP(S) to the vault and never imports an in-scope package (an import-linter
contract enforces it), so it never holds a PAN and stays outside the cardholder data
environment.
"""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "client",
    "errors",
    "services",
]
