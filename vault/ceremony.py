"""The models of a key ceremony: its kind, its states and the view an officer sees.

IN PCI SCOPE (key management). Plain values: no keys, no database; `vault.rotation`
runs ceremonies and returns these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class RotationKind(StrEnum):
    """What a rotation rotates (`vault.rotation`).

    Kinds:

    - ``data``: a new PAN data key (and FF1 key) becomes active at once; a background job
      re-encrypts stored PANs in batches. Each batch moves rows off the old version and
      counts them in the same transaction, so a crash mid-batch rolls both back and a resumed
      job never re-encrypts a row twice. When no row uses the old version it is retired and
      its wrapped bytes are erased.
    - ``kek``: a new KEK is generated in the HSM and every data key is re-wrapped under it
      inside the HSM; the old KEK is destroyed on the token after the grace period.
    - ``fingerprint``: a new HMAC key; lookups and convergence use both keys while a job
      recomputes stored fingerprints; then the old key is destroyed on the token.
    - ``audit``: a new audit signing key and a handover checkpoint signed by both keys
      (`vault.audit_rotation`).
    - ``register``: no new key: the officers' signed record that a Cofre label is the
      key the token holds under it, which the key registry takes over every unsigned
      record of the label (`vault._signed_registration`, session 39).
    """

    DATA = "data"
    KEK = "kek"
    FINGERPRINT = "fingerprint"
    AUDIT = "audit"  # the audit signing key: `vault.audit_rotation`
    REGISTER = "register"  # a signed key registration: `vault._signed_registration`


class CeremonyState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DESTROY_PENDING = "destroy_pending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Ceremony:
    id: str
    kind: str
    state: str
    proposer: str
    approvers: list[str]
    approvals_needed: int
    # Of `approvers`, those whose approval counts as the policy stands now (pending
    # ceremonies; for the others, who approved it: it already ran or never will).
    approvals_counting: list[str]
    created_at: datetime
    expires_at: datetime
    old_version: int | None
    new_version: int | None
    progress_done: int
    progress_total: int
    destroy_after: datetime | None
    completed_at: datetime | None
    # Why an approval of this pending ceremony would be refused although its row says
    # pending (the audit log shows it already started or cancelled: a row written back),
    # None otherwise.
    approval_refused: str | None = None
    # The tokens a running data or fingerprint rotation could not read (they fail
    # authentication): it does not complete while one remains under the old key, and
    # `stuck_action` says what to do (rot38, `vault._rotation_unreadable`).
    stuck_tokens: list[str] = field(default_factory=list)
    stuck_action: str | None = None
    # A ``register`` ceremony's key, as its signed proposal names it (label, cka_id,
    # check): what each approval's signature commits to, shown before it is given
    # (atk49o: the approver saw "key registration" only). None for the other kinds.
    registers: dict[str, str] | None = None

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        return out


@dataclass(frozen=True)
class OfficerCertificate:
    """The client certificate (PEM) an officer's ceremony action came with, stored with
    it, and what says whether the CRL in force now revokes a certificate (the API's
    `api.crl.RevokedCertificates.revokes`; it raises `ValueError` for one it cannot
    read)."""

    pem: str | None
    revoked: Callable[[str], bool]
