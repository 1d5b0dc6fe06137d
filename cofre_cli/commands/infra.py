"""`cofre infra`: the PCI VPC and the CloudHSM cluster on AWS (plan, apply, verify, destroy).

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cofre.errors import ConfigurationError
from cofre_cli._shared import fail_cleanly

infra_app = typer.Typer(
    help="The PCI VPC and the CloudHSM cluster on AWS (boto3): plan, apply, verify, destroy.",
    no_args_is_help=True,
)


InfraConfig = Annotated[
    Path | None,
    typer.Option("--config", help="TOML declaration of the environment (else COFRE_INFRA_*)."),
]


def _infra(config: Path | None) -> Any:
    from infra_pci.aws import AwsClients
    from infra_pci.model import PciEnvironment
    from infra_pci.provision import PciProvisioner

    try:
        env = PciEnvironment.load(config)
    except ValueError as exc:
        raise ConfigurationError(f"invalid infra declaration: {exc}") from None
    return PciProvisioner(env, AwsClients.for_region(env.region))


@infra_app.command("plan")
@fail_cleanly
def infra_plan(config: InfraConfig = None) -> None:
    """Show what `apply` would create (+) and what exists (=); changes nothing."""
    changes = _infra(config).plan()
    for change in changes:
        typer.echo(str(change))
    todo = sum(1 for c in changes if c.action == "+")
    typer.echo(f"{todo} to create" if todo else "no changes: the environment is as declared")


@infra_app.command("apply")
@fail_cleanly
def infra_apply(config: InfraConfig = None) -> None:
    """Create what is missing (idempotent; every resource is tagged cofre:managed)."""
    changes, next_steps = _infra(config).apply()
    for change in changes:
        typer.echo(str(change))
    typer.echo(f"created {len(changes)}" if changes else "no changes")
    if next_steps:
        typer.echo("\nManual steps AWS leaves to you (docs/cloudhsm.md):")
        for number, step in enumerate(next_steps, 1):
            typer.echo(f"  {number}. {step}")


@infra_app.command("verify")
@fail_cleanly
def infra_verify(config: InfraConfig = None) -> None:
    """Read the live account and check the PCI rules; exit 1 naming each broken rule."""
    from infra_pci.verify import verify

    provisioner = _infra(config)
    findings = verify(provisioner.env, provisioner.clients)
    for finding in findings:
        typer.echo(str(finding))
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


@infra_app.command("destroy")
@fail_cleanly
def infra_destroy(
    config: InfraConfig = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Do it (without: show what would go).")
    ] = False,
) -> None:
    """Delete every resource tagged for this environment, and nothing else."""
    provisioner = _infra(config)
    if not yes:
        typer.echo("would delete (run again with --yes):")
        for change in provisioner.plan():
            if change.action == "=":
                typer.echo(f"- {change.kind:<16} {change.name}")
        return
    for change in provisioner.destroy():
        typer.echo(str(change))
