"""Errors of the api package.

IN PCI SCOPE.

    CofreError
    └── ApiError
        ├── IdentityMissing     code identity_missing (no verified client certificate,
        │                       or one that is not a client certificate: no URI SAN, CA:TRUE,
        │                       no clientAuth extended key usage)
        ├── IdentityAmbiguous   code identity_ambiguous (more than one URI SAN)
        ├── CertificateRevoked  code certificate_revoked (the CRL loaded since the
        │                       connection's handshake revokes its certificate)
        ├── CrlExpired          code crl_expired (the CRL is past nextUpdate: readiness fails)
        ├── CrlInvalid          code crl_invalid (the CRL file could not be loaded)
        ├── Draining            code not_ready (a stop signal arrived; finishing in-flight work)
        ├── WorkerUnready       code worker_unready (another worker of this node has not
        │                       been ready within the last few seconds: the health
        │                       listener answers for the whole node)
        ├── CaptureBusy         code capture_busy (the capture listener's share of the
        │                       database pool is in use: `retry_after` seconds)
        └── PKIError            code pki_error (the dev PKI cannot issue or read a certificate)
"""

from __future__ import annotations

from cofre.errors import CofreError


class ApiError(CofreError):
    code = "api_error"


class IdentityMissing(ApiError):
    code = "identity_missing"


class IdentityAmbiguous(IdentityMissing):
    code = "identity_ambiguous"


class CertificateRevoked(IdentityMissing):
    code = "certificate_revoked"


class CrlExpired(ApiError):
    code = "crl_expired"


class CrlInvalid(ApiError):
    code = "crl_invalid"


class Draining(ApiError):
    code = "not_ready"


class WorkerUnready(ApiError):
    code = "worker_unready"


class CaptureBusy(ApiError):
    """The capture listener has as many database operations under way in this process
    as its share of the pool allows (`COFRE_CAPTURE__MAX_IN_FLIGHT`): nothing was done;
    `retry_after` is the seconds to wait."""

    code = "capture_busy"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PKIError(ApiError):
    code = "pki_error"
