"""Errors of the infra_pci package; botocore errors are translated here, at the edge.

IN PCI SCOPE.

    CofreError
    └── InfraError
"""

from __future__ import annotations

from cofre.errors import CofreError


class InfraError(CofreError):
    code = "infra_error"
