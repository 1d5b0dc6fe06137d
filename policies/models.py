"""The policy document: identities, what each may do, and the formats they may use.

IN PCI SCOPE. Parsed with pydantic; unknown keys are rejected so that a typo cannot
silently grant (or fail to restrict) anything. An identity is the SAN URI of a client
certificate, for example ``spiffe://cofre/payments``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.formats import BUILTIN_FORMATS, FormatSpec


class Action(StrEnum):
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"
    DETOKENIZE_MASKED = "detokenize_masked"
    LOOKUP = "lookup"
    METADATA = "metadata"
    DELETE = "delete"
    RELAY = "relay"
    # Security officers
    KEY_ADMIN = "key_admin"
    # Security officers and auditors
    AUDIT_READ = "audit_read"
    EVIDENCE_EXPORT = "evidence_export"


class Role(StrEnum):
    SERVICE = "service"
    SECURITY_OFFICER = "security_officer"
    AUDITOR = "auditor"


class Reveal(StrEnum):
    FULL = "full"
    MASKED = "masked"
    NONE = "none"


_OFFICER_ACTIONS = frozenset({Action.KEY_ADMIN, Action.AUDIT_READ, Action.EVIDENCE_EXPORT})
_AUDITOR_ACTIONS = frozenset({Action.AUDIT_READ, Action.EVIDENCE_EXPORT})
_CARD_DATA_ACTIONS = frozenset(
    {Action.TOKENIZE, Action.DETOKENIZE, Action.LOOKUP, Action.RELAY, Action.DELETE}
)


class RateLimit(BaseModel):
    """A token bucket: `per_second` sustained, bursts of up to `burst` requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_second: Annotated[float, Field(gt=0)]
    burst: Annotated[int, Field(ge=1)]


class IdentityPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role = Role.SERVICE
    operations: frozenset[Action] = frozenset()
    formats: frozenset[str] = frozenset()
    reveal: Reveal = Reveal.NONE
    rate_limit: RateLimit | None = None
    description: str = ""

    @model_validator(mode="after")
    def _separation_of_duties(self) -> Self:
        if self.role is Role.SECURITY_OFFICER:
            if self.reveal is Reveal.FULL:
                raise ValueError(
                    "security officers never get full reveal (split duties, PCI DSS 3.6.1.2, "
                    "7.2): give full reveal to a service identity instead"
                )
            if extra := self.operations & _CARD_DATA_ACTIONS:
                raise ValueError(
                    f"security officers manage keys and read the audit log; they may not "
                    f"call {', '.join(sorted(extra))}"
                )
        if self.role is Role.AUDITOR:
            if extra := self.operations - _AUDITOR_ACTIONS:
                raise ValueError(f"auditors may not call {', '.join(sorted(extra))}")
            if self.reveal is not Reveal.NONE:
                raise ValueError("auditors see no card data: reveal must be 'none'")
        if self.role is Role.SERVICE and (extra := self.operations & _OFFICER_ACTIONS):
            raise ValueError(
                f"{', '.join(sorted(extra))} belong to security officers or auditors; "
                "set role accordingly"
            )
        if Action.DETOKENIZE in self.operations and self.reveal is Reveal.NONE:
            raise ValueError("detokenize needs reveal 'full' or 'masked'")
        return self


class RelayRoute(BaseModel):
    """An allow-listed outbound route: who may relay, to which upstream, and where in
    the JSON body the tokens to detokenize are (RFC 6901 JSON pointers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstream: Annotated[str, Field(pattern=r"^https://[^\s/?#]+(/[^\s?#]*)?$")]
    method: Literal["POST", "PUT"] = "POST"
    identities: frozenset[str]
    detokenize: tuple[Annotated[str, Field(pattern=r"^(/[^/]*)+$")], ...]
    response_tokenize: dict[Annotated[str, Field(pattern=r"^(/[^/]*)+$")], str] = Field(
        default_factory=dict
    )
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 10.0
    retries: Annotated[int, Field(ge=0, le=3)] = 0
    idempotent: bool = False
    ca_bundle: str | None = None

    @model_validator(mode="after")
    def _retry_only_idempotent(self) -> Self:
        if self.retries and not (self.idempotent or self.method == "PUT"):
            raise ValueError(
                "retries are allowed only for idempotent upstream calls "
                "(method PUT or idempotent = true)"
            )
        return self


class Policy(BaseModel):
    """The whole policy. The empty policy (no identities) denies everything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[int, Field(ge=1)] = 1
    formats: dict[str, FormatSpec] = Field(default_factory=dict)
    identities: dict[str, IdentityPolicy] = Field(default_factory=dict)
    key_approvals_required: Annotated[int, Field(ge=2)] = 2
    relay_routes: dict[Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")], RelayRoute] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        if clash := set(self.formats) & set(BUILTIN_FORMATS):
            raise ValueError(f"format names {sorted(clash)} are built in; choose other names")
        known = set(BUILTIN_FORMATS) | set(self.formats)
        for identity, rules in self.identities.items():
            if not identity.startswith(("spiffe://", "urn:", "https://")):
                raise ValueError(
                    f"identity {identity!r} must be a certificate SAN URI "
                    "(spiffe://..., urn:..., https://...)"
                )
            if unknown := rules.formats - known:
                raise ValueError(f"identity {identity!r} names unknown formats {sorted(unknown)}")
            if Action.TOKENIZE in rules.operations and not rules.formats:
                raise ValueError(f"identity {identity!r} may tokenize but names no format")
        for name, route in self.relay_routes.items():
            for identity in route.identities:
                relayer = self.identities.get(identity)
                if relayer is None or Action.RELAY not in relayer.operations:
                    raise ValueError(
                        f"relay route {name!r} names {identity!r}, which may not relay"
                    )
            if unknown_formats := set(route.response_tokenize.values()) - known:
                raise ValueError(
                    f"relay route {name!r} names unknown formats {sorted(unknown_formats)}"
                )
        return self

    def format(self, name: str) -> FormatSpec | None:
        """Return the format called `name` (built in or defined here), or None."""
        return self.formats.get(name) or BUILTIN_FORMATS.get(name)

    def officers(self) -> frozenset[str]:
        return frozenset(
            identity
            for identity, rules in self.identities.items()
            if rules.role is Role.SECURITY_OFFICER
        )
