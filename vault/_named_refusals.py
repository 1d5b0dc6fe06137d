"""The token record a refusal was about, named in its audit entry.

IN PCI SCOPE, as part of the vault's audit; it reads a token's record id, never its card.

PCI DSS v4.0.1 10.2.1.4 wants every invalid logical access attempt in the audit log, and
10.2.2 each entry to name the "identity or name of affected data". A refusal of an
operation that names a token (detokenize, masked, metadata, update, delete) was written
without it: a policy denial is decided and audited before any row is read, and a guessed
bucket's refusal before the transaction. A QSA reading the log of a stolen certificate
asking for 1,000 cards it may not see could not say which card records were asked for
(session 40). The API names the token a request is about (`naming_token`); the entry of
its refusal then names the token's record (``token_id``: the record's id, never the token
digits, which can be a card's BIN and last four or a card itself). A token the vault does
not hold has no record, and is named by nothing.

A denial must not tell whether the vault holds the token from the work it does (session
41): every token a record could have (1 to 64 characters, `named_token`) is read for,
held or not, and the refusal sieve gives every refusal naming one the same allowance
(`names_token`; `api._refusal_sieve`), whether the read found a record or not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from audit.log import AuditEvent, Outcome
from cofre.blocking import may_block
from policies.engine import PolicyEngine
from policies.models import Action
from vault.storage.schema import tokens

__all__ = ["named_record", "names_token", "naming_token", "reads_the_log"]

# The token the request being served names (`naming_token`): None, none or several.
_NAMED: Final[ContextVar[str | None]] = ContextVar("cofre_named_token", default=None)


@contextmanager
def naming_token(token: str) -> Iterator[None]:
    """While the block runs, a refusal entry the vault writes in this context (and in
    contexts copied from it) without a token record names the record of `token`."""
    reset = _NAMED.set(token)
    try:
        yield
    finally:
        _NAMED.reset(reset)


def _named_token() -> str | None:
    """The token the request being served names (`naming_token`), if a record could
    hold it (1 to 64 characters, the column's width), else None."""
    token = _NAMED.get()
    return token if token is not None and 1 <= len(token) <= 64 else None


def names_token() -> bool:
    """Whether the request being served names a token a record could hold, whether
    or not the vault holds it: what the refusal sieve decides by (session 41), never by
    the read's answer, so that a denial of a held token and one of a token the vault
    does not hold do the same work."""
    return _named_token() is not None


def reads_the_log(policy: PolicyEngine, actor: str) -> bool:
    """Whether `actor` may read the audit log (``audit_read``: an auditor, an officer):
    the entries of its own refusals then name no token record. Its own denial's entry,
    which it reads through the audit proofs, told it whether any domain holds the token
    it guessed, and which record it is (atk49x)."""
    rules = policy.policy.identities.get(actor)
    return rules is not None and Action.AUDIT_READ in rules.operations


def named_record(
    engine: Engine, event: AuditEvent, policy: PolicyEngine | None = None
) -> AuditEvent:
    """`event` naming the record of the token the request names (`naming_token`), if it
    is a refusal that names none and the vault holds that token (in any domain: a denial
    about another domain's token names the record too), and its actor does not read the
    log under `policy` (`reads_the_log`); else `event` as it is. Raises only
    `WouldBlock` (on the event loop); a failed read names nothing, and the entry is
    still written."""
    token = _named_token()
    if token is None or event.token_id is not None or event.outcome is Outcome.SUCCESS:
        return event
    if policy is not None and reads_the_log(policy, event.actor):
        return event
    may_block()  # a read: on the event loop, the call runs again in a thread
    try:
        with engine.connect() as connection:
            record = connection.execute(
                select(tokens.c.id).where(tokens.c.token == token)
            ).scalar_one_or_none()
    except SQLAlchemyError:
        return event
    return event if record is None else dataclasses.replace(event, token_id=str(record))
