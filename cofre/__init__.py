"""Cofre's base: the version, the root error, typed settings, redaction, DB errors.

IN PCI SCOPE. Every other package may import this one, and it imports no package of
ours: the command line, the wiring and the dev environment live in `cofre_cli`, the roof
that nothing imports.
"""

__version__ = "0.1.0"

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "__version__",
    "background",
    "blocking",
    "dberrors",
    "errors",
    "filemodes",
    "origins",
    "redaction",
    "settings",
    "tls",
]
