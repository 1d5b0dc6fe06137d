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
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection, Engine, select

from audit.log import AuditEvent, AuditLog, Outcome
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
_MAX_STATEMENT: Final = 4096
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
        Cofre keys in the registry. Raises `PolicyDenied` without ``key_admin``."""
        rules = self._policy().authorize(identity, Action.KEY_ADMIN)
        keys = [k for k in self._registry.registered() if parse_key_label(k) is not None]
        return custody_statement(identity, rules.role.value, keys, self._clock().date()).decode()

    def acknowledge(
        self, identity: str, statement: str, signature: str, request_id: str | None = None
    ) -> dict[str, Any]:
        """Check `identity`'s signed `statement` and record it (``key.custody.acknowledge``).

        Raises `PolicyDenied` for a caller without ``key_admin``, `CustodyStatementInvalid`
        for a statement that is malformed, not canonical, about another identity or role,
        not dated today (UTC, a day either way), naming no key or a key Cofre does not
        use, or whose signature does not verify under the caller's registered MFA key.
        """
        rules = self._policy().authorize(identity, Action.KEY_ADMIN)
        if rules.mfa_public_key is None:
            raise CustodyStatementInvalid(f"{identity} has no MFA key in the policy to sign with")
        data = self._parse(statement)
        expected = custody_statement(
            identity, rules.role.value, list(data.get("keys") or []), self._day(data)
        )
        if statement.encode() != expected:
            raise CustodyStatementInvalid(
                "the statement is not the canonical custody statement for this identity, "
                "its role and today's date (see docs/key-ceremony.md)"
            )
        registered = set(self._registry.registered())
        keys = list(data["keys"])
        if not keys or any(k not in registered or parse_key_label(k) is None for k in keys):
            raise CustodyStatementInvalid(
                "the statement must name Cofre's registered keys, and only them"
            )
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
    def _parse(statement: str) -> dict[str, Any]:
        if len(statement) > _MAX_STATEMENT:
            raise CustodyStatementInvalid("the statement is too long")
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


def recorded(connection: Connection) -> list[dict[str, Any]]:
    """The acknowledgements the audit log on `connection` holds, oldest first."""
    query = (
        select(audit_entries.c.id, audit_entries.c.payload)
        .where(audit_entries.c.payload.startswith(f'{{"action":"{ACKNOWLEDGE}",'))
        .order_by(audit_entries.c.id)
    )
    out = []
    for entry_id, payload in connection.execute(query).all():
        entry = json.loads(payload)
        out.append(
            {
                "entry_id": int(entry_id),
                "identity": entry.get("actor"),
                "at": entry.get("time"),
                **entry.get("details", {}),
                # Since session 34 the entry's document; before, a detail (whole
                # only when it was 512 characters or fewer).
                **({"statement": entry["document"]} if "document" in entry else {}),
            }
        )
    return out
