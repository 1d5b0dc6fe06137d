"""A log a vault older than session 40 adopted: its first start's `key.register`
records ("adopted at first start") carry no end record, and the registry takes a
version 2 or later unsigned only as part of that adoption. While such a log's registry
held nothing but the adoption, a record the operator who holds the HSM PIN and writes
the database appended later, in the same words, was read as part of it: the planted
next KEK was taken as current (sign40's open question). The upgraded vault's next start
now closes the adoption with its end record, once."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.keys import KeyKind
from hsm.provider import HSMProvider
from tests.support.audit_trail import append_registration
from vault.key_registry import ADOPTED, ADOPTION_END, KeyRegistry, token_identities


def _adopted_as_before_session_40(engine: Engine, provider: HSMProvider) -> None:
    """The records a first start before session 40 wrote: the token's version-1 keys as
    found, and no end record."""
    identities = token_identities(provider.list_keys())
    for label in ("cofre-audit-v1", "cofre-fp-v1", "cofre-kek-v1"):
        identity = identities[label]
        assert identity is not None
        append_registration(engine, label, {**identity.as_details(), "how": ADOPTED})


def _ends(engine: Engine) -> int:
    with engine.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p"),
            {"p": '{"action":"key.register",%'},
        ).scalars()
        return sum(json.loads(p)["details"].get("how") == ADOPTION_END for p in payloads)


def test_an_adoption_appended_after_an_upgraded_start_is_not_taken(
    engine: Engine, hsm_provider: HSMProvider, planted: str
) -> None:
    _adopted_as_before_session_40(engine, hsm_provider)
    registry = KeyRegistry(engine, hsm_provider)
    assert registry.adopt_if_empty() == []  # the upgraded vault's start: nothing to adopt
    identity = token_identities(hsm_provider.list_keys())[planted]
    assert identity is not None
    append_registration(engine, planted, {**identity.as_details(), "how": ADOPTED})
    registry.registered(fresh=True)
    assert registry.current_label(KeyKind.KEK) == "cofre-kek-v1"


def test_the_end_is_written_once_and_never_after_other_records(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    _adopted_as_before_session_40(engine, hsm_provider)
    registry = KeyRegistry(engine, hsm_provider)
    registry.adopt_if_empty()
    registry.adopt_if_empty()  # every later start
    assert _ends(engine) == 1
    assert registry.current_label(KeyKind.KEK) == "cofre-kek-v1"
