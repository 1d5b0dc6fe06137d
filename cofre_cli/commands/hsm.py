"""`cofre hsm`: the PKCS#11 token and Cofre's key hierarchy on it.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

from cofre.errors import CofreError
from cofre_cli._shared import cli_settings, fail_cleanly

hsm_app = typer.Typer(
    help="The PKCS#11 token and Cofre's key hierarchy on it.", no_args_is_help=True
)


@hsm_app.command("init")
@fail_cleanly
def hsm_init() -> None:
    """Create Cofre's key hierarchy on an empty token (idempotent): KEK, fingerprint key,
    audit signing key, each audited and recorded in the key registry (run `cofre db
    migrate` first). Data keys are created by the vault and stored wrapped. Refuses to
    make a missing key again once the key registry holds keys (restore the HSM's
    backup: docs/key-ceremony.md)."""
    from cofre_cli.wiring import initialize_key_hierarchy, open_database
    from hsm.provider import provider_from_settings

    settings = cli_settings()
    # The database first: keys are never created where their creation cannot be recorded.
    engine = open_database(settings)
    provider = provider_from_settings(settings.hsm)
    created = initialize_key_hierarchy(engine, provider, actor="cofre hsm init")
    typer.echo(
        "created: " + ", ".join(created) if created else "nothing to do: the hierarchy exists"
    )


@hsm_app.command("status")
@fail_cleanly
def hsm_status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the token, the mechanisms Cofre needs (present or not) and the key inventory
    with its attributes. Never shows key material. Exit status 1 when a key the key
    registry has in use is missing from the token (the MISSING keys line, "missing" in
    --json: the newest version of each kind, every audit key, a KEK still wrapping data
    keys), 0 when every such key is present (session 41)."""
    from hsm.provider import REQUIRED_MECHANISMS, provider_from_settings

    settings = cli_settings()
    provider = provider_from_settings(settings.hsm)
    offered = provider.mechanism_ids()
    try:
        algorithm = provider.wrap_algorithm()
        wrap = f"{algorithm.value} ({provider.wrap_mechanism_name(algorithm)})"
    except CofreError:
        wrap = None
    report: dict[str, Any] = {
        "token": asdict(provider.token_info()),
        "mechanisms": {name: number in offered for name, number in REQUIRED_MECHANISMS.items()},
        "wrap_mechanism": wrap,
        "keys": [asdict(info) for info in provider.list_keys()],
        **_registry_report(settings, provider),
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_status(report)
    if report.get("missing"):
        raise typer.Exit(1)


def _print_status(report: dict[str, Any]) -> None:
    """`cofre hsm status`'s lines (scripts parse them: unchanged since session 40)."""
    wrap = report["wrap_mechanism"]
    token = report["token"]
    typer.echo(
        f"token {token['token_label']!r}: {token['manufacturer']} {token['model']}, "
        f"library {token['library']} v{token['library_version']}"
    )
    for name, present in report["mechanisms"].items():
        typer.echo(f"  mechanism {name:<24} {'present' if present else 'MISSING'}")
    typer.echo(f"  key wrap: {wrap or 'NONE'}")
    if report["unregistered"]:
        typer.echo(
            "  UNREGISTERED keys (never used; investigate and destroy): "
            + ", ".join(report["unregistered"])
        )
    if report.get("missing"):
        typer.echo(
            "  MISSING keys (registered, not on the token: restore the HSM's backup, "
            'docs/key-ceremony.md "A key missing from the token"): ' + ", ".join(report["missing"])
        )
    for key in report["keys"]:
        flags = ", ".join(
            f"{flag}={key[flag]}"
            for flag in ("sensitive", "extractable", "never_extractable")
            if key[flag] is not None
        )
        typer.echo(f"  {key['label']:<18} {key['object_class']:<12} {key['key_type']:<15} {flags}")


@hsm_app.command("selftest")
@fail_cleanly
def hsm_selftest(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    count: Annotated[
        int, typer.Option("--count", min=1, max=100_000, help="Calls per operation.")
    ] = 200,
    threads: Annotated[
        int,
        typer.Option("--threads", min=0, max=1024, help="Threads at once (0: the pool size)."),
    ] = 0,
) -> None:
    """The go-live check (docs/cloudhsm.md): create temporary keys with the production
    templates, wrap/unwrap/rewrap, HMAC and sign with them, measure each operation's
    latency and rate, destroy them. Exit status 1 when any check fails. Run it before
    `cofre hsm init`: it refuses a token that already holds Cofre's keys."""
    from hsm.provider import provider_from_settings
    from hsm.selftest import refuse_serving_token, render_table, run_selftest

    provider = provider_from_settings(cli_settings().hsm)
    try:
        refuse_serving_token(provider)
        report = run_selftest(provider, count=count, threads=threads)
    finally:
        provider.close()
    if as_json:
        typer.echo(json.dumps(report.as_json(), indent=2))
    else:
        typer.echo(render_table(report))
    if not report.passed:
        raise typer.Exit(1)


def _registry_report(settings: Any, provider: Any) -> dict[str, Any]:
    """The key registry's view: registered labels and the keys on the token that are
    not registered as they are (an empty registry is adopted at the vault's first start)."""
    from cofre_cli.key_management import own_authorities
    from cofre_cli.wiring import open_database
    from policies.engine import PolicyEngine
    from policies.loader import load_policy
    from vault.key_registry import KeyRegistry

    try:
        engine = open_database(settings)
        registry = KeyRegistry(engine, provider)
        # The officers' signed registrations count as the vault counts them (session
        # 39); without a readable policy none does, and such a label shows unregistered.
        with contextlib.suppress(CofreError, OSError):
            policy = PolicyEngine(load_policy(settings.policy_file).policy)
            names = own_authorities(settings.server.cert_file)
            registry.trust_officers(lambda: policy, names)
        registered = registry.registered()
        stray = registry.unregistered() if registered else []
        missing = _missing(registered, provider.list_keys(), engine)
    except CofreError as exc:
        return {"registry": f"unavailable ({exc.code})", "unregistered": [], "missing": []}
    return {
        "registry": "ok" if registered else "empty (adopted at the vault's first start)",
        "registered": sorted(registered),
        "unregistered": stray,
        "missing": missing,
    }


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
