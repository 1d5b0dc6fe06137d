"""`cofre tokens`: the token lifecycle.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import typer

from cofre_cli._shared import cli_settings, fail_cleanly

tokens_app = typer.Typer(help="Token lifecycle: purge expired tokens.", no_args_is_help=True)


@tokens_app.command("purge")
@fail_cleanly
def tokens_purge() -> None:
    """Crypto-shred every expired token now (each one audited). Every running node also
    does this by itself every `COFRE_TOKENS__PURGE_INTERVAL_SECONDS`, one at a time."""
    from cofre_cli.wiring import open_database, open_hsm
    from policies.engine import PolicyEngine
    from policies.loader import load_policy
    from vault.service import VaultService

    settings = cli_settings()
    engine = open_database(settings)
    provider = open_hsm(settings)
    policy = PolicyEngine(load_policy(settings.policy_file).policy)
    service = VaultService(engine, provider, policy, group_commit=False)
    try:
        count = service.purge_expired(actor="cofre tokens purge")
    finally:
        service.close()
        provider.close()
        engine.dispose()
    typer.echo(f"purged {count} expired tokens")
