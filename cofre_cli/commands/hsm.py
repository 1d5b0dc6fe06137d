"""`cofre hsm`: the PKCS#11 token and Cofre's key hierarchy on it.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

from cofre.errors import CofreError
from cofre_cli._hsm_registry import cannot_vouch, registry_report
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
    from cofre_cli._opening import initialize_key_hierarchy, open_database
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
    keys; session 41), when a mechanism Cofre calls is MISSING (or the key wrap is NONE),
    or when the key registry cannot be read (a "registry: unavailable (<code>)" line,
    "registry" in --json; session 42), or when the database holds no Cofre schema while
    the token holds Cofre's keys (the wrong database, or a lost one: a "registry: not
    created yet, but the token holds Cofre's keys" line; session 43); 0 when every such
    key is present, every mechanism too, and the registry was read, is empty, or is not
    created yet beside a token with no Cofre key (a fresh database before `cofre db
    migrate`: a "registry: not created yet" line says what to run). An HSM that cannot
    be reached: exit 1 with "error [<code>]"."""
    from hsm.provider import REQUIRED_MECHANISMS, provider_from_settings

    settings = cli_settings()
    provider = provider_from_settings(settings.hsm)
    offered = provider.mechanism_ids()
    try:
        algorithm = provider.wrap_algorithm()
        wrap = f"{algorithm.value} ({provider.wrap_mechanism_name(algorithm)})"
    except CofreError:
        wrap = None
    registry = registry_report(settings, provider)
    report: dict[str, Any] = {
        "token": asdict(provider.token_info()),
        "mechanisms": {name: number in offered for name, number in REQUIRED_MECHANISMS.items()},
        "wrap_mechanism": wrap,
        "keys": [asdict(info) for info in provider.list_keys()],
        **registry.fields,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_status(report, registry.line)
    if cannot_vouch(report, registry):
        raise typer.Exit(1)


def _print_status(report: dict[str, Any], registry_line: str | None) -> None:
    """`cofre hsm status`'s lines (scripts parse them: unchanged since session 40, but
    for the `registry:` line session 42 added, printed only when the key registry cannot
    be read or is not created yet)."""
    wrap = report["wrap_mechanism"]
    token = report["token"]
    typer.echo(
        f"token {token['token_label']!r}: {token['manufacturer']} {token['model']}, "
        f"library {token['library']} v{token['library_version']}"
    )
    for name, present in report["mechanisms"].items():
        typer.echo(f"  mechanism {name:<24} {'present' if present else 'MISSING'}")
    typer.echo(f"  key wrap: {wrap or 'NONE'}")
    if registry_line is not None:
        typer.echo(registry_line)
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
