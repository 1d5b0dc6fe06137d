"""`cofre db`: the database schema. Only `migrate` changes it (run it as the owner
role, e.g. from the Kubernetes migration Job); `status` only reads.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import typer

from cofre_cli._shared import cli_settings, fail_cleanly

db_app = typer.Typer(
    help="The database schema: migrate (owner role), status.", no_args_is_help=True
)


@db_app.command("migrate")
@fail_cleanly
def db_migrate() -> None:
    """Bring the database schema to this version's newest revision. Run it as the owner
    role before starting new vault versions; concurrent runs wait for each other."""
    from cofre_cli._opening import database_engine, refuse_unverified_owner_database
    from vault.storage.schema_version import migrate

    settings = cli_settings()
    refuse_unverified_owner_database(settings)  # the owner's password (atk49h)
    engine = database_engine(settings, pool_size=1)
    try:
        status = migrate(engine)
    finally:
        engine.dispose()
    if status.newer_but_compatible:
        typer.echo(
            f"schema at revision {status.current}, newer than this version's {status.head} "
            "and declared compatible with it: nothing to do"
        )
    elif status.current == status.head:
        typer.echo(f"schema at revision {status.head}: nothing to do")
    else:
        typer.echo(f"migrated the schema from {status.current or 'empty'} to {status.head}")


@db_app.command("status")
@fail_cleanly
def db_status() -> None:
    """Show the schema revision of the database and whether this version can use it
    (exit 1 when it cannot). Changes nothing."""
    from cofre_cli._existing_store import require_existing_store
    from cofre_cli._opening import database_engine
    from vault.storage.schema_version import check_schema

    settings = cli_settings()
    require_existing_store(settings)  # reading the status creates no database
    engine = database_engine(settings, pool_size=1)
    try:
        status = check_schema(engine)
    finally:
        engine.dispose()
    note = " (newer, declared compatible with this version)" if status.newer_but_compatible else ""
    typer.echo(f"schema at revision {status.current}{note}; this version's newest is {status.head}")
