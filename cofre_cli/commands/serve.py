"""`cofre dev` and `cofre serve`: run the vault (development and production).

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, Any, Final

import typer

from cofre.settings import Settings
from cofre_cli._shared import cli_settings, fail_cleanly

# What the vault creates is its own: the store, the policy, the dev token and PKI, an
# export's staging files. Review 41: `cofre dev` made them with the shell's umask (0644)
# and its next step warned of "permissions tightened" on files it had just written.
PRIVATE_UMASK: Final = 0o077

_WORKERS = typer.Option(
    "--workers",
    min=1,
    help="Worker processes sharing the port (default: COFRE_SERVER__WORKERS, else one "
    "per CPU core).",
    show_default=False,
)


@fail_cleanly
def dev_command(
    data_dir: Annotated[
        Path,
        typer.Option(help="Where the dev token, database and PKI live.", envvar="COFRE_DATA_DIR"),
    ] = Path(".cofre-dev"),
    check: Annotated[
        bool, typer.Option("--check", help="Set up and check readiness, then exit.")
    ] = False,
    port: Annotated[
        int,
        typer.Option(
            help="The mTLS port (written to the dev cofre.toml).", envvar="COFRE_SERVER__PORT"
        ),
    ] = 8443,
    workers: Annotated[int | None, _WORKERS] = None,
) -> None:
    """Run the development vault: a SoftHSM2 token with Cofre's key hierarchy, the
    embedded SQLite store, a dev PKI and a sample policy, all created on first run in
    DATA_DIR; then serve the API on https://127.0.0.1:8443. `make run` calls this."""
    from api.pki import DevPKI
    from cofre_cli._opening import database_engine, initialize_key_hierarchy, open_database
    from cofre_cli.devenv import dev_settings, ensure_dev_environment
    from cofre_cli.serving import serve
    from cofre_cli.wiring import build_runtime
    from hsm.provider import provider_from_settings
    from policies.loader import load_policy

    os.umask(PRIVATE_UMASK)
    env = ensure_dev_environment(data_dir, port=port)
    typer.echo(("created" if env.created else "reusing") + f" dev environment in {env.data_dir}")
    settings = with_workers(dev_settings(env), workers)
    # An edited policy that does not load fails here, before the banner says the vault
    # listens (it never would: the workers refuse it too).
    load_policy(settings.policy_file)
    provider = provider_from_settings(settings.hsm)
    # A laptop convenience: `cofre dev` migrates whatever database it is given.
    engine = open_database(settings, run_migrations=True)
    created = initialize_key_hierarchy(engine, provider, actor="cofre dev")
    if created:
        typer.echo("created keys on the token: " + ", ".join(created))
    if check:
        runtime = build_runtime(settings, provider=provider)
        try:
            checks = runtime.service.check_ready()
        finally:
            runtime.close()
        typer.echo("ready: " + ", ".join(f"{k} {v}" for k, v in checks.items()))
        typer.echo(f"config: COFRE_CONFIG={env.config_file}")
        return
    # Until the vault's own signal handling takes over (`serve`), a SIGTERM would end
    # this process by its default action, past the `finally` that stops the witness:
    # the witness was left running (session 33). As SystemExit, the `finally` runs.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    witness = _start_witness(env.data_dir, settings, provider)
    # From here on the witness runs: every way out stops it (a SIGTERM while the
    # banner is printed or the handovers are pinned too, review of session 33).
    try:
        # Dev plays the witness operator too: it pins the key each audit key rotation hands
        # over to (a production witness's operator does, out of band: docs/key-ceremony.md).
        witness.pin_handovers_from(database_engine(settings))
        provider.close()
        # Now with the witness in COFRE_AUDIT__WITNESSES, and still the `--workers` asked for.
        settings = with_workers(dev_settings(env), workers)
        pki = DevPKI(env.data_dir / "pki")
        rel = _relative(pki.root)
        # A well-known test card number, assembled here so no source file carries one.
        test_pan = "4111" + "1" * 12
        address = f"https://{settings.server.host}:{settings.server.port}"
        typer.echo(f"starting the vault on {address}; it says when it answers")
        banner = (
            # Printed once every worker answers (`cofre_cli._ready_signal`): the call
            # pasted the moment it appears works (sessions 38 and 39).
            f"\nThe vault listens on {address}; tokenize a "
            "test card as the 'payments' service:\n\n"
            f"  curl --cacert {rel}/ca.pem --cert {rel}/clients/payments.pem "
            f"--key {rel}/clients/payments-key.pem \\\n"
            "    -H 'content-type: application/json' "
            f'-d \'{{"pan": "{test_pan}", "format": "pan_bin6_last4"}}\' \\\n'
            f"    https://{settings.server.host}:{settings.server.port}/v1/tokenize\n\n"
            f"Hosted card fields for a shop page (docs/capture.md): the capture listener is "
            f"{settings.capture.origin()}.\n"
            f"Other identities' certificates are in {rel}/clients/; the policy is "
            f"{_relative(env.data_dir / 'policy.toml')}. Ctrl-C stops the vault.\n\n"
            f"A local witness ({witness.url}, key {_relative(witness.directory)}/witness.vkey) "
            "cosigns every signed tree head; check the log as an auditor would with\n"
            f"  {_config_prefix(env.config_file)}cofre audit verify "
            f"--witness-key {_relative(witness.directory)}/witness.vkey\n"
        )
        serve(
            settings,
            migrate_schema=True,
            production=False,
            on_ready=lambda: typer.echo(banner),
        )
    finally:
        witness.stop()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _start_witness(data_dir: Path, settings: Any, provider: Any) -> Any:
    """Start the dev witness trusting this vault's audit key (`cofre_cli.devwitness`)."""
    from audit.heads import log_origin, log_verifier_key
    from cofre_cli._audit_key import vault_audit_signer
    from cofre_cli.devwitness import start_dev_witness

    pem = vault_audit_signer(settings, provider).public_key_pem()
    vkey = log_verifier_key(log_origin(settings.audit.log_id), pem).encode()
    return start_dev_witness(data_dir, vkey)


def _config_prefix(config_file: Path) -> str:
    """``COFRE_CONFIG=...`` for a command to run beside this vault, unless the CLI finds
    its configuration by itself (`cofre_cli._shared.DEV_CONFIG` from here). Review 41:
    with another ``--data-dir`` the printed command checked the default vault's log."""
    from cofre_cli._shared import DEV_CONFIG

    if DEV_CONFIG.is_file() and DEV_CONFIG.resolve() == config_file.resolve():
        return ""
    return f"COFRE_CONFIG={_relative(config_file)} "


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@fail_cleanly
def serve_command(workers: Annotated[int | None, _WORKERS] = None) -> None:
    """Run the vault API over mutual TLS with the configured settings (production: it
    refuses SQLite, a missing or empty policy, the dev PKI and SoftHSM2 unless
    COFRE_INSECURE__* allows them, and never migrates the schema: run `cofre db migrate` first)."""
    from cofre_cli.serving import serve
    from cofre_cli.stopping import leave_process

    os.umask(PRIVATE_UMASK)
    serve(with_workers(cli_settings(), workers))
    # Stopped cleanly (a failed node raised above): a single worker's stuck request
    # threads must not hold the exit (`leave_process`); the supervisor has none.
    leave_process(0)


def with_workers(settings: Settings, workers: int | None) -> Settings:
    """`settings` with ``server.workers`` set to `workers` (None: as configured)."""
    if workers is None:
        return settings
    server = settings.server.model_copy(update={"workers": workers})
    return settings.model_copy(update={"server": server})
