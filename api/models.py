"""Request and response bodies. Requests that carry a PAN are separate models from
responses, which carry one only in `DetokenizeResponse` to a full-reveal identity.

IN PCI SCOPE. Unknown fields are rejected everywhere (``extra="forbid"``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    model_validator,
)

from cofre.redaction import name_holds_pan_like

# No control characters (C0 and DEL) in any string a caller sends: a NUL is refused by
# PostgreSQL text, and none belongs in a token, a key, a name or a card detail.
NO_CONTROL: Final = r"^[^\x00-\x1f\x7f]*$"
# Names a caller chooses that reach the audit log and error bodies as sent: plain
# identifier characters only.
NAME_CHARS: Final = r"^[A-Za-z0-9_.:-]+$"


def no_card(value: str) -> str:
    """`value`, unless `name_holds_pan_like` (a caller's name must never carry a card
    into the append-only audit log)."""
    if value in _CLEAN_NAMES:
        return value
    if name_holds_pan_like(value):
        raise ValueError("looks like a card number")
    if len(_CLEAN_NAMES) >= _CLEAN_NAMES_MAX:
        _CLEAN_NAMES.clear()
    _CLEAN_NAMES[value] = None
    return value


# The names `no_card` found clean: the policy's format names and the like, a handful
# sent over and over (once per item of a batch; the detector was ~6% of a worker's CPU
# under batch load, issue 21). Only clean names are kept, so no card is ever held here;
# emptied when full, so names a caller makes up cost only the detector's run. A name is
# at most 64 characters. (As `audit.log` keeps the texts it found clean.)
_CLEAN_NAMES: Final[dict[str, None]] = {}
_CLEAN_NAMES_MAX: Final = 1024


Digits = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_CONTROL)]
TokenStr = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_CONTROL)]
FormatName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=NAME_CHARS), AfterValidator(no_card)
]
# Its card check is the vault's (422 invalid_metadata, as for metadata).
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NAME_CHARS)]
Text = Annotated[str, StringConstraints(pattern=NO_CONTROL)]
# A batch body is up to 4 MiB, validated on the worker's event loop: pydantic answers
# one error per member it refuses, and a body of a few hundred thousand refused members
# (unknown ones, or metadata entries) held the loop for seconds (session 36 review).
# Past these, a body object is one error, so the work follows the items, not the members.
MAX_METADATA_ENTRIES: Final = 16
_UNKNOWN_NAMED: Final = 16


def _at_most_metadata_entries(value: object) -> object:
    if isinstance(value, dict) and len(value) > MAX_METADATA_ENTRIES:
        raise ValueError(f"at most {MAX_METADATA_ENTRIES} entries")
    return value


Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_CONTROL)],
        Annotated[str, StringConstraints(max_length=256, pattern=NO_CONTROL)],
    ],
    Field(max_length=MAX_METADATA_ENTRIES),
    BeforeValidator(_at_most_metadata_entries),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_members(cls, data: object) -> object:
        """Refuse as one error an object with more unknown members than a mistake makes
        (see `_UNKNOWN_NAMED`); a few are still named one by one (``extra="forbid"``)."""
        if isinstance(data, dict) and len(data) > len(cls.model_fields) + _UNKNOWN_NAMED:
            raise ValueError(f"more than {_UNKNOWN_NAMED} unknown members")
        return data


class TokenizeRequest(_Strict):
    pan: Digits = Field(description="12-19 ASCII digits, no spaces or dashes")
    format: FormatName = Field(description="A token format named in the policy")
    metadata: Metadata | None = None
    # Strict: "60" and true are not a lifetime (pydantic's lax mode took both).
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=316_224_000)] | None = None
    idempotency_key: IdempotencyKey | None = None
    # Card details: checked by the vault (stable codes invalid_expiry, card_expired,
    # invalid_cardholder_name, invalid_security_code, security_code_forbidden); the
    # lengths here only bound the work.
    expiry: Annotated[Text, StringConstraints(max_length=16)] | None = Field(
        default=None, description="MM/YY or YYYY-MM; answered as YYYY-MM"
    )
    cardholder_name: Annotated[Text, StringConstraints(max_length=256)] | None = Field(
        default=None, description="At most 64 characters after normalising; no digit runs"
    )
    security_code: Annotated[Text, StringConstraints(max_length=8)] | None = Field(
        default=None,
        description="3-4 digits, held once for the next relay call (an hour at most), "
        "never answered by any detokenize",
    )


class TokenUpdateRequest(_Strict):
    """What `PATCH /v1/tokens/{token}` changes: at least one part. Never a PAN nor a
    security code (unknown fields are refused, 422 ``invalid_request``)."""

    metadata: Metadata | None = Field(default=None, description="Replaces the token's metadata")
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=316_224_000)] | None = Field(
        default=None,
        description="The token expires this long after the update; null makes it "
        "permanent (as a token tokenized without a TTL)",
    )
    expiry: Annotated[Text, StringConstraints(max_length=16)] | None = Field(
        default=None, description="The card's new expiry: MM/YY or YYYY-MM"
    )
    cardholder_name: Annotated[Text, StringConstraints(max_length=256)] | None = Field(
        default=None, description="At most 64 characters after normalising; no digit runs"
    )

    @model_validator(mode="after")
    def _changes_something(self) -> TokenUpdateRequest:
        given = self.model_fields_set
        if not given:
            raise ValueError("name at least one of metadata, ttl_seconds, expiry, cardholder_name")
        # Only a TTL has a meaning for null (for ever); a null detail or metadata would
        # read as "remove it", which an update does not do.
        for name in ("metadata", "expiry", "cardholder_name"):
            if name in given and getattr(self, name) is None:
                raise ValueError(f"{name} may not be null")
        return self


class TokenResponse(_Strict):
    token: str
    token_id: str
    format: str
    created_at: datetime
    expires_at: datetime | None
    metadata: dict[str, str]
    existing: bool = Field(description="True when an existing token was returned")


class TokenizeBatchRequest(_Strict):
    items: list[TokenizeRequest] = Field(min_length=1, max_length=1000)


class TokenizeBatchResponse(_Strict):
    results: list[TokenResponse]


class DetokenizeRequest(_Strict):
    token: TokenStr


class DetokenizeResponse(_Strict):
    token: str
    pan: str = Field(description="The PAN, or its masked form when reveal is 'masked'")
    reveal: Literal["full", "masked"]
    expiry: str | None = Field(
        default=None,
        description="YYYY-MM, when the token has one; null to an identity outside PCI scope",
    )
    cardholder_name: str | None = Field(
        default=None, description="Only when reveal is 'full' and the token has one"
    )


class MaskedResponse(_Strict):
    token: str
    masked_pan: str
    expiry: str | None = Field(
        default=None,
        description="YYYY-MM, when the token has one; null to an identity outside PCI scope",
    )


class DetokenizeBatchRequest(_Strict):
    tokens: list[TokenStr] = Field(min_length=1, max_length=1000)


class DetokenizeBatchResponse(_Strict):
    results: list[DetokenizeResponse]


class LookupRequest(_Strict):
    pan: Digits
    format: FormatName | None = None


class LookupResponse(_Strict):
    tokens: list[TokenResponse] = Field(
        description="The card's oldest live tokens in the caller's domain, at most 100"
    )
    truncated: bool = Field(
        default=False,
        description="True when the card has more live tokens than this answer holds",
    )


class DeleteResponse(_Strict):
    token: str
    deleted: bool = Field(description="False when the token was already deleted")


class SignedHeadResponse(_Strict):
    tree_size: int
    root_hash: str
    timestamp_ms: int
    key_id: str
    checkpoint: str
    signature: str


class InclusionProofResponse(_Strict):
    index: int
    tree_size: int
    leaf_hash: str
    entry: str
    proof: list[str]


class ConsistencyProofResponse(_Strict):
    size1: int
    size2: int
    proof: list[str]


class HealthResponse(_Strict):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    request_id: str | None = None


class RotationRequest(_Strict):
    kind: Literal["kek", "data", "fingerprint", "audit", "register"]
    # A register ceremony's key (session 39, `vault._signed_registration`): the token
    # label, its CKA_ID and its check value as `cofre hsm status --json` shows them.
    label: Annotated[str, StringConstraints(max_length=64)] | None = None
    cka_id: Annotated[str, StringConstraints(max_length=256)] | None = None
    check: Annotated[str, StringConstraints(max_length=256)] | None = None

    @model_validator(mode="after")
    def _names_a_key_only_to_register(self) -> RotationRequest:
        named = [self.label, self.cka_id, self.check]
        if self.kind == "register" and None in named:
            raise ValueError("a register ceremony names label, cka_id and check")
        if self.kind != "register" and named != [None, None, None]:
            raise ValueError("only a register ceremony names a key")
        return self


# The wire form of `vault.ceremony.Ceremony`: the API's model is the documented contract,
# the vault's a plain value, and tests/api/test_models.py keeps their fields alike. (A
# comment, not a docstring: a docstring would change the OpenAPI document.)
class CeremonyResponse(_Strict):
    id: str
    kind: str
    state: str
    proposer: str
    approvers: list[str]
    approvals_needed: int
    approvals_counting: list[str]
    created_at: datetime
    expires_at: datetime
    old_version: int | None
    new_version: int | None
    progress_done: int
    progress_total: int
    destroy_after: datetime | None
    completed_at: datetime | None
    # Why an approval would be refused (409 ceremony_invalid) though the ceremony shows
    # pending: the audit log holds its start or its cancel. None when approvable.
    approval_refused: str | None = None
    # A running data or fingerprint rotation's tokens that fail authentication: it does
    # not complete while one remains; `stuck_action` says what to do (rot38).
    stuck_tokens: list[str] = []
    stuck_action: str | None = None
    # A register ceremony's key (label, cka_id, check) as its signed proposal names it:
    # what an approval of it registers. None for the other kinds.
    registers: dict[str, str] | None = None


class HeadRef(_Strict):
    tree_size: Annotated[int, Field(ge=1)]
    root_hash: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class EvidenceRequest(_Strict):
    # With a time zone (a naive time is ambiguous, and compared with the vault's aware
    # clock it was a 500): "2026-11-01T00:00:00" is 422 invalid_request.
    period_from: AwareDatetime = Field(alias="from")
    period_to: AwareDatetime = Field(alias="to")
    previous_head: HeadRef | None = Field(
        default=None, description="the covering_head of the previous bundle, to chain to it"
    )
    previous_end_index: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="the previous bundle's entries.end_index: this bundle must start there",
    )
