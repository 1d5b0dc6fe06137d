"""RFC 9457 problem details: every error the API returns, with a stable ``code``.

IN PCI SCOPE. A problem body never contains a PAN: details come from Cofre's own error
messages (which never repeat input) and are passed through the PAN masker anyway.
"""

from __future__ import annotations

import math
from typing import Any, Final

from starlette.responses import JSONResponse

from cofre.redaction import mask_pan_like_or_withhold, mask_pan_values_or_withhold

PROBLEM_JSON: Final = "application/problem+json"
TYPE_BASE: Final = "https://cofre.dev/problems/"

# code -> (HTTP status, title). Clients switch on `code`; statuses follow HTTP meaning.
PROBLEMS: Final[dict[str, tuple[int, str]]] = {
    "invalid_request": (422, "The request is not valid"),
    "invalid_pan": (422, "Not an acceptable card number"),
    "invalid_metadata": (422, "Invalid metadata"),
    "sensitive_authentication_data": (422, "Sensitive authentication data must not be stored"),
    "invalid_ttl": (422, "Invalid time to live"),
    "invalid_expiry": (422, "The card expiry must be MM/YY or YYYY-MM"),
    "card_expired": (422, "The card has expired"),
    "invalid_cardholder_name": (422, "The cardholder name is not acceptable"),
    "invalid_security_code": (422, "The security code must be 3 or 4 digits"),
    "security_code_forbidden": (422, "The token format forbids a security code"),
    "security_code_unavailable": (503, "The vault cannot hold a security code now"),
    "invalid_relay_body": (422, "The relay body lacks a token where the route expects one"),
    "invalid_fpe_input": (422, "The input cannot be format-preserving encrypted"),
    "compliance_error": (422, "The evidence request cannot be served"),
    "evidence_chain_broken": (422, "The chained bundle would not start where the previous ended"),
    "policy_invalid": (422, "The policy is not valid"),
    "policy_error": (403, "Denied by policy"),
    "proof_invalid": (404, "No such proof"),
    "format_not_applicable": (422, "The token format does not accept this card number"),
    "batch_item_invalid": (422, "An item of the batch is invalid; nothing was written"),
    "malformed_json": (400, "The body is not valid JSON"),
    "malformed_http_request": (400, "The HTTP request is malformed"),
    "request_head_too_large": (400, "The request line and headers are too large"),
    "identity_missing": (401, "No verified client identity"),
    "identity_ambiguous": (401, "The client certificate names more than one identity"),
    "certificate_revoked": (401, "The client certificate has been revoked"),
    "mfa_required": (401, "This action needs the officer's token signature (MFA)"),
    "mfa_invalid": (401, "The officer's token signature (MFA) is not valid"),
    "mfa_replayed": (401, "The officer's token signature (MFA) was already used"),
    "mfa_not_registered": (403, "No MFA key is registered for this identity"),
    "custody_statement_invalid": (422, "The key custody acknowledgement is not valid"),
    "policy_denied": (403, "Denied by policy"),
    "token_not_found": (404, "No such token"),
    "not_found": (404, "No such resource"),
    "method_not_allowed": (405, "Method not allowed"),
    "idempotency_conflict": (409, "Idempotency key reused for another request"),
    "ceremony_invalid": (409, "The key ceremony cannot do that now"),
    "ceremony_not_found": (404, "No such key ceremony"),
    "custody_not_acknowledged": (409, "Acknowledge key custody before a key ceremony"),
    "ceremony_action_before_custody": (
        409,
        "A counted ceremony action predates its officer's custody acknowledgement",
    ),
    "capture_error": (422, "The capture cannot be served"),
    "invalid_capture_request": (422, "The capture session request is not valid"),
    "invalid_origin": (422, "Not an exact https origin"),
    "capture_unauthorized": (401, "Unknown capture session or wrong client secret"),
    "origin_not_allowed": (403, "This origin may not use the capture session"),
    "capture_session_expired": (410, "The capture session has expired"),
    "capture_session_used": (409, "The capture session is used up"),
    "security_code_not_allowed": (422, "This capture session takes no card security code"),
    "api_error": (503, "This node cannot serve that"),
    "token_space_exhausted": (409, "No free token left for this BIN and last four"),
    "token_expired": (410, "The token has expired"),
    "token_deleted": (410, "The token was deleted"),
    "payload_too_large": (413, "The request body is too large"),
    "unsupported_media_type": (415, "Send application/json"),
    "rate_limited": (429, "Rate limit exceeded"),
    "oracle_suspected": (429, "Too many different card numbers of one BIN and last four"),
    "quota_exceeded": (429, "Daily quota used up"),
    "throttled": (429, "Refused for now"),
    "integrity_error": (500, "Stored data failed its integrity check"),
    "internal_error": (500, "Internal error"),
    "upstream_unavailable": (502, "The upstream could not be reached or failed"),
    "upstream_timeout": (504, "The upstream did not answer in time"),
    "upstream_busy": (503, "The route has as many relays under way as it allows"),
    "capture_busy": (503, "The capture listener is busy; retry shortly"),
    "witness_refused": (502, "A witness refused to cosign the checkpoint"),
    "witness_cosignature_invalid": (502, "A witness answered without a valid cosignature"),
    "hsm_unavailable": (503, "The HSM is unavailable"),
    "storage_unavailable": (503, "The token store is unavailable"),
    "audit_unavailable": (503, "The audit log cannot be written; nothing was done"),
    "audit_read_unavailable": (503, "The audit log cannot be read"),
    "evidence_unavailable": (503, "The evidence cannot be read from the database"),
    "data_key_missing": (503, "The vault's data keys are not set up"),
    "not_ready": (503, "The vault is not ready"),
    "request_interrupted": (503, "The vault stopped before it could answer"),
    "worker_unready": (503, "Another worker of this node is not ready"),
    "crl_expired": (503, "The certificate revocation list has expired"),
    "crl_invalid": (503, "The certificate revocation list could not be loaded"),
    "hsm_error": (503, "The HSM refused the operation"),
    "hsm_key_not_found": (503, "A key the vault needs is not on the HSM"),
    "hsm_key_unregistered": (503, "A key on the HSM is not in Cofre's key registry"),
    "key_cryptoperiod_overdue": (503, "A key in use is past its cryptoperiod"),
    "hsm_mechanism_unsupported": (503, "The HSM lacks a mechanism the vault needs"),
    "hsm_key_not_extractable": (503, "The HSM refused to export a key"),
    # `cofre hsm selftest` only: it refuses a token that already serves a vault.
    "hsm_token_in_service": (409, "The HSM token already holds Cofre's keys"),
    "hsm_operation_failed": (503, "The HSM refused the operation"),
    "audit_error": (503, "The audit log failed"),
    "audit_verification_failed": (503, "The audit log does not verify"),
    "audit_archive_failed": (503, "The audit archive cannot be written or read"),
    "audit_retention_refused": (409, "The audit partition is not archived and verified yet"),
    "schema_mismatch": (503, "The database schema does not match this vault version"),
    "vault_error": (500, "Internal error"),
    "cofre_error": (500, "Internal error"),
    "configuration_error": (500, "The vault is misconfigured"),
    # The CLI only: a command's call to the vault's API found no vault answering.
    "vault_unreachable": (503, "The vault does not answer"),
    "pki_error": (500, "The vault's PKI is misconfigured"),
    "infra_error": (500, "Infrastructure error"),
    "aws_call_failed": (502, "An AWS call failed"),
    # `cofre audit archive` only: the bucket cannot keep the total retention.
    "archive_bucket_unfit": (503, "The audit archive bucket cannot keep the audit retention"),
    "aws_credentials_missing": (500, "No AWS credentials"),
    "peer_vpc_not_found": (500, "The peer VPC does not exist"),
}


# The one detail a body of these codes says, whatever the cause (session 41): an
# `hsm_unavailable` answer named the node's open-files limits (RLIMIT_NOFILE soft and
# hard), the PKCS#11 library's path or the token's label, and told one outage from
# another, to any caller with a certificate. The cause goes to the request's log line
# (`api.exception_handlers.cofre_error`) and the HSM's own ERROR line.
GENERIC_DETAILS: Final[dict[str, str]] = {
    "hsm_unavailable": ("the vault cannot use its HSM now; retry later (the node's log says why)"),
}


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` value for a wait of `seconds`: whole seconds, rounded up and
    at least one (a client that retries at once only meets the same refusal)."""
    return str(max(1, math.ceil(seconds)))


def problem(
    code: str,
    detail: str | None = None,
    *,
    request_id: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Return the problem+json response for `code` (unknown codes become 500)."""
    status, title = PROBLEMS.get(code, PROBLEMS["internal_error"])
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": title,
        "status": status,
        "code": code,
    }
    detail = GENERIC_DETAILS.get(code, detail)
    if detail:
        body["detail"] = mask_pan_like_or_withhold(detail)
    if request_id:
        body["request_id"] = request_id
    if extra:
        masked = mask_pan_values_or_withhold(extra)
        body.update(masked if isinstance(masked, dict) else {"extra": masked})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)
