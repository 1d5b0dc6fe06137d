"""A command that only reads opens the store that exists; it never creates one.

IN PCI SCOPE (wiring). SQLite creates the database file a connection names, and the
data directory was made before it: `cofre audit head` or `cofre db status` run
outside a checkout left an empty ``./.cofre-dev/cofre.sqlite3`` behind (session 39).
Only the commands that migrate (`cofre db migrate`, `cofre dev`) create the store.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from cofre.settings import Settings
from vault.errors import SchemaNotCreated


def require_existing_store(settings: Settings) -> None:
    """Return when the configured store is not a SQLite file, or that file exists;
    raise `SchemaNotCreated` naming the missing file (and what creates it) otherwise."""
    url = make_url(settings.database_url)
    database = url.database
    if not url.drivername.startswith("sqlite") or not database:
        return
    if database == ":memory:" or database.startswith("file:"):
        return
    if not Path(database).is_file():
        raise SchemaNotCreated(
            f"the database has no Cofre schema: there is no database at {database} "
            "(nothing created); run `cofre db migrate` as the owner role to create it"
        )
