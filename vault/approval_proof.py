"""Proof that an officer's token signed a key ceremony proposal or approval (review appr).

IN PCI SCOPE (key management, dual control: PCI DSS 4.0.1 req. 3.6.1.2, 3.7.6). Who
proposed and who approved a ceremony is rows in ``key_ceremonies`` and
``key_approvals``; alone they are only as trustworthy as the database, and an operator
holding the HSM PIN and write access could add a second officer's approval and run a
rotation with one real officer. So each proposal and approval stores the request the
vault verified (`vault.officer_mfa`): method, ``Host`` (``@authority``), path, query,
``Content-Digest``, body and the ``Signature-Input`` / ``Signature`` headers as sent, the
RFC 9421 signature by the officer's token key (`vault.httpsig`). Whenever a ceremony's
approvals are counted (each approval, and so the one that starts it), every counted
action's stored request must verify again under the officer's *currently registered*
MFA key and name this ceremony:

- an approval's signed path is ``/v1/admin/keys/rotations/<this ceremony id>/approve``;
- a proposal's is ``POST /v1/admin/keys/rotations`` with a body proposing this kind,
  and the ceremony's id is derived from the proposal's signature (`ceremony_id`), so a
  proposal proof copied to another ceremony's row names another id.

When the vault knows its own names (`vault.officer_mfa.server_names`), the signed
``@authority`` must still be one of them: a ceremony copied whole from a staging vault
where the same officers' keys are registered does not count here.

The nonce and the time window are not checked again: they were at submission, and an
approval may be a day old. But a proposal counts only within its life from the time its
officer's token signed it (the signed ``created``: `proposal_problem`'s `signed_within`),
not from the row's ``expires_at``, which a database writer can move: otherwise a past
ceremony written back as pending, its genuine proofs and all, would make its proposer
one of today's two officers. A database writer cannot forge a proof (it needs the
officer's token) nor move one to another ceremony; what it can still do is drop or
corrupt rows, which only stops a ceremony (docs/threat-model.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Final

from vault.errors import OfficerMfaError
from vault.httpsig import (
    HttpRequest,
    authority_host,
    normalize_authority,
    parse_signature,
    verify_request,
)
from vault.officer_mfa import names_host

PROPOSALS: Final = "/v1/admin/keys/rotations"  # the API's route (api.routes.keys)
_HEADERS: Final = ("host", "content-digest", "signature-input", "signature")


def approval_path(ceremony_id: str) -> str:
    """The path an approval of `ceremony_id` is signed over (api.routes.keys)."""
    return f"{PROPOSALS}/{ceremony_id}/approve"


@dataclass(frozen=True, slots=True)
class SignedAction:
    """A ceremony action's request as the vault verified it: what its signature covers,
    the signature headers as sent and the body (which ``Content-Digest`` binds)."""

    method: str
    authority: str  # the Host header as sent
    path: str
    query: str
    content_digest: str
    signature_input: str
    signature: str
    body: bytes

    @classmethod
    def of(cls, request: HttpRequest) -> SignedAction:
        """The proof of `request`, whose signature the vault just verified."""
        header = request.headers.get
        return cls(
            method=request.method,
            authority=header("host", ""),
            path=request.path,
            query=request.query,
            content_digest=header("content-digest", ""),
            signature_input=header("signature-input", ""),
            signature=header("signature", ""),
            body=request.body,
        )

    def to_json(self) -> str:
        """The stored form (a text column)."""
        fields = asdict(self)
        fields["body"] = base64.b64encode(self.body).decode()
        return json.dumps(fields, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SignedAction:
        """Read a stored proof. Raises `ValueError` when it is not one."""
        try:
            fields = json.loads(text)
            if not isinstance(fields, dict) or set(fields) != set(cls.__slots__):
                raise ValueError("not a stored ceremony proof")
            body = base64.b64decode(fields.pop("body"), validate=True)
            if not all(isinstance(value, str) for value in fields.values()):
                raise ValueError("not a stored ceremony proof")
            return cls(body=body, **fields)
        except (TypeError, binascii.Error, json.JSONDecodeError) as error:
            raise ValueError("not a stored ceremony proof") from error

    def request(self) -> HttpRequest:
        values = (self.authority, self.content_digest, self.signature_input, self.signature)
        return HttpRequest(
            method=self.method,
            path=self.path,
            query=self.query,
            headers=dict(zip(_HEADERS, values, strict=True)),
            body=self.body,
        )

    def ceremony_id(self) -> str:
        """The id of the ceremony this proposal opens: derived from its signature (one
        per request: its nonce is used once), so the proof names its ceremony."""
        digest = hashlib.sha256(b"cofre key ceremony\x00" + self.signature.encode()).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))


def _verified(
    stored: str | None, public_pem: bytes, authorities: Collection[str] | None
) -> SignedAction | str:
    """The stored proof when its signature verifies under `public_pem` and was signed for
    one of `authorities` (None: not checked), else why not."""
    if stored is None:
        return "it carries no signature by the officer's token (not made through the API)"
    try:
        action = SignedAction.from_json(stored)
        request = action.request()
        verify_request(parse_signature(request.headers), request, public_pem)
    except ValueError:
        return "its stored signature is not readable"
    except OfficerMfaError as error:
        return f"its stored signature does not verify under the registered MFA key ({error})"
    if authorities is not None:
        authority = normalize_authority(action.authority)
        if not names_host(authority_host(authority), authorities):
            return f"it was signed for {authority}, not this vault"
    return action


def proposal_problem(
    stored: str | None,
    public_pem: bytes,
    ceremony_id: str,
    kind: str,
    authorities: Collection[str] | None = None,
    *,
    signed_within: tuple[int, int] | None = None,
) -> str | None:
    """Why the stored proposal proof does not prove that the officer whose key is
    `public_pem` proposed this ceremony (`ceremony_id`, a `kind` rotation) to this vault
    (one of `authorities`, when given), signed within `signed_within` (first and last
    Unix second, when given); None when it does."""
    action = _verified(stored, public_pem, authorities)
    if isinstance(action, str):
        return action
    if (action.method, action.path, action.query) != ("POST", PROPOSALS, ""):
        return f"it signed {action.method} {action.path}, not a proposal"
    if action.ceremony_id() != ceremony_id:
        return "it signed the proposal of another ceremony"
    try:
        proposed = json.loads(action.body).get("kind")
    except (ValueError, AttributeError):
        proposed = None
    if proposed != kind:
        return f"it proposed a {proposed} rotation, not a {kind} one"
    if signed_within is not None:
        return outside_life(action, signed_within)
    return None


def outside_life(action: SignedAction, signed_within: tuple[int, int]) -> str | None:
    """Why proposal `action` no longer counts by the time its officer's token signed it
    (its ``created``, which no database writer can move; review 26: a past ceremony
    written back as pending, or one signed for a time to come), or None."""
    created = parse_signature(action.request().headers).created
    at = datetime.fromtimestamp(created, UTC).isoformat(timespec="seconds")
    first, last = signed_within
    if created < first:
        return f"its proposal was signed at {at}, longer ago than a proposal lives"
    if created > last:
        return f"its proposal was signed for {at}, a time still to come"
    return None


def proposal_expired(stored: str | None, signed_within: tuple[int, int]) -> bool:
    """Whether the stored proposal proof `stored` is readable and was signed outside
    `signed_within`: the ceremony's life is over whatever its row's ``expires_at`` says
    (the officers' view shows it expired, as approving it is refused)."""
    if stored is None:
        return False
    try:
        action = SignedAction.from_json(stored)
        return outside_life(action, signed_within) is not None
    except (ValueError, OfficerMfaError):
        return False


def approval_problem(
    stored: str | None,
    public_pem: bytes,
    ceremony_id: str,
    authorities: Collection[str] | None = None,
) -> str | None:
    """Why the stored approval proof does not prove that the officer whose key is
    `public_pem` approved ceremony `ceremony_id` on this vault (one of `authorities`, when
    given); None when it does."""
    action = _verified(stored, public_pem, authorities)
    if isinstance(action, str):
        return action
    if action.method != "POST" or action.path != approval_path(ceremony_id) or action.query:
        return f"it signed {action.method} {action.path}, not this ceremony's approval"
    return None
