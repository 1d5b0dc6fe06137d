"""The root of every error Cofre raises.

IN PCI SCOPE. Every package has its own ``errors.py`` whose classes derive from
`CofreError`, so a caller can catch the whole project with one ``except``::

    CofreError
    ├── ConfigurationError              (cofre.errors)
    │   └── VaultUnreachable            (cofre.errors: the CLI's calls to the API)
    ├── vault.errors.VaultError
    │   └── vault.errors.InvalidPan     (also ValueError)
    ├── hsm.errors.HSMError
    ├── policies.errors.PolicyError
    ├── audit.errors.AuditError
    ├── api.errors.ApiError
    ├── compliance.errors.ComplianceError
    └── infra_pci.errors.InfraError

Outside the tree, and no error: `WouldBlock`, the signal `cofre.blocking` raises where a
call begun on an event loop would wait (it never reaches a caller).

Rule for every subclass: the message never contains a PAN, a key, or a PIN. Code that
formats a message from input uses the masked form (`vault.pan.Pan.__str__`).
"""

from __future__ import annotations


class CofreError(Exception):
    """Base class of all Cofre errors.

    `code` is the stable, machine-readable error code that the API puts in its RFC 9457
    problem+json bodies; subclasses override it.
    """

    code: str = "cofre_error"


class ConfigurationError(CofreError):
    """The settings are incomplete or contradictory (a missing PIN source, a bad path)."""

    code = "configuration_error"


class VaultUnreachable(ConfigurationError):
    """A command could not reach the vault over its API, or the vault stopped answering
    (the vault may be stopped, or the settings name the wrong address). A
    `ConfigurationError` for the handlers that catch those; its own code since session
    46, which said ``configuration_error`` for a vault that was merely stopped."""

    code = "vault_unreachable"


class WouldBlock(BaseException):
    """The call would wait here: run it again in a thread (`cofre.blocking`). A
    `BaseException`, not a `CofreError`: it is neither a refusal nor a failure, so
    nothing on its way may audit, translate or suppress it (``except Exception`` and
    ``except CofreError`` let it through), and it never reaches a caller of the API."""
