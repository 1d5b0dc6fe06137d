"""Errors of the api package.

IN PCI SCOPE.

    CofreError
    └── ApiError
        └── IdentityMissing     code identity_missing (no verified client certificate)
"""

from __future__ import annotations

from cofre.errors import CofreError


class ApiError(CofreError):
    code = "api_error"


class IdentityMissing(ApiError):
    code = "identity_missing"
