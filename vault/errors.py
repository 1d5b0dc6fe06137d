"""Errors of the vault package.

IN PCI SCOPE. No message here ever includes a PAN: input is described by its length
and kind, or by the masked form.

    CofreError
    └── VaultError
        ├── InvalidPan              (also ValueError)  code invalid_pan
        ├── FPEError                (also ValueError)  code invalid_fpe_input
        ├── TokenNotFound                              code token_not_found
        ├── TokenExpired                               code token_expired
        ├── TokenDeleted                               code token_deleted
        ├── TokenSpaceExhausted                        code token_space_exhausted
        ├── FormatNotApplicable                        code format_not_applicable
        ├── IntegrityError                             code integrity_error
        ├── InvalidMetadata         (also ValueError)  code invalid_metadata
        │   └── SensitiveAuthenticationData            code sensitive_authentication_data
        ├── InvalidTTL              (also ValueError)  code invalid_ttl
        ├── InvalidExpiry           (also ValueError)  code invalid_expiry
        │   └── CardExpired                            code card_expired
        ├── InvalidCardholderName   (also ValueError)  code invalid_cardholder_name
        ├── InvalidSecurityCode     (also ValueError)  code invalid_security_code
        ├── SecurityCodeForbidden   (also ValueError)  code security_code_forbidden
        ├── SecurityCodeUnavailable                    code security_code_unavailable
        ├── IdempotencyConflict                        code idempotency_conflict
        ├── BatchItemInvalid        (also ValueError)  code batch_item_invalid
        ├── RelayBodyInvalid        (also ValueError)  code invalid_relay_body
        ├── UpstreamTimeout                            code upstream_timeout
        ├── UpstreamUnavailable                        code upstream_unavailable
        ├── UpstreamBusy                               code upstream_busy (503, retry_after)
        ├── StorageUnavailable                         code storage_unavailable
        │   └── StaleRead                              (internal: the call runs again)
        ├── InvalidInput            (also ValueError)  code invalid_request
        │   └── SchemaMismatch                         code schema_mismatch
        │       └── SchemaNotCreated                   code schema_mismatch
        ├── DataKeyMissing                             code data_key_missing
        ├── CeremonyError                              code ceremony_invalid
        │   └── CeremonyRefused                        code ceremony_invalid (audited)
        │       └── CustodyNotAcknowledged             code custody_not_acknowledged
        │           └── CeremonyActionBeforeCustody    code ceremony_action_before_custody
        ├── CeremonyNotFound                           code ceremony_not_found
        ├── KeyNotRegistered                           code hsm_key_unregistered
        ├── KeyCryptoperiodOverdue                     code key_cryptoperiod_overdue
        ├── OfficerMfaError                            (401/403: the officer's second factor)
        │   ├── OfficerMfaRequired                     code mfa_required
        │   ├── OfficerMfaInvalid                      code mfa_invalid
        │   ├── OfficerMfaReplayed                     code mfa_replayed
        │   └── OfficerMfaNotRegistered                code mfa_not_registered
        ├── CustodyStatementInvalid                    code custody_statement_invalid
        ├── AuditRecordNotFound                        code not_found
        ├── CaptureError                               (hosted card capture)
        │   ├── CaptureRequestInvalid (ValueError)     code invalid_capture_request
        │   ├── InvalidOrigin         (ValueError)     code invalid_origin
        │   ├── CaptureUnauthorized                    code capture_unauthorized
        │   ├── OriginNotAllowed                       code origin_not_allowed
        │   ├── CaptureSessionExpired                  code capture_session_expired
        │   ├── CaptureSessionUsed                     code capture_session_used
        │   └── SecurityCodeNotAllowed (ValueError)    code security_code_not_allowed
        └── Throttled                                  (429, with retry_after)
            ├── OracleSuspected                        code oracle_suspected
            └── QuotaExceeded                          code quota_exceeded

    (policies.errors.RateLimited, code rate_limited, is raised here too: the vault
    keeps every limit in the database so that all nodes share it.)
"""

from __future__ import annotations

from cofre.errors import CofreError


class VaultError(CofreError):
    """Base class of the vault's errors."""

    code = "vault_error"


class InvalidPan(VaultError, ValueError):
    """The input is not an acceptable card number (the message never repeats it)."""

    code = "invalid_pan"


class FPEError(VaultError, ValueError):
    """FF1 was given a key, radix, alphabet, tweak or text it cannot accept."""

    code = "invalid_fpe_input"


class TokenNotFound(VaultError):
    code = "token_not_found"


class TokenExpired(VaultError):
    code = "token_expired"


class TokenDeleted(VaultError):
    """An idempotency key's token was deleted: a retry with the key is not answered it."""

    code = "token_deleted"


class TokenSpaceExhausted(VaultError):
    """Every token of a format's bucket (same BIN and last four) is already taken."""

    code = "token_space_exhausted"


class FormatNotApplicable(VaultError, ValueError):
    """The token format does not accept this PAN (its length, or its Luhn validity)."""

    code = "format_not_applicable"


class IntegrityError(VaultError):
    """A stored ciphertext failed authentication: moved, altered or under the wrong key;
    or a stored token found for a card holds another. `token_id` names the row when
    known: its refusal's audit entry names it, for the incident (session 37)."""

    code = "integrity_error"

    def __init__(self, message: str, *, token_id: str | None = None) -> None:
        super().__init__(message)
        self.token_id = token_id


class StorageUnavailable(VaultError):
    code = "storage_unavailable"


class StaleRead(StorageUnavailable):
    """A token row a transaction read without a lock, and then wrote or answered, was
    changed by another transaction first (a delete, the purge, an update): the
    transaction is undone and runs again (`VaultCore._settle`), reading the row as it
    now is. Internal: after the last attempt the caller gets a `StorageUnavailable`,
    and a `StaleRead` that escaped would be answered as one (503)."""


class InvalidInput(VaultError, ValueError):
    """A caller's string the store cannot hold (a NUL in PostgreSQL text): the caller's
    error, translated at the storage edge so it is never a false outage."""

    code = "invalid_request"


class InvalidMetadata(VaultError, ValueError):
    code = "invalid_metadata"


class SensitiveAuthenticationData(InvalidMetadata):
    """Metadata that is (or is named as) a card security code, PIN block or track data."""

    code = "sensitive_authentication_data"


class InvalidTTL(VaultError, ValueError):
    code = "invalid_ttl"


class InvalidExpiry(VaultError, ValueError):
    """The card expiry is not ``MM/YY`` or ``YYYY-MM``, or is implausibly far ahead."""

    code = "invalid_expiry"


class CardExpired(InvalidExpiry):
    """The card's expiry month has ended everywhere on Earth."""

    code = "card_expired"


class InvalidCardholderName(VaultError, ValueError):
    """The cardholder name is too long, holds control characters, or carries digits
    that could be a card number or a security code."""

    code = "invalid_cardholder_name"


class InvalidSecurityCode(VaultError, ValueError):
    """A card security code must be 3 or 4 ASCII digits."""

    code = "invalid_security_code"


class SecurityCodeForbidden(VaultError, ValueError):
    """The token format forbids a security code (its ``security_code = "forbid"``)."""

    code = "security_code_forbidden"


class SecurityCodeUnavailable(VaultError):
    """The vault cannot hold a security code now (its key epoch is not available)."""

    code = "security_code_unavailable"


class IdempotencyConflict(VaultError):
    """The idempotency key was used before for a different PAN or format."""

    code = "idempotency_conflict"


class BatchItemInvalid(VaultError, ValueError):
    """One item of a batch is invalid; nothing of the batch was written.

    `index` is the item's position, `item_code` the code it would have had alone.
    """

    code = "batch_item_invalid"

    def __init__(self, index: int, item_code: str, message: str) -> None:
        super().__init__(f"item {index}: {message}")
        self.index = index
        self.item_code = item_code


class RelayBodyInvalid(VaultError, ValueError):
    """A relay body lacks a token where the route expects one, or is not JSON the relay
    can send (NaN, an infinite number, an unpaired surrogate)."""

    code = "invalid_relay_body"


class UpstreamTimeout(VaultError):
    code = "upstream_timeout"


class UpstreamUnavailable(VaultError):
    """The upstream could not be reached, or answered with a server error."""

    code = "upstream_unavailable"


class UpstreamBusy(VaultError):
    """The route has as many relays waiting on its upstream in this process as it
    allows (its `max_in_flight`): nothing was revealed or sent; `retry_after` is the
    seconds to wait."""

    code = "upstream_busy"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SchemaMismatch(StorageUnavailable):
    """The database schema is missing, older than this code needs (run `cofre db
    migrate`), or newer and not declared compatible with it."""

    code = "schema_mismatch"


class SchemaNotCreated(SchemaMismatch):
    """The database says it holds no Cofre schema at all (no SQLite file, no schema
    version table and none of Cofre's tables): a database nobody has run `cofre db
    migrate` on yet, as opposed to one that cannot be read or holds another version."""


class DataKeyMissing(VaultError):
    """No data key of the wanted purpose and version is stored (the keyring is not set up)."""

    code = "data_key_missing"


class CeremonyError(VaultError):
    """A key ceremony cannot do that now (self-approval, expired, another one open)."""

    code = "ceremony_invalid"


class CeremonyRefused(CeremonyError):
    """A ceremony action refused inside its transaction (a self-approval, an action with
    no proof its officer's token signed it, an approval or cancel of a ceremony that is
    not pending): `KeyRotation.approve` and `cancel` record the denial, with `reason`, in
    a transaction of its own, as the refused one rolls back."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class CustodyNotAcknowledged(CeremonyRefused):
    """A proposal or an approval of a key ceremony by an officer with no acknowledgement
    of the custody statement in force (PCI DSS 3.7.8; `vault._custody_gate`): refused
    and audited as denied, like every ceremony refusal."""

    code = "custody_not_acknowledged"


class CeremonyActionBeforeCustody(CustodyNotAcknowledged):
    """A ceremony about to start counts a proposal or an approval that the audit log
    records before any acknowledgement of custody in force by its officer (PCI DSS
    3.7.8; one recorded before the custody gate existed, pending across the upgrade to
    session 35): the start is refused and audited as denied, nothing written. Its
    officers acknowledge, then the ceremony is cancelled and proposed again."""

    code = "ceremony_action_before_custody"


class CeremonyNotFound(VaultError):
    code = "ceremony_not_found"


class KeyNotRegistered(VaultError):
    """A key on the HSM is not in Cofre's key registry (or differs from its record)."""

    code = "hsm_key_unregistered"


class KeyCryptoperiodOverdue(VaultError):
    """A key in use is past its cryptoperiod (fails readiness only when configured)."""

    code = "key_cryptoperiod_overdue"


class OfficerMfaError(VaultError):
    """A key ceremony action or evidence export without a valid second factor: the
    signature over the request by the officer's own token key (`vault.officer_mfa`)."""

    code = "mfa_invalid"


class OfficerMfaRequired(OfficerMfaError):
    """The request carries no signature (``Signature``, ``Signature-Input``)."""

    code = "mfa_required"


class OfficerMfaInvalid(OfficerMfaError):
    """The signature is malformed, stale, over another request, or by another key."""

    code = "mfa_invalid"


class OfficerMfaReplayed(OfficerMfaError):
    """The signature's nonce was already used: a replayed request."""

    code = "mfa_replayed"


class OfficerMfaNotRegistered(OfficerMfaError):
    """The identity has no second-factor key in the policy (``mfa_public_key``)."""

    code = "mfa_not_registered"


class CustodyStatementInvalid(VaultError):
    """A key custody acknowledgement that is malformed, not signed by the officer's
    registered key, or names another identity or keys Cofre does not use."""

    code = "custody_statement_invalid"


class CaptureError(VaultError):
    """Base of the hosted-capture errors. Their messages name the session's state,
    never the card, the secret or the secret's hash."""

    code = "capture_error"


class CaptureRequestInvalid(CaptureError, ValueError):
    """A capture session request the vault cannot serve (formats, uses, a TTL)."""

    code = "invalid_capture_request"


class InvalidOrigin(CaptureError, ValueError):
    """Not an exact web origin the vault binds a session to (scheme, host, port)."""

    code = "invalid_origin"


class CaptureUnauthorized(CaptureError):
    """No such session, or a missing or wrong client secret (one answer for all three,
    so that a guess learns nothing)."""

    code = "capture_unauthorized"


class OriginNotAllowed(CaptureError):
    """The request came from an origin the session is not bound to."""

    code = "origin_not_allowed"


class CaptureSessionExpired(CaptureError):
    code = "capture_session_expired"


class CaptureSessionUsed(CaptureError):
    """The session's captures are used up (single-use by default)."""

    code = "capture_session_used"


class SecurityCodeNotAllowed(CaptureError, ValueError):
    """A card security code was sent to a session (or format) that forbids it."""

    code = "security_code_not_allowed"


class AuditRecordNotFound(VaultError):
    """No audit entry at that index, or a tree size outside the audit log."""

    code = "not_found"


class Throttled(VaultError):
    """Refused for now; `retry_after` is the seconds until the caller may try again."""

    code = "throttled"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OracleSuspected(Throttled):
    """Too many distinct card numbers of one BIN and last four from one identity in the
    guard's window: the pattern of someone guessing a PAN from its token."""

    code = "oracle_suspected"
    # Set by the guard that refused (`vault.limits.Limits.watch`): the buckets it found
    # full, which the process remembers (`vault._suspected_buckets`); never part of an
    # answer.
    full: tuple[bytes, ...] = ()


class QuotaExceeded(Throttled):
    """The identity's daily quota (detokenize) is used up until the next UTC day."""

    code = "quota_exceeded"
    # Set by the charge that refused: (counter, daily limit, day, units it saw left),
    # for `Limits.learn_quota`; never part of an answer.
    seen: tuple[str, int, int, int] | None = None
