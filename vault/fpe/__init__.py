"""IN PCI SCOPE, holds card data: format-preserving encryption (NIST SP 800-38G FF1)."""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "ff1",
]
