"""Key custodians' acknowledgements (PCI DSS 4.0.1 req. 3.6.1.2, 3.7.8): each officer signs,
with their own token key (their MFA key), a statement that they are a custodian of the
keys Cofre uses and accept the responsibilities; the vault checks it and records it in
the audit log, and evidence bundles carry every acknowledgement (``keys/custody.json``).

IN PCI SCOPE (key management). The statement is canonical JSON (sorted keys, no spaces)::

    {"date": "2026-12-01", "identity": "spiffe://cofre/officer-alice",
     "keys": ["cofre-audit-v1", "cofre-fp-v1", "cofre-kek-v1"],
     "role": "security_officer", "text": "<STATEMENT_TEXT>", "type": "cofre-key-custody/v1"}

signed ``ecdsa-p256-sha256`` (r||s, base64), verifiable offline against the officer's
``mfa_public_key`` in the policy versions the same bundle carries.

``keys`` are the key versions in force (`vault.key_registry.KeyRegistry.in_force`): those
the custodian holds now, never the versions destroyed (session 35: listing every version
ever registered outgrew the statement's bound after years of rotations, and no officer
could acknowledge, so the custody gate stopped every ceremony). The vault takes exactly
the statement it asks for at submission; one fetched before a ceremony made or destroyed
a version is refused by name, to be fetched again and signed. Statements recorded before
session 35 named destroyed versions too: they stay valid records, and in force for the
gate, which compares no key versions (`vault._custody_gate`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection, Engine, select, text

from audit.log import MAX_DOCUMENT, AuditEvent, AuditLog, Outcome
from audit.retention import record_details
from audit.schema import READ_ONLY, audit_entries
from cofre.dberrors import database_errors_as
from cofre.redaction import mask_pan_like
from hsm.keys import parse_key_label
from policies.engine import PolicyEngine
from policies.models import Action
from vault.errors import CustodyStatementInvalid, OfficerMfaInvalid, StorageUnavailable
from vault.httpsig import jwk_thumbprint, verify_ecdsa_p256
from vault.key_registry import KeyRegistry

ACKNOWLEDGE: Final = "key.custody.acknowledge"
STATEMENT_TYPE: Final = "cofre-key-custody/v1"
STATEMENT_TEXT: Final = (
    "I acknowledge that I am a custodian of the cryptographic keys listed, that I "
    "understand and accept my key-custodian responsibilities, and that I will take part "
    "in key ceremonies only under dual control and report any suspected compromise at once."
)
# The longest statement the API takes: what an audit entry records whole (its document).
# The vault's own bound is relative (`_STALE_SLACK`); this one holds about 3,000 versions
# in force (20 characters each), which normal operation does not approach: a KEK or a
# fingerprint version is destroyed once its rotation's grace ends, so two or three of
# each are in force, and an audit key (kept, never destroyed) comes every 730 days.
MAX_STATEMENT: Final = MAX_DOCUMENT
# How much longer than the statement the vault asks for one may be and still be read:
# one fetched before a ceremony destroyed a version or a few (about 20 characters each)
# is parsed and refused by name. Anything longer is refused unread, so the JSON parsing
# an officer's request costs is bounded by the statement the vault itself would ask for.
_STALE_SLACK: Final = 1024
# The acknowledgements' records, as the predicate of migration 0022's partial index
# (``ix_audit_entries_custody_acknowledge``), word for word, never a bound parameter:
# SQLite and PostgreSQL use a partial index only for a query that carries its predicate.
# The custody gate reads them at each proposal and approval; with `startswith(...)`
# each read scanned the whole audit log (session 35). Canonical payloads sort their
# keys, so "action" is always first.
ACKNOWLEDGE_RECORDS: Final = """payload LIKE '{"action":"key.custody.acknowledge",%'"""
# How far a statement's date may be from today (UTC) at submission; the offline
# verifier holds each recorded statement to the same distance from its audit entry.
STATEMENT_DATE_SKEW: Final = timedelta(days=1)


def canonical(statement: dict[str, Any]) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def custody_statement(identity: str, role: str, keys: list[str], on: date) -> bytes:
    """The statement `identity` signs on day `on` for `keys` (sorted, unique)."""
    return canonical(
        {
            "type": STATEMENT_TYPE,
            "identity": identity,
            "role": role,
            "keys": sorted(set(keys)),
            "date": on.isoformat(),
            "text": STATEMENT_TEXT,
        }
    )


_FIELDS: Final = frozenset({"type", "identity", "role", "keys", "date", "text"})


def is_custody_statement(text: str) -> bool:
    """Whether `text` is a custody statement as `custody_statement` makes one: canonical
    JSON of its six fields, this `STATEMENT_TYPE` and `STATEMENT_TEXT`. The only text an
    officer's token signs for `cofre keys acknowledge-custody`: that key is also their
    second factor, and review 35 had a vault node its operator controls send an
    approval's signature base as "the statement", which the token signed, a proof of an
    approval the officer never saw (`vault.approval_proof`). No signature base is JSON."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict) or set(data) != _FIELDS:
        return False
    if data["type"] != STATEMENT_TYPE or data["text"] != STATEMENT_TEXT:
        return False
    # `canonical` writes ASCII: the text must be those very bytes (an unpaired surrogate,
    # which has no UTF-8, is not).
    return canonical(data) == text.encode("utf-8", "surrogatepass")


class Custody:
    """Records and lists custodians' signed acknowledgements."""

    def __init__(
        self,
        engine: Engine,
        registry: KeyRegistry,
        policy: Callable[[], PolicyEngine],
        *,
        audit: AuditLog | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._policy = policy
        self._audit = audit or AuditLog()
        self._clock = clock

    def statement_for(self, identity: str) -> str:
        """The statement `identity` is to sign today: their role in the policy and the
        Cofre key versions in force (`KeyRegistry.in_force`). Raises `PolicyDenied`
        without ``key_admin``."""
        rules = self._policy().authorize(identity, Action.KEY_ADMIN)
        keys = self._registry.in_force()
        return custody_statement(identity, rules.role.value, keys, self._clock().date()).decode()

    def acknowledge(
        self, identity: str, statement: str, signature: str, request_id: str | None = None
    ) -> dict[str, Any]:
        """Check `identity`'s signed `statement` and record it (``key.custody.acknowledge``).

        Raises `PolicyDenied` for a caller without ``key_admin``, `CustodyStatementInvalid`
        for a statement that is malformed, not canonical, about another identity or role,
        not dated today (UTC, a day either way), not naming exactly the key versions in
        force now (one fetched before a ceremony made or destroyed a version: fetch it
        again), or whose signature does not verify under the caller's registered MFA key.
        """
        rules = self._policy().authorize(identity, Action.KEY_ADMIN)
        if rules.mfa_public_key is None:
            raise CustodyStatementInvalid(f"{identity} has no MFA key in the policy to sign with")
        in_force = self._registry.in_force()
        asked = custody_statement(identity, rules.role.value, in_force, self._clock().date())
        data = self._parse(statement, len(asked) + _STALE_SLACK)
        expected = custody_statement(
            identity, rules.role.value, list(data.get("keys") or []), self._day(data)
        )
        if statement.encode() != expected:
            raise CustodyStatementInvalid(
                "the statement is not the canonical custody statement for this identity, "
                "its role and today's date (see docs/key-ceremony.md)"
            )
        _check_keys(list(data["keys"]), in_force)
        public = rules.mfa_public_key.encode()
        try:
            raw = base64.b64decode(signature, validate=True)
            verify_ecdsa_p256(public, statement.encode(), raw)
        except (binascii.Error, ValueError, OfficerMfaInvalid):
            raise CustodyStatementInvalid(
                "the signature does not verify under your registered MFA key"
            ) from None
        if mask_pan_like(statement) != statement:
            # The log masks card-like digits in all it records (`audit.log`): recorded
            # so, the statement is not the one signed, the verifier fails it for good
            # and the custody gate never takes it (review 35: an identity with an
            # employee number of 12 digits).
            raise CustodyStatementInvalid(
                "the audit log masks 12 digits or more in a row, which this officer's "
                "identity holds: recorded so, the statement would not be the one signed "
                "(give the officer an identity without them)"
            )
        record: dict[str, Any] = {
            "signature": signature,
            "keyid": jwk_thumbprint(public),
            "public_key": public.decode(),
        }
        with (
            database_errors_as(StorageUnavailable, "the audit log"),
            self._engine.begin() as connection,
        ):
            self._audit.append(
                connection,
                AuditEvent(
                    action=ACKNOWLEDGE,
                    outcome=Outcome.SUCCESS,
                    actor=identity,
                    request_id=request_id,
                    details=record,
                    # The entry's document, recorded whole: a detail string is cut at
                    # 512 characters, and a statement naming nine key versions or more
                    # is longer (session 34: its cut copy could never verify).
                    document=statement,
                ),
            )
        return {"identity": identity, "statement": statement, **record}

    def _day(self, data: dict[str, Any]) -> date:
        try:
            day = date.fromisoformat(str(data.get("date")))
        except ValueError:
            raise CustodyStatementInvalid("the statement's date is not YYYY-MM-DD") from None
        if abs(day - self._clock().date()) > STATEMENT_DATE_SKEW:
            raise CustodyStatementInvalid("the statement must be dated today (UTC)")
        return day

    @staticmethod
    def _parse(statement: str, limit: int) -> dict[str, Any]:
        if len(statement) > limit:
            raise CustodyStatementInvalid(
                "the statement is longer than the statement the vault asks for: fetch it "
                "(GET /v1/admin/keys/custody/statement) and sign that"
            )
        try:
            data = json.loads(statement)
        except (ValueError, RecursionError):  # deep nesting fits the length (the ceremony review)
            raise CustodyStatementInvalid("the statement is not JSON") from None
        if not isinstance(data, dict):
            raise CustodyStatementInvalid("the statement is not a custody statement")
        keys = data.get("keys")
        # Strings only: the statement rebuilt to compare sorts them as a set (the ceremony review:
        # a list or a number among them was a TypeError, a 500).
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CustodyStatementInvalid("the statement is not a custody statement")
        return data

    def acknowledgements(self) -> list[dict[str, Any]]:
        """Every acknowledgement recorded, oldest first (for evidence bundles): who, when,
        the statement, its signature and the key that made it."""
        with (
            database_errors_as(StorageUnavailable, "the audit log"),
            self._engine.execution_options(**READ_ONLY).connect() as connection,
        ):
            return recorded(connection)


def _check_keys(named: list[str], in_force: list[str]) -> None:
    """Raise `CustodyStatementInvalid` unless `named` (a statement's keys, canonical) are
    the key versions `in_force`, exactly. A custodian acknowledges every key they hold,
    and only those: a statement naming some (or only keys destroyed long ago) would put
    an acknowledgement in force that covers none of the keys a ceremony uses."""
    if not named:
        raise CustodyStatementInvalid("the statement names no key")
    if named == in_force:
        return
    gone, new = sorted(set(named) - set(in_force)), sorted(set(in_force) - set(named))
    # Only Cofre labels are repeated (a pattern of letters and digits): an error message
    # never repeats what a caller sent.
    labels = [k for k in gone if parse_key_label(k) is not None]
    changes = []
    if labels:
        changes.append(f"names {', '.join(labels[:5])}, not in force (destroyed, or never made)")
    if len(labels) < len(gone):
        changes.append("names keys that are not Cofre's")
    if new:
        changes.append(f"does not name {', '.join(new[:5])}, in force")
    raise CustodyStatementInvalid(
        f"the statement must name exactly the key versions in force now, and it "
        f"{' and '.join(changes)}: a key ceremony made or destroyed a version since it was "
        "fetched, or it was not the vault's. Fetch it again and sign that"
    )


_ACKNOWLEDGEMENTS: Final = (
    select(audit_entries.c.id, audit_entries.c.payload)
    .where(text(ACKNOWLEDGE_RECORDS))
    .order_by(audit_entries.c.id)
)


def recorded(connection: Connection) -> list[dict[str, Any]]:
    """The acknowledgements the audit log on `connection` holds, oldest first."""
    out = []
    for entry_id, payload in connection.execute(_ACKNOWLEDGEMENTS).all():
        parsed = record_details(payload)
        if parsed is None:  # not the vault's (session 39)
            continue
        entry, details = parsed
        out.append(
            {
                "entry_id": int(entry_id),
                "identity": entry.get("actor"),
                "at": entry.get("time"),
                **details,
                # Since session 34 the entry's document; before, a detail (whole
                # only when it was 512 characters or fewer).
                **({"statement": entry["document"]} if "document" in entry else {}),
            }
        )
    return out
