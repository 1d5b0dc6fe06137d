"""`cofre hsm status`: the key registry's view of the token, and when the command
cannot vouch for the node (its exit status).

IN PCI SCOPE (wiring). Session 42: the command exited 0 while a mechanism the vault
calls was MISSING and while the key registry could not be read (it could not say
whether keys were missing, and its text output said nothing); a registry that does not
exist yet (a fresh database before `cofre db migrate`, as the database answers:
`vault.errors.SchemaNotCreated`) is not a failure, and says what to run, unless the
token holds Cofre's keys (session 43): `cofre hsm init` runs after `cofre db migrate`, so
that is a node pointed at the wrong database, or one that lost its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from cofre.errors import CofreError

NOT_CREATED: Final = (
    "not created yet (the database holds no Cofre schema): run `cofre db migrate` as "
    "the owner role, then `cofre hsm init` on a new token"
)


@dataclass(frozen=True)
class RegistryView:
    """What `cofre hsm status` reports of the key registry (`fields`, merged into its
    report), whether it was read (`readable`: an empty registry counts as read, and one
    not created yet beside a token without Cofre's keys), and the `registry:` line the
    text output prints, if any."""

    fields: dict[str, Any]
    readable: bool
    line: str | None = field(default=None)


def registry_report(settings: Any, provider: Any) -> RegistryView:
    """The key registry's view: registered labels, the keys on the token not registered
    as they are (an empty registry is adopted at the vault's first start), and the
    registered keys in use missing from the token. Raises nothing: a registry that
    cannot be read is reported `unavailable (<code>)`, not readable."""
    from cofre_cli._opening import open_database
    from cofre_cli.key_management import own_authorities
    from hsm.selftest import serving_labels
    from policies.engine import PolicyEngine
    from policies.loader import load_policy
    from vault.errors import SchemaNotCreated
    from vault.key_registry import KeyRegistry

    try:
        engine = open_database(settings)
        registry = KeyRegistry(engine, provider)
        # The officers' signed registrations count as the vault counts them (session
        # 39). A policy that cannot be read leaves them uncounted (such a label would
        # show unregistered, its key never missing): the registry is not readable then
        # (session 42); no policy configured is the deny-all policy, with no officer.
        policy = PolicyEngine(load_policy(settings.policy_file).policy)
        names = own_authorities(settings.server.cert_file)
        registry.trust_officers(lambda: policy, names)
        registered = registry.registered()
        stray = registry.unregistered() if registered else []
        missing = _missing(registered, provider.list_keys(), engine)
    except SchemaNotCreated:
        serving = serving_labels(provider)
        state = _not_created_beside(serving) if serving else NOT_CREATED
        fields = {"registry": state, "unregistered": [], "missing": []}
        return RegistryView(fields, readable=not serving, line=f"  registry: {state}")
    except CofreError as exc:
        state = f"unavailable ({exc.code})"
        fields = {"registry": state, "unregistered": [], "missing": []}
        return RegistryView(fields, readable=False, line=f"  registry: {state}")
    fields = {
        "registry": "ok" if registered else "empty (adopted at the vault's first start)",
        "registered": sorted(registered),
        "unregistered": stray,
        "missing": missing,
    }
    return RegistryView(fields, readable=True)


def _not_created_beside(serving: list[str]) -> str:
    """The registry's state when the database holds no schema and the token holds
    Cofre's keys (session 43). `cofre hsm init` records each key it makes in the
    registry, after `cofre db migrate`: this is no fresh install but a node pointed at
    the wrong database, or one whose database was lost. It cannot be vouched for, and
    initialising or migrating here is what must not happen next."""
    shown = ", ".join(serving[:4]) + (", ..." if len(serving) > 4 else "")
    return (
        f"not created yet, but the token holds Cofre's keys ({shown}): this database is "
        "not the one they were made with (check COFRE_DATABASE__URL, or restore the "
        "database); do not run `cofre hsm init` or start a vault against it"
    )


def cannot_vouch(report: dict[str, Any], registry: RegistryView) -> bool:
    """Whether `cofre hsm status` exits 1: a registered key in use is missing (session
    41), a mechanism the vault calls is missing or no key wrap resolved (the vault cannot
    serve on this token), or the key registry could not be read (session 42) or is not
    created yet beside a token that holds Cofre's keys (session 43; `readable`)."""
    return (
        bool(report.get("missing"))
        or not all(report["mechanisms"].values())
        or report["wrap_mechanism"] is None
        or not registry.readable
    )


def _missing(registered: dict[str, Any], listed: list[Any], engine: Any) -> list[str]:
    """The registered labels that should be on the token and are not
    (`vault.key_presence.missing_keys`), with the KEKs data keys are still stored under.
    A newest version gone leaves the one before it current (docs/threat-model.md),
    `/readyz` ready: this line (and the exit status) is what shows it here; a running
    vault names it in its ``hsm_key_presence`` readiness check (session 41)."""
    from cofre.dberrors import database_errors_as
    from vault.errors import StorageUnavailable
    from vault.key_presence import kek_labels_wrapping, missing_keys

    if not registered:
        return []
    with database_errors_as(StorageUnavailable, "the token store"), engine.connect() as c:
        wrapping = kek_labels_wrapping(c)
    return missing_keys(registered, listed, wrapping)
