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
    """Crypto-shred every expired token now (each one audited) and forget idempotency
    keys older than `COFRE_TOKENS__IDEMPOTENCY_KEY_TTL_HOURS`. Every running node also
    does this by itself every `COFRE_TOKENS__PURGE_INTERVAL_SECONDS`, one at a time."""
    from datetime import timedelta

    from cofre_cli._opening import open_database, open_hsm
    from policies.engine import PolicyEngine
    from policies.loader import load_policy
    from vault.service import VaultService

    settings = cli_settings()
    engine = open_database(settings)
    provider = open_hsm(settings)
    policy = PolicyEngine(load_policy(settings.policy_file).policy)
    window = timedelta(hours=settings.tokens.idempotency_key_ttl_hours)
    service = VaultService(engine, provider, policy, group_commit=False, idempotency_window=window)
    try:
        count = service.purge_expired(actor="cofre tokens purge")
    finally:
        service.close()
        provider.close()
        engine.dispose()
    typer.echo(f"purged {count} expired tokens")
