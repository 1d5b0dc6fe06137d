"""Errors of the policies package.

IN PCI SCOPE.

    CofreError
    └── PolicyError
        ├── PolicyInvalid       code policy_invalid    (the policy file does not load)
        ├── PolicyDenied        code policy_denied     (an identity may not do this)
        └── RateLimited         code rate_limited
"""

from __future__ import annotations

from cofre.errors import CofreError


class PolicyError(CofreError):
    code = "policy_error"


class PolicyInvalid(PolicyError, ValueError):
    code = "policy_invalid"


class PolicyDenied(PolicyError):
    code = "policy_denied"


class RateLimited(PolicyError):
    """Too many requests; `retry_after` is the seconds until one more is allowed."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
