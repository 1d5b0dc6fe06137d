"""Cofre's base: the version, the root error, typed settings, redaction, DB errors.

IN PCI SCOPE. Every other package may import this one, and it imports no package of
ours: the command line, the wiring and the dev environment live in `cofre_cli`, the roof
that nothing imports.
"""

__version__ = "0.1.0"
