"""The audit key the CLI reads and signs with: the vault's own (session 45).

IN PCI SCOPE (wiring; PCI DSS 10.3.4, the log's integrity). `cofre audit public-key`,
`vkey`, `export`, `verify` (without ``--public-key``) and `sequence` built their signer
with neither the key registry nor the handovers: "the newest ``cofre-audit-vN`` on the
token". Whoever holds the crypto-user PIN can make a key pair under a newer label that no
ceremony made; an officer then handed the auditor that key (a log rewritten and signed
with it verifies under what the auditor pinned), and `cofre audit sequence` signed heads
with it. Here the CLI builds the signer `cofre serve` builds (`cofre_cli.wiring`): the key
the newest verified handover introduced, else the newest audit key the registry records
as it is on the token, counting the officers' signed registrations as the vault counts
them (a version 2 or later is one only a ceremony makes).

Before the registry holds a key (a database with no schema, or one where neither `cofre
hsm init` nor a first start has registered the token's keys) nothing tells the vault's
key from one put on the token by hand, and the database says which case it is: a writer
who moves the SQLite file away for the length of a command, or empties the registry,
would otherwise choose the fallback (review 45, helper: the planted key printed, exit
0). So the commands refuse then (`SchemaNotCreated`, as every command does without a
schema; `KeyNotRegistered` for an empty registry), except `vkey` and `public-key`
given ``--before-first-start``: a node's witness operator pins its key before that
start, and the first start adopts the token's keys as found; they print the token's
newest audit key with a warning on stderr that it is not checked against a registry.
"""

from __future__ import annotations

import typer

from cofre.settings import Settings
from cofre_cli._opening import open_database
from cofre_cli.key_management import own_authorities
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import load_policy
from vault.errors import KeyNotRegistered, SchemaNotCreated
from vault.key_registry import KeyRegistry
from vault.signing import HSMTreeHeadSigner

__all__ = ["vault_audit_signer"]


def vault_audit_signer(
    settings: Settings, provider: HSMProvider, *, before_first_start: bool = False
) -> HSMTreeHeadSigner:
    """The signer of the vault `settings` configure, on `provider`: its database's
    handovers and key registry decide the key, as in the vault. Raises what opening the
    database or loading the policy raises (a `CofreError`: the command fails in one
    line), and, at first use, `HSMKeyNotFound` when no audit key is registered as it is
    on the token. With nothing registered, raises `SchemaNotCreated` (no schema) or
    `KeyNotRegistered` (an empty registry); with `before_first_start` it returns the
    token's newest instead, warned of on stderr (module docstring)."""
    try:
        engine = open_database(settings)
    except SchemaNotCreated:
        if not before_first_start:
            raise  # "run `cofre db migrate`": what every other command says of it
        return _unregistered(provider, "the database holds no Cofre schema", allowed=True)
    registry = KeyRegistry(engine, provider)
    policy = PolicyEngine(load_policy(settings.policy_file).policy)
    registry.trust_officers(lambda: policy, own_authorities(settings.server.cert_file))
    if not registry.registered():
        engine.dispose()
        return _unregistered(provider, "the key registry holds no key", allowed=before_first_start)
    return HSMTreeHeadSigner(provider, registry=registry, engine=engine)


def _unregistered(provider: HSMProvider, why: str, *, allowed: bool) -> HSMTreeHeadSigner:
    if not allowed:
        raise KeyNotRegistered(
            f"{why}, so the vault's audit key cannot be told from a key put on the token "
            "by hand: run this after `cofre db migrate` and `cofre hsm init` or the "
            "vault's first start (before that start, `cofre audit vkey` and `public-key` "
            "take --before-first-start)"
        )
    signer = HSMTreeHeadSigner(provider)
    typer.echo(
        f"WARNING: {why}: this is the token's newest audit key ({signer.key_id}), not "
        "checked against the vault's key registry (--before-first-start); pin it only "
        "for a node that has never started",
        err=True,
    )
    return signer
