"""The policy document: identities, what each may do, and the formats they may use.

IN PCI SCOPE. Parsed with pydantic; unknown keys are rejected so that a typo cannot
silently grant (or fail to restrict) anything. An identity is the SAN URI of a client
certificate, for example ``spiffe://cofre/payments``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal, Self

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cofre.origins import normalize_origin
from cofre.redaction import mask_pan_like
from policies.formats import BUILTIN_FORMATS, FormatSpec


class Action(StrEnum):
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"
    DETOKENIZE_MASKED = "detokenize_masked"
    LOOKUP = "lookup"
    METADATA = "metadata"
    DELETE = "delete"
    # Change a token's metadata, life or card details (a reissued card's new expiry),
    # never its card number: a card-on-file backend holds only the token. Holds no PAN,
    # so it is allowed outside PCI scope.
    UPDATE = "update"
    RELAY = "relay"
    # Open a short-lived capture session for a shop's page (hosted card fields): the
    # caller never holds the card, the browser sends it to the vault's capture
    # listener. Allowed outside PCI scope.
    CAPTURE = "capture"
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
_PAN_HOLDING_ACTIONS = frozenset({Action.TOKENIZE, Action.LOOKUP})


class Scope(StrEnum):
    """Whether an identity is inside the cardholder data environment (PCI scope)."""

    IN = "in"
    OUT = "out"  # the adapter tier: may never hold a clear PAN


class RateLimit(BaseModel):
    """A token bucket: `per_second` sustained, bursts of up to `burst` units. A call
    costs one unit per item (a batch of N costs N). Enforced across every node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # At least one a day, at most a million a second: outside, the bucket's arithmetic
    # leaves the floats (per_second = 1e-310 made the refusal's Retry-After infinite, a
    # 500 in its error handler; near 10^9 an interval is a few ulps of the epoch
    # seconds it is added to). A daily cap on reveals is a `Quota`.
    per_second: Annotated[float, Field(ge=1 / 86_400, le=1e6, allow_inf_nan=False)]
    burst: Annotated[int, Field(ge=1, le=1_000_000_000)]


class OracleGuard(BaseModel):
    """At most `max_pans_per_bucket` distinct PANs of one BIN and last four within
    `window_seconds`, per identity, for every call whose answer depends on what the
    vault holds (convergent tokenize, lookup, idempotent retries) and for every fresh
    token in a small token space. Guessing a PAN from its token means trying many PANs
    of one bucket; real traffic rarely has more than a few. The vault counts the window
    under way with the one before it (`vault.limits.Limits.watch`), so the limit holds
    in every span of `window_seconds`, across a window's end too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pans_per_bucket: Annotated[int, Field(ge=1, le=100_000)] = 10
    window_seconds: Annotated[int, Field(ge=60, le=31 * 86400)] = 86400


class CaptureSessionLimit(BaseModel):
    """What one identity granted ``capture`` may open: `per_minute` sessions sustained
    with bursts of `burst`, and at most `max_live` open at once (not expired, captures
    left). Every such identity has one, whatever its `rate_limit` (session 38: without
    a `rate_limit`, a stolen certificate opened sessions without bound, each a row and
    an audit entry); the defaults fit a shop of up to ten checkouts a second, and a
    policy may raise them. Enforced across every node (`vault.operations.capture`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_minute: Annotated[int, Field(ge=1, le=60_000_000)] = 600
    burst: Annotated[int, Field(ge=1, le=1_000_000)] = 600
    max_live: Annotated[int, Field(ge=1, le=10_000_000)] = 6_000

    def rate(self) -> RateLimit:
        """The sessions' bucket as a `RateLimit`."""
        return RateLimit(per_second=self.per_minute / 60, burst=self.burst)


class Quota(BaseModel):
    """A daily cap (UTC days) on what an identity may reveal, across every node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detokenize_per_day: Annotated[int, Field(ge=1)]


class IdentityPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role = Role.SERVICE
    operations: frozenset[Action] = frozenset()
    formats: frozenset[str] = frozenset()
    reveal: Reveal = Reveal.NONE
    rate_limit: RateLimit | None = None
    description: str = ""
    # The token domain: convergence, FF1 tweaks, lookup and idempotency keys are per
    # domain, and token-level writes stay in it. Default: the identity itself.
    domain: Annotated[str | None, Field(min_length=1, max_length=255)] = None
    # Other domains whose tokens this identity may read (detokenize at its reveal
    # level, masked reveal, metadata, relay). Its own domain is always readable.
    read_domains: frozenset[Annotated[str, Field(min_length=1, max_length=255)]] = frozenset()
    scope: Scope = Scope.IN
    # The shop origins it may open capture sessions for (compared as browsers spell
    # them); an identity with ``capture`` must name at least one (`Policy` refuses it
    # otherwise): a stolen certificate could otherwise host the vault's card fields on
    # a page of its own choosing (the capture review).
    capture_origins: (
        frozenset[Annotated[str, Field(pattern=r"^https?://[^/\s?#]+$", max_length=300)]] | None
    ) = None
    oracle_guard: OracleGuard = Field(default_factory=OracleGuard)
    capture_sessions: CaptureSessionLimit = Field(default_factory=CaptureSessionLimit)
    quota: Quota | None = None
    # The officer's second factor (PCI DSS 8.4.1, 8.4.2): the PEM public key of the EC
    # P-256 key in their own PKCS#11 token. Key ceremony actions and evidence exports
    # must carry a signature by it (`vault.officer_mfa`). Bound to the identity here, in
    # the document that grants the actions, so every change is a `policy.reload` audit
    # entry with the whole text and travels in evidence bundles.
    mfa_public_key: Annotated[str | None, Field(min_length=1, max_length=1000)] = None

    @model_validator(mode="after")
    def _mfa_key_is_p256(self) -> Self:
        if self.mfa_public_key is not None:
            try:
                key = load_pem_public_key(self.mfa_public_key.encode())
            except ValueError:
                raise ValueError("mfa_public_key is not a PEM public key") from None
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
                raise ValueError("mfa_public_key must be an EC P-256 public key")
        return self

    @model_validator(mode="after")
    def _reveals_need_a_reveal_level(self) -> Self:
        # A masked reveal shows a card's BIN and last four (more than a `pan_last4`
        # token does): it is a reveal, granted by `reveal` like a full one, never by the
        # operation alone (the reveal review: reveal = "none" answered masked PANs).
        for reveals in (Action.DETOKENIZE, Action.DETOKENIZE_MASKED):
            if reveals in self.operations and self.reveal is Reveal.NONE:
                raise ValueError(f"{reveals.value} needs reveal 'full' or 'masked'")
        return self

    @model_validator(mode="after")
    def _separation_of_duties(self) -> Self:
        if self.role is Role.SECURITY_OFFICER:
            if self.reveal is Reveal.FULL:
                raise ValueError(
                    "security officers never get full reveal (split duties, PCI DSS 3.6.1.2, "
                    "7.2): give full reveal to a service identity instead"
                )
            # Everything but the officer's own actions: a masked reveal, metadata or a
            # capture session is card data too (split duties: the people who hold the
            # keys see no cards, PCI DSS 3.6.1.2, 7.2; the reveal review).
            if extra := self.operations - _OFFICER_ACTIONS:
                raise ValueError(
                    f"security officers manage keys and read the audit log; they may not "
                    f"call {', '.join(sorted(extra))}"
                )
            if self.reveal is not Reveal.NONE:
                raise ValueError("security officers see no card data: reveal must be 'none'")
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
        if self.scope is Scope.OUT:
            # Outside PCI scope nothing may hold a clear PAN: tokenizing means sending
            # one, lookup means sending one, a full reveal means receiving one.
            if extra := self.operations & _PAN_HOLDING_ACTIONS:
                raise ValueError(
                    f"an identity with scope 'out' may not call {', '.join(sorted(extra))}: "
                    "each means holding a clear PAN (use the relay)"
                )
            if self.reveal is Reveal.FULL:
                raise ValueError(
                    "an identity with scope 'out' never gets full reveal: the relay "
                    "sends the PAN to the acquirer from inside the vault"
                )
        return self

    def domain_of(self, identity: str) -> str:
        """This identity's token domain (its own URI unless the policy names one)."""
        return self.domain or identity


# The longest identity the vault records whole (session 36): the database keeps an
# identity in VARCHAR(255) columns (a token's owner and, by default, domain; the rate,
# quota and oracle guard counters; a ceremony's proposer and approvers; the officers'
# nonces: `vault.storage.schema`), and the audit log cuts every string at 512
# characters, the actor included (`audit.log`).
MAX_IDENTITY: Final = 255


def _recorded_as_written(identities: list[str]) -> None:
    """Refuse an identity the audit log would record otherwise than written: the log
    masks card-like digits (12 or more in a row, `cofre.redaction.mask_pan_like`) in all
    it records, the actor included, and spells a lone surrogate as its escape (review
    35). Such an identity's entries would not identify it (PCI DSS 10.2.2), two officers
    masked alike would be one to the verifier's dual control checks, and the policy's own
    `policy.load` entry, its text masked, would not match its SHA-256 (check 6). Named by
    its position, and as the log would show it: never the run in clear. An identity
    longer than `MAX_IDENTITY` is refused too (session 36): PostgreSQL refused its first
    counted call, and past 512 characters the log recorded it cut, so two identities
    alike in their first 512 characters were one actor. Named by its position and
    length, never echoed (it may be long and hold anything)."""
    for position, identity in enumerate(identities, start=1):
        if len(identity) > MAX_IDENTITY:
            raise ValueError(
                f"identity {position} of {len(identities)} in [identities] is "
                f"{len(identity)} characters; the vault records an identity whole in at "
                f"most {MAX_IDENTITY} (its database columns; the audit log cuts any string "
                "at 512): issue its certificate with a shorter SAN URI and name that"
            )
        try:
            identity.encode("utf-8")
            masked = mask_pan_like(identity)
        except UnicodeEncodeError:
            raise ValueError(
                f"identity {position} of {len(identities)} in [identities] holds a "
                "character UTF-8 cannot carry: the audit log would record it escaped"
            ) from None
        if masked != identity:
            raise ValueError(
                f"identity {position} of {len(identities)} in [identities] (as the audit "
                f"log would record it: {masked!r}) holds 12 digits or more in a row, which "
                "the audit log masks in every entry it records, the actor included: its "
                "entries would not name it. Give it a name without such a run (an employee "
                "number split, or fewer digits) and issue its certificate for that name"
            )


def _check_identity(identity: str, rules: IdentityPolicy, known: set[str]) -> None:
    """Refuse what one identity's rules get wrong against the policy (`known` formats)."""
    if not identity.startswith(("spiffe://", "urn:", "https://")):
        raise ValueError(
            f"identity {identity!r} must be a certificate SAN URI "
            "(spiffe://..., urn:..., https://...)"
        )
    if any("\x00" in d for d in {rules.domain_of(identity), *rules.read_domains}):
        # An FF1 re-issue's tweak is a domain, a NUL and a number (review 43).
        raise ValueError(f"identity {identity!r} names a token domain with a NUL")
    if not all("!" <= c <= "~" for c in identity):
        # A client certificate's SAN URI is an IA5String (RFC 5280 4.2.1.6: non-ASCII
        # host names in punycode, other characters percent-encoded), so no certificate
        # names such an identity; it would only ever stand beside one it looks like
        # (review qsa37: `officer-b\u043eb` with the operator's key counted as the real
        # Bob's approval in a reading that did not escape it). Escaped in the message.
        raise ValueError(
            f"identity {identity!a} holds a space, a control or a non-ASCII "
            "character, which no certificate's SAN URI can (RFC 5280 4.2.1.6): write "
            "host names in punycode and other characters percent-encoded"
        )
    if unknown := rules.formats - known:
        raise ValueError(f"identity {identity!r} names unknown formats {sorted(unknown)}")
    if Action.TOKENIZE in rules.operations and not rules.formats:
        raise ValueError(f"identity {identity!r} may tokenize but names no format")
    if Action.CAPTURE in rules.operations and not rules.formats:
        raise ValueError(f"identity {identity!r} may capture but names no format")
    if Action.CAPTURE in rules.operations and not rules.capture_origins:
        # Fail closed: no list was "any origin", and a stolen certificate of the
        # shop's backend then hosted the genuine card fields on a phishing page.
        raise ValueError(
            f"identity {identity!r} may capture but names no capture_origins: "
            "list the shop origins (https://host[:port]) it opens sessions for"
        )
    for origin in sorted(rules.capture_origins or ()):
        # As the vault compares them (`vault.operations.capture`): an entry it would
        # drop names no session, and the operator learns it here, not from a checkout
        # that fails. http is let through for localhost only (the dev setting).
        try:
            normalize_origin(origin, allow_http_localhost=True, frame_ancestor=True)
        except ValueError as exc:
            raise ValueError(
                f"identity {identity!r} names capture_origins entry {origin!r}, which no "
                f"browser sends: {exc}"
            ) from None


JsonPointer = Annotated[str, Field(pattern=r"^(/[^/]*)+$", max_length=256)]


class CardPointers(BaseModel):
    """Where a relay route's upstream wants the card (RFC 6901 JSON pointers). The
    caller puts only the card token at `number`; the vault puts the PAN there and the
    card's details at the others (their parent object must be in the body, the member
    must not: a caller that sends a value there is refused).

    `security_code` is the code held for the token, consumed by this call: a second
    call with the same token carries none (the member is left out)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    number: JsonPointer
    expiry: JsonPointer | None = None
    expiry_format: Literal["MM/YY", "MM/YYYY", "MMYY", "YYYY-MM"] = "MM/YY"
    expiry_month: JsonPointer | None = None  # "MM"
    expiry_year: JsonPointer | None = None  # "YY" or "YYYY" (`expiry_year_digits`)
    expiry_year_digits: Literal[2, 4] = 2
    security_code: JsonPointer | None = None
    cardholder_name: JsonPointer | None = None

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        pointers = [
            p
            for p in (
                self.number,
                self.expiry,
                self.expiry_month,
                self.expiry_year,
                self.security_code,
                self.cardholder_name,
            )
            if p is not None
        ]
        if len(set(pointers)) != len(pointers):
            raise ValueError("each card pointer must name a different place")
        return self

    def details(self) -> dict[str, str]:
        """The detail pointers by what goes there (not the number)."""
        named = {
            "expiry": self.expiry,
            "expiry_month": self.expiry_month,
            "expiry_year": self.expiry_year,
            "security_code": self.security_code,
            "cardholder_name": self.cardholder_name,
        }
        return {what: pointer for what, pointer in named.items() if pointer is not None}


class RelayRoute(BaseModel):
    """An allow-listed outbound route: who may relay, to which upstream, and where in
    the JSON body the tokens to detokenize are (RFC 6901 JSON pointers); `card` names
    where a card token's number and details go (`CardPointers`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstream: Annotated[str, Field(pattern=r"^https://[^\s/?#]+(/[^\s?#]*)?$")]
    method: Literal["POST", "PUT"] = "POST"
    identities: frozenset[str]
    detokenize: tuple[JsonPointer, ...] = ()
    card: CardPointers | None = None
    response_tokenize: dict[Annotated[str, Field(pattern=r"^(/[^/]*)+$")], str] = Field(
        default_factory=dict
    )
    # The whole relay's bound: every retry and the answer's last byte within it.
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 10.0
    retries: Annotated[int, Field(ge=0, le=3)] = 0
    idempotent: bool = False
    ca_bundle: str | None = None
    # Relays to this route under way at once per vault process; past it, 503
    # upstream_busy at once (a slow upstream holds its own places, not every route's).
    max_in_flight: Annotated[int, Field(ge=1, le=64)] = 16
    # Of those, what one identity may hold at once (`share_of`): by default, on a route
    # of several identities, all but a quarter, so that one stolen certificate with a
    # slow upstream call leaves the others places (review 40).
    max_in_flight_per_identity: Annotated[int, Field(ge=1, le=64)] | None = None

    @model_validator(mode="after")
    def _upstream_without_user(self) -> Self:
        # Review 36: a user or password in the URL went upstream as Basic credentials
        # and into every relay's audit entry (its authority); and
        # "https://acq.example@evil.example/" sends the card to evil.example. The
        # message never quotes the URL, which would quote the password.
        if "@" in self.upstream.split("/")[2]:
            raise ValueError(
                "a relay route's upstream may not name a user or password (user@host): "
                "they would be recorded in its audit entries, and the host is what follows '@'"
            )
        return self

    @model_validator(mode="after")
    def _card_number_once(self) -> Self:
        if self.card is not None:
            taken = set(self.detokenize) & {self.card.number, *self.card.details().values()}
            if taken:
                raise ValueError(f"{sorted(taken)} is both a detokenize pointer and a card pointer")
        return self

    @model_validator(mode="after")
    def _share_within_places(self) -> Self:
        share = self.max_in_flight_per_identity
        if share is not None and share > self.max_in_flight:
            raise ValueError(
                f"max_in_flight_per_identity ({share}) is more than the route's "
                f"max_in_flight ({self.max_in_flight})"
            )
        return self

    def share_of(self) -> int:
        """The most of this route's places one identity holds at once: its
        `max_in_flight_per_identity`, else every place when one identity may use the
        route, else all but a quarter of them (at least one)."""
        if self.max_in_flight_per_identity is not None:
            return self.max_in_flight_per_identity
        if len(self.identities) <= 1:
            return self.max_in_flight
        return max(1, self.max_in_flight - max(1, self.max_in_flight // 4))

    @model_validator(mode="after")
    def _retry_only_idempotent(self) -> Self:
        if self.retries and not (self.idempotent or self.method == "PUT"):
            raise ValueError(
                "retries are allowed only for idempotent upstream calls "
                "(method PUT or idempotent = true)"
            )
        return self


class LuhnExemption(BaseModel):
    """A named range of card numbers that do not carry a Luhn check digit (some
    private-label cards): PANs starting with one of `prefixes` skip the Luhn check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefixes: frozenset[Annotated[str, Field(pattern=r"^[0-9]{1,11}$")]]
    description: str = ""


# The places of every relay route together (`RelayRoute.max_in_flight`): each is a relay
# thread of a vault process (`api.routes._offload.RELAY_THREADS` is one more, for the
# refusals), so an upstream that stalls takes its own routes' threads, never another
# route's (review 40: three routes of 64 took all 129, and every other relay queued).
# Sixteen routes at the default 16; threads are started only as relays need them.
MAX_RELAY_PLACES: Final = 256


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
    luhn_exempt: dict[Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")], LuhnExemption] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        if clash := set(self.formats) & set(BUILTIN_FORMATS):
            raise ValueError(f"format names {sorted(clash)} are built in; choose other names")
        known = set(BUILTIN_FORMATS) | set(self.formats)
        # First: the other checks quote the identity, and this one's run must not be.
        _recorded_as_written(list(self.identities))
        for identity, rules in self.identities.items():
            _check_identity(identity, rules, known)
        self._mfa_keys_distinct()
        places = sum(route.max_in_flight for route in self.relay_routes.values())
        if places > MAX_RELAY_PLACES:
            raise ValueError(
                f"relay routes hold {places} places together (their max_in_flight), more "
                f"than the {MAX_RELAY_PLACES} relay threads of a vault process: lower some "
                "routes' max_in_flight"
            )
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

    def _mfa_keys_distinct(self) -> None:
        """Refuse one token key registered for two identities (compared by its public
        point, however the PEM is written): dual control counts identities, and the
        second factor would then prove only that one person holds one token (review 38)."""
        holders: dict[tuple[int, int], str] = {}
        for identity, rules in self.identities.items():
            if rules.mfa_public_key is None:
                continue
            key = load_pem_public_key(rules.mfa_public_key.encode())
            assert isinstance(key, ec.EllipticCurvePublicKey)  # noqa: S101 - checked above
            numbers = key.public_numbers()
            point = (numbers.x, numbers.y)
            if (other := holders.setdefault(point, identity)) != identity:
                raise ValueError(
                    f"identities {other!r} and {identity!r} register the same "
                    "mfa_public_key: each person's token key belongs to one identity"
                )

    def luhn_exempt_prefix(self, digits: str) -> str | None:
        """The name of the Luhn exemption that covers `digits`, or None."""
        for name, exemption in self.luhn_exempt.items():
            if any(digits.startswith(prefix) for prefix in exemption.prefixes):
                return name
        return None

    def format(self, name: str) -> FormatSpec | None:
        """Return the format called `name` (built in or defined here), or None."""
        return self.formats.get(name) or BUILTIN_FORMATS.get(name)

    def officers(self) -> frozenset[str]:
        return frozenset(
            identity
            for identity, rules in self.identities.items()
            if rules.role is Role.SECURITY_OFFICER
        )
