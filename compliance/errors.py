"""Errors of the compliance package.

IN PCI SCOPE.

    CofreError
    └── ComplianceError
        ├── ChainBroken         a chained bundle would leave a gap or an overlap
        └── EvidenceUnavailable the database could not be read for the bundle (503)
"""

from __future__ import annotations

from cofre.errors import CofreError


class ComplianceError(CofreError):
    code = "compliance_error"


class ChainBroken(ComplianceError):
    code = "evidence_chain_broken"


class EvidenceUnavailable(ComplianceError):
    code = "evidence_unavailable"
