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

Before the registry holds a key (a database not migrated yet, or migrated but neither
`cofre hsm init` nor a first start has registered the token's keys), the key is the
token's newest, as before: it is the one the vault's first start adopts as found, and a
witness operator pins `cofre audit vkey` before that start (docs/operations.md).
"""

from __future__ import annotations

from cofre.settings import Settings
from cofre_cli.key_management import own_authorities
from cofre_cli.wiring import open_database
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import load_policy
from vault.errors import SchemaNotCreated
from vault.key_registry import KeyRegistry
from vault.signing import HSMTreeHeadSigner

__all__ = ["vault_audit_signer"]


def vault_audit_signer(settings: Settings, provider: HSMProvider) -> HSMTreeHeadSigner:
    """The signer of the vault `settings` configure, on `provider`: its database's
    handovers and key registry decide the key, as in the vault. Raises what opening the
    database or loading the policy raises (a `CofreError`: the command fails in one
    line), and, at first use, `HSMKeyNotFound` when no audit key is registered as it is
    on the token. With nothing registered yet, the token's newest (module docstring)."""
    try:
        engine = open_database(settings)
    except SchemaNotCreated:
        return HSMTreeHeadSigner(provider)  # nothing registered yet: the token's newest
    registry = KeyRegistry(engine, provider)
    policy = PolicyEngine(load_policy(settings.policy_file).policy)
    registry.trust_officers(lambda: policy, own_authorities(settings.server.cert_file))
    if not registry.registered():
        engine.dispose()
        return HSMTreeHeadSigner(provider)
    return HSMTreeHeadSigner(provider, registry=registry, engine=engine)
