"""The key registry: which HSM keys are Cofre's (PCI DSS 3.6.1, 3.7.7).

IN PCI SCOPE. Every token key Cofre uses is recorded when it is created (or, on the
first start of a vault whose registry is empty, adopted from the token as found):
label, CKA_ID and what identifies its material without revealing it (the token's key
check value for a secret key, the SHA-256 of an EC public point). Records are
`key.register` audit entries, so the registry is as tamper-evident as the log.

A key on the token that is not in the registry, or whose CKA_ID or check value differ
from its record (a substitute under a Cofre label), is never used: the newest
*registered* version of a kind is current, never simply the newest label. Such keys
are reported (`cofre hsm status`, `/readyz` with `hsm_key_unregistered`, a metric).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import SQLAlchemyError

from audit.log import AuditEvent, AuditLog, Outcome
from audit.retention import registration_details
from audit.schema import READ_ONLY, audit_entries
from cofre.dberrors import db_error_name
from cofre.redaction import mask_pan_like
from hsm.errors import HSMKeyNotFound, HSMKeyNotRegistered
from hsm.keys import KeyKind, key_label, parse_key_label
from hsm.models import KeyInfo
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from vault.errors import KeyNotRegistered, StorageUnavailable

REGISTER: Final = "key.register"
# The transaction-scoped advisory lock of a first start's adoption: "CofreR".
_ADOPT_LOCK: Final = 0x436F66726552
# The registry's records in the log, as the predicate of migration 0014's partial index
# (``ix_audit_entries_key_register``). SQLite and PostgreSQL use a partial index only
# for a query that carries its predicate word for word, so this is that text, never a
# bound parameter: with `startswith(...)` each read scanned the whole audit log, once a
# second per worker on the tokenize path (the fingerprint key list), 26 ms a read at
# 200,000 entries and growing with the log (issue 21's PostgreSQL statement profile).
# Canonical payloads sort their keys, so "action" is always first.
REGISTER_RECORDS: Final = """payload LIKE '{"action":"key.register",%'"""
_RECORDS: Final = (
    select(audit_entries.c.payload).where(text(REGISTER_RECORDS)).order_by(audit_entries.c.id)
)
_REFRESH_SECONDS: Final = 1.0
# How `adopt_if_empty` records the token's keys as found: the log's first registry
# records, written in one transaction into an empty registry. Only these take a version
# 2 or later unsigned (session 40): the same words written later are a writer's.
ADOPTED: Final = "adopted at first start"
ADOPTION_END: Final = "end of the first start's adoption"  # a record with no label
# What a KEK, fingerprint or audit key label registered as two different keys is
# recorded as: an identity no token key has (check values are hex), so the label is
# never used and readiness names it (session 37). The vault never registers such a
# label twice (a ceremony takes the next version; a failed one destroys only what it
# did not register; a lost key is restored from the HSM's backup, `cofre hsm init`
# refuses), so a second record of another key is a writer of the log putting a key no
# ceremony made into use: until session 37 the label's last record won, and the vault
# used the new key at once (caught only by the evidence's check 6d). Retention's
# carried-forward copies repeat the identity, and security-code epoch keys, made again
# under their label after a lost transaction, are not such labels.
_REGISTERED_AS_ANOTHER_KEY: Final = "registered again as another key"
# What each label a signed ceremony's records name is recorded as when they name more
# than one (session 40): a rotation makes one version, so all but one are copies of its
# officers' signatures onto a key it did not make, and none is used.
_ONE_CEREMONY: Final = "one ceremony's signatures on several labels"
# What a version 2 or later whose ceremony's signatures do not verify now is recorded as
# (an officer who signed it removed, or their token key replaced: docs/key-ceremony.md):
# never used, and never fallen back from (`_refuse_a_newer_version_altered`).
_NOT_PROVEN: Final = "signatures the policy in force does not prove"
# When officers' signatures prove a registration, the second of its signed proposal
# (`vault._signed_registration.signed_registration_time`), else None.
SignedRegistrations = Callable[[dict[str, Any], object], int | None]


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """One key as the token shows it: label, CKA_ID (base64) and check value."""

    label: str
    cka_id: str | None
    check: str | None

    def as_details(self) -> dict[str, str | None]:
        return {"label": self.label, "cka_id": self.cka_id, "check": self.check}


def can_leave_the_token(key: KeyInfo) -> bool:
    """Whether secret or private key `key` is, or ever was, readable or extractable
    (public halves never count). Every key Cofre makes is sensitive and never
    extractable; one that is not was made or imported with the PIN outside Cofre. An
    attribute the token does not report (``None``) counts only for the two it must."""
    if key.object_class == "PUBLIC_KEY":
        return False
    return (
        key.sensitive is not True
        or key.extractable is not False
        or key.always_sensitive is False
        or key.never_extractable is False
    )


def token_identities(keys: list[KeyInfo]) -> dict[str, KeyIdentity | None]:
    """Each label on the token with its identity; ``None`` when the label's objects do
    not make one key (two secret keys under one label, halves with different ids) or
    the key can leave the token (`can_leave_the_token`): such a key is never adopted,
    registered or used (review 38)."""
    by_label: dict[str, list[KeyInfo]] = defaultdict(list)
    for key in keys:
        by_label[key.label].append(key)
    out: dict[str, KeyIdentity | None] = {}
    for label, objects in by_label.items():
        classes = sorted(o.object_class for o in objects)
        if any(can_leave_the_token(o) for o in objects):
            out[label] = None
        elif classes == ["SECRET_KEY"]:
            out[label] = KeyIdentity(label, objects[0].key_id, objects[0].key_check)
        elif classes == ["PRIVATE_KEY", "PUBLIC_KEY"] and len({o.key_id for o in objects}) == 1:
            public = next(o for o in objects if o.object_class == "PUBLIC_KEY")
            out[label] = KeyIdentity(label, public.key_id, public.key_check)
        else:
            out[label] = None
    return out


def _refuse_a_newer_version_altered(
    kind: KeyKind,
    newest: int,
    on_token: dict[str, KeyIdentity | None],
    registry: dict[str, KeyIdentity],
) -> None:
    """Raise `KeyNotRegistered` when a registered version of `kind` newer than `newest`
    (the newest one the token shows as recorded) is on the token but not as recorded: a
    second object under its label, or a substitute. Until session 37 such a version was
    only left out, so the version before it (the one a rotation is retiring) silently
    became current again. A registered version absent from the token (destroyed, or not
    yet on the HSM a call reached: CloudHSM key synchronisation) is still skipped."""
    for label, recorded in registry.items():
        parsed = parse_key_label(label)
        if parsed is None or parsed[0] != kind or parsed[1] <= newest or label not in on_token:
            continue
        found = on_token[label]
        if found != recorded:
            # What each side holds (CKA_ID and check value are in the log's records
            # already): an on-call engineer tells a second object from a substitute.
            shown = (
                "not one key that never leaves it (two objects under the label, or one "
                "that can leave the token)"
                if found is None
                else f"CKA_ID {found.cka_id}, check {found.check}"
            )
            # A record the registry voids keeps no identity, only why (`_NOT_PROVEN`...).
            record = (
                f"CKA_ID {recorded.cka_id}, check {recorded.check}"
                if recorded.cka_id is not None
                else f"no key usable ({recorded.check})"
            )
            raise KeyNotRegistered(
                f"{label!r}, the newest registered {kind.value} key, is on the token but not "
                "as registered (a second key under its label, or a substitute): refused, "
                f"rather than fall back to the version before it. On the token: {shown}; "
                f"registered: {record}"
            )


class KeyRegistry:
    """Registered keys (from the audit log) checked against the token."""

    def __init__(self, engine: Engine, provider: HSMProvider, audit: AuditLog | None = None):
        self._engine = engine
        self._provider = provider
        self._audit = audit or AuditLog()
        self._lock = threading.Lock()
        self._cache: dict[str, KeyIdentity] | None = None
        self._read_at = 0.0
        self._signed: SignedRegistrations | None = None
        # Tests' in-process ceremonies only (`KeyRotation`'s `unsigned_officers_count`):
        # take a rotation's unsigned registration, and its data completions, as before
        # session 40. Never set in a served vault.
        self._unsigned_ceremonies = False
        self._refused: frozenset[str] = frozenset()

    def trust_signed(self, verify: SignedRegistrations) -> None:
        """Take a registration the security officers signed (`verify` proves it, under
        the policy in force) for its label over every record they did not sign, before
        or after it (session 39, `vault._signed_registration`)."""
        with self._lock:
            self._signed, self._cache = verify, None

    def trust_officers(
        self,
        policy: Callable[[], PolicyEngine],
        authorities: Callable[[], Collection[str]] | None,
        *,
        insecure_unsigned_ceremonies: bool = False,
    ) -> None:
        """`trust_signed` with the officers of `policy` (the one in force, read at each
        use) signing for one of `authorities` (the vault's own names).
        `insecure_unsigned_ceremonies`: tests' in-process ceremonies, whose officers sign
        nothing, put the versions they make into use unsigned (never in a served vault)."""
        # Imported here: that module builds on this one's records.
        from vault._signed_registration import officers_verifier  # noqa: PLC0415

        self.trust_signed(officers_verifier(policy, authorities))
        with self._lock:
            self._unsigned_ceremonies = insecure_unsigned_ceremonies

    def signed_time(self, details: dict[str, Any], document: object) -> int | None:
        """When the officers signed the ceremony the record with `details` (its ceremony
        id under ``ceremony``) and `document` proves, as `trust_signed` takes a
        registration (a data rotation's start, `vault._retired_keys`); None when it
        proves none, or when no officers are trusted yet. Tests' unsigned ceremonies
        (`trust_officers`) count at the second 0."""
        with self._lock:
            if self._unsigned_ceremonies:
                return 0
            return None if self._signed is None else self._signed(details, document)

    def refused(self) -> list[str]:
        """Labels of a version 2 or later of a KEK, fingerprint or audit key that the log
        registers only without the officers' signatures (session 40), or with signatures
        the policy in force no longer proves: never used. Reads the log anew."""
        self.registered(fresh=True)
        with self._lock:
            return sorted(self._refused)

    # ------------------------------------------------------------------ records
    def registered(self, *, fresh: bool = False) -> dict[str, KeyIdentity]:
        """The registry by label (the last record of a label wins, except that a KEK,
        fingerprint or audit key label recorded as two different keys is never used:
        `_REGISTERED_AS_ANOTHER_KEY`, and that a record the officers signed wins over
        every unsigned one: `trust_signed`). Read from the log, cached for a second
        (another node may register a key)."""
        with self._lock:
            now = time.monotonic()
            if fresh or self._cache is None or now - self._read_at > _REFRESH_SECONDS:
                self._cache, self._read_at = self._read(), now
                # Every lookup of the HSM layer then takes only the recorded key under a
                # recorded label (session 38): until then a substitute was used by each
                # session that found it until a listing here noticed it, and the audit
                # signer, which resolves its label only when the handovers change, kept
                # signing with it.
                self._provider.pin_key_identities(
                    {label: (i.cka_id, i.check) for label, i in self._cache.items()}
                )
            return dict(self._cache)

    def _read(self, connection: Connection | None = None) -> dict[str, KeyIdentity]:
        if connection is None:
            # A read-only connection: on SQLite it must not queue behind a writer (the
            # registry is consulted from inside the vault's own write transactions).
            try:
                with self._engine.execution_options(**READ_ONLY).connect() as reader:
                    return self._read(reader)
            except SQLAlchemyError as exc:
                # Translated here, the registry's edge: it is read from request paths
                # (the fingerprint key list), where a raw database error would be a 500.
                raise StorageUnavailable(
                    f"the key registry is unavailable ({db_error_name(exc)})"
                ) from None
        return self._from_records(connection)

    def _from_records(self, connection: Connection) -> dict[str, KeyIdentity]:
        """The registry as the log's `key.register` records in `connection` make it (see
        `registered`); the labels it refuses are kept for `refused`."""
        out: dict[str, KeyIdentity] = {}
        twice, refused, voided = set[str](), set[str](), set[str]()
        # Of the records officers signed, per label the one proposed last (session 39).
        signed: dict[str, tuple[int, KeyIdentity]] = {}
        # The labels each signed record's ceremony registers: one, or none is used.
        ceremonies: dict[str, set[str]] = defaultdict(set)
        first_start = True  # the log's first records are its first start's adoption
        for payload in connection.execute(_RECORDS).scalars():
            parsed = registration_details(payload)
            # Not the vault's (session 39: raised, a 500 at each call; review 49c: not a
            # success, or another action LIKE matched), or the end of the first start's
            # adoption: no key, and the adoption is over.
            if parsed is None or parsed[1].get("how") == ADOPTION_END:
                first_start = False
                continue
            record, details = parsed
            label = str(details.get("label", ""))
            identity = KeyIdentity(label, details.get("cka_id"), details.get("check"))
            at = self._signed_at(details, record.get("document"), label)
            first_start = first_start and at is None and details.get("how") == ADOPTED
            if at is not None:
                # By the id as the log masks it: a signed record is read with its id
                # masked (one in ~280) or spelt out (`_signed_registration`), and a copy
                # of the genuine record under the other spelling was another ceremony
                # to this rule, its planted label registered (review 47).
                ceremonies[mask_pan_like(str(details["ceremony"]))].add(label)
                before = signed.get(label)
                if before is None or at > before[0]:
                    signed[label] = (at, identity)
                elif at == before[0] and before[1] != identity:  # one second, two keys
                    signed[label] = (at, KeyIdentity(label, None, _REGISTERED_AS_ANOTHER_KEY))
                continue
            parsed_label = parse_key_label(label)
            if (
                parsed_label is not None
                and parsed_label[1] >= 2
                and not (self._unsigned_ceremonies or first_start)
            ):
                # Session 40: only a ceremony makes it, and signs it. One whose signatures
                # no longer prove it (an officer removed, a token key replaced) stops its
                # kind rather than hand it back to the version it replaced.
                # One naming another key under a label taken (the first start's adoption)
                # makes it unusable, as under version 1 (session 37).
                if label in out:
                    twice.update([label] if out[label] != identity else [])
                    continue
                signed_once = "ceremony" in details and record.get("document") is not None
                (voided if signed_once else refused).add(label)
                continue
            if parsed_label is not None and out.get(label, identity) != identity:
                twice.add(label)
            out[label] = identity
        for label in twice:
            out[label] = KeyIdentity(label, None, _REGISTERED_AS_ANOTHER_KEY)
        for label in voided:
            out.setdefault(label, KeyIdentity(label, None, _NOT_PROVEN))
        for labels in ceremonies.values():
            if len(labels) > 1:  # one ceremony's signatures copied onto another label
                signed |= {name: (0, KeyIdentity(name, None, _ONE_CEREMONY)) for name in labels}
        self._refused = frozenset((refused - set(out)) | voided) - set(signed)
        return out | {label: identity for label, (_, identity) in signed.items()}

    def _signed_at(self, details: dict[str, Any], document: object, label: str) -> int | None:
        """When officers signed this record (`trust_signed`), else None: only a Cofre
        token key label with a ceremony and a document can be one."""
        if self._signed is None or document is None or "ceremony" not in details:
            return None
        return self._signed(details, document) if parse_key_label(label) else None

    def forget(self) -> None:
        """Read the registry again at its next use (a registration was written)."""
        with self._lock:
            self._cache = None

    def register(
        self,
        connection: Connection,
        label: str,
        *,
        actor: str,
        how: str,
        ceremony: str | None = None,
        document: str | None = None,
    ) -> None:
        """Record token key `label` as Cofre's, in `connection`'s transaction; a key
        ceremony's record names it (`ceremony`) and carries its officers' signed requests
        (`document`, `vault._signed_registration.signed_document`).

        Raises `KeyNotRegistered` when the label does not name exactly one key.
        """
        identity = token_identities(self._provider.list_keys()).get(label)
        if identity is None:
            raise KeyNotRegistered(
                f"{label!r} is not exactly one key on the token, sensitive and never extractable"
            )
        # Held: the ceremony's start, written next in this transaction, takes this
        # entry's time, so that no period of the evidence holds one without the other.
        self._audit.append(
            connection,
            AuditEvent(
                action=REGISTER,
                outcome=Outcome.SUCCESS,
                actor=actor,
                key_id=label,
                details={**identity.as_details(), "how": how}
                | ({} if ceremony is None else {"ceremony": ceremony}),
                document=document,
            ),
            hold=True,
        )
        with self._lock:
            self._cache = None

    def adopt_if_empty(self, *, actor: str = "cofre") -> list[str]:
        """On a vault whose registry is empty (its first start, or its first since the
        registry exists), register the Cofre-labelled keys on the token as found (trust
        on first use, recorded). Returns the labels adopted."""
        if self.registered():
            self._end_an_earlier_adoption(actor)
            return []
        adopted = [
            label
            for label, identity in sorted(token_identities(self._provider.list_keys()).items())
            if identity is not None and parse_key_label(label) is not None
        ]
        with self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Two first starts at once (session 39, new39) each read an empty
                # registry under READ COMMITTED and both adopted every key: the second
                # now waits here and finds the first's records. SQLite's BEGIN
                # IMMEDIATE already keeps writers apart.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADOPT_LOCK})
            if self._read(connection):  # another node adopted meanwhile
                return []
            for label in adopted:
                self.register(connection, label, actor=actor, how=ADOPTED)
            # The adoption's end, in its transaction (session 40): the same words
            # written after it are a writer's, never the first start's.
            end = AuditEvent(
                action=REGISTER, outcome=Outcome.SUCCESS, actor=actor, details={"how": ADOPTION_END}
            )
            self._audit.append(connection, end)
        with self._lock:
            self._cache = None
        return adopted

    def _end_an_earlier_adoption(self, actor: str) -> None:
        """Write the adoption's end record on a log a vault before session 40 adopted,
        once: while its registry's records were all the first start's adoption, with no
        end, a record a database writer appended later in the same words was read as
        part of it, and its version 2 or later taken unsigned."""
        with self._engine.execution_options(**READ_ONLY).connect() as reader:
            if not self._adoption_unended(reader):  # every start after the first, at once
                return
        with self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":  # as `adopt_if_empty`'s
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADOPT_LOCK})
            if not self._adoption_unended(connection):  # another node ended it meanwhile
                return
            end = AuditEvent(
                action=REGISTER, outcome=Outcome.SUCCESS, actor=actor, details={"how": ADOPTION_END}
            )
            self._audit.append(connection, end)
        with self._lock:
            self._cache = None

    @staticmethod
    def _adoption_unended(connection: Connection) -> bool:
        """Whether the log's registry records are all an adoption's, with no end."""
        found = False
        for payload in connection.execute(_RECORDS).scalars():
            parsed = registration_details(payload)
            if parsed is None or parsed[1].get("how") != ADOPTED or "ceremony" in parsed[1]:
                return False
            found = True
        return found

    def refuse_version_one_after_first_start(self, missing: list[KeyKind]) -> None:
        """Return when version 1 of the kinds in `missing` (those with no key on the
        token, which `cofre hsm init` would make) may be made: nothing missing, or a
        registry still empty (the log's first start). Raises `HSMKeyNotFound` naming
        them otherwise.

        Version 1 of each kind is made once, at the log's first start: one made later
        under the same label would be put into use with no key ceremony (the label's
        last registration wins), which every evidence verifier fails (check 6d). A lost
        key is restored from the HSM's backup (docs/key-ceremony.md, "A key missing
        from the token")."""
        if not missing:
            return
        registered = self.registered(fresh=True)
        if not registered:
            return
        names = ", ".join(f"cofre-{kind.value}-v*" for kind in missing)
        held = sorted(
            label
            for label in registered
            if (parsed := parse_key_label(label)) is not None and parsed[0] in missing
        )
        raise HSMKeyNotFound(
            f"no {names} key on the token, but this vault's key registry is not empty "
            f"(registered before: {', '.join(held) or 'none of that kind'}): a key is made "
            "again only by a key ceremony, never by `cofre hsm init` after the first "
            "start. Restore the token's keys from the HSM's backup (docs/key-ceremony.md, "
            '"A key missing from the token"); nothing was created'
        )

    # ------------------------------------------------------------------ use
    def listing(self) -> list[KeyInfo]:
        """The token's keys now (one listing, for a caller that asks `versions` of
        several kinds: atk49n)."""
        return self._provider.list_keys()

    def versions(self, kind: KeyKind, listed: list[KeyInfo] | None = None) -> list[int]:
        """Versions of `kind` on the token (`listed`, or the token's listing now) that
        match their registry record, ascending.
        A substitute (same label, other CKA_ID or check value) or an unregistered
        newer version is left out: never used. Never writes (it is called inside the
        vault's transactions): adoption is `adopt_if_empty`'s, before them."""
        keys = self._provider.list_keys() if listed is None else listed
        on_token = token_identities(keys)
        registry = self.registered()
        if any(label not in registry for label in on_token if parse_key_label(label)):
            registry = self.registered(fresh=True)  # registered by another node?
        found = []
        for label, identity in on_token.items():
            parsed = parse_key_label(label)
            # `identity` is None for a label whose objects are not one key, and so is
            # `registry.get` for a label never recorded: never take one for the other
            # (review 38: a key pair planted beside a key made it "registered").
            if (
                parsed is not None
                and parsed[0] == kind
                and identity is not None
                and identity == registry.get(label)
            ):
                found.append(parsed[1])
        _refuse_a_newer_version_altered(kind, max(found, default=0), on_token, registry)
        return sorted(found)

    def in_force(self) -> list[str]:
        """The labels of the Cofre key versions in custody now, sorted: each registered
        version still on the token as its record says. In force: the current version of
        each kind, a KEK or fingerprint key a rotation moved off but has not destroyed
        yet (kept to decrypt the late rows through its grace), and every earlier audit
        key (kept to verify the heads it signed). Not in force: a version destroyed
        (`key.destroy`, gone from the token) and a substitute under a Cofre label (never
        used). What the custody statement names (`vault.custody`): a custodian
        acknowledges the keys they hold, not every key ever made. Reads the registry
        fresh (a statement fetched from one node is checked on another) and the token;
        never writes."""
        registry = self.registered(fresh=True)
        return sorted(
            label
            for label, identity in token_identities(self._provider.list_keys()).items()
            if parse_key_label(label) is not None
            and identity is not None
            and identity == registry.get(label)
        )

    def current_label(self, kind: KeyKind) -> str:
        """The label of the newest registered version of `kind`. Raises `HSMKeyNotFound`."""
        versions = self.versions(kind)
        if not versions:
            raise HSMKeyNotFound(
                f"no registered {kind.value} key on the token: run `cofre hsm init` on a new "
                "vault; on one that has served, restore the HSM's backup (docs/key-ceremony.md)"
            )
        return f"cofre-{kind.value}-v{versions[-1]}"

    def unregistered(self, listed: list[KeyInfo] | None = None) -> list[str]:
        """Labels of keys on the token (`listed`, or the token's listing now) that are not
        in the registry as they are."""
        registry = self.registered()
        keys = self._provider.list_keys() if listed is None else listed
        return sorted(
            label
            for label, identity in token_identities(keys).items()
            if identity is None or registry.get(label) != identity
        )

    def check(self) -> None:
        """Return if every key on the token is registered. Raises `KeyNotRegistered`
        naming the others (readiness fails with its own code)."""
        self.adopt_if_empty()
        # Bounded as the HSM's readiness check is: never waits on a busy pool or a hung
        # call (session 35), so /readyz answers whatever the HSM's connection does.
        listed = self._provider.list_keys_for_check()
        stray = self.unregistered(listed)
        if stray:
            unsigned = [label for label in self.refused() if label in stray]
            raise KeyNotRegistered(
                "keys on the token that are not in Cofre's key registry (never used; "
                "investigate and destroy them): "
                + ", ".join(stray)
                + (
                    "; not proven by the signatures of officers the policy grants, which "
                    "a version 2 or later needs (session 40: only a key ceremony makes "
                    f"one): "
                    f"{', '.join(unsigned)}"
                    if unsigned
                    else ""
                )
            )
        # The listing cannot see a private half replaced under our public one (same
        # label, CKA_ID and point): the current audit key pair signs for its point
        # (hsm38b; bounded and at most once a minute per key object).
        audit = [
            parsed[1]
            for label in token_identities(listed)
            if (parsed := parse_key_label(label)) is not None and parsed[0] is KeyKind.AUDIT
        ]
        if audit:
            current = key_label(KeyKind.AUDIT, max(audit))
            try:
                self._provider.prove_pair_for_check(current)
            except HSMKeyNotRegistered:
                raise KeyNotRegistered(
                    f"the private key labelled {current!r} does not sign for the public key "
                    "the key registry records (a substitute; never used: investigate)"
                ) from None
