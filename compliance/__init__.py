"""IN PCI SCOPE: PCI DSS evidence bundles, signed, verifiable offline by a QSA.

The offline verifier is a distribution of its own (`cofre-evidence-verifier`, import
package `cofre_evidence_verifier`, directory verifier/), so an auditor installs it
without the vault.
"""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "custody",
    "dual_control",
    "errors",
    "export",
]
