"""Cofre: the project kernel (version, the root error, typed settings) and the CLI wiring.

IN PCI SCOPE. Cofre is a PCI-DSS tokenization vault. This package only wires the
in-scope packages together; `cofre.errors` and `cofre.settings` are the base layer
that every other in-scope package may import.
"""

__version__ = "0.1.0"
