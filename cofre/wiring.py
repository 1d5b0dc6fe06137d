"""Building the runtime objects from settings: database engine, HSM provider, signer.

IN PCI SCOPE (wiring). The only place outside `vault` that constructs `hsm` objects,
next to the CLI (import-linter allows the top layer to import every package).
"""

from __future__ import annotations

from sqlalchemy import Engine

from cofre.settings import Settings
from hsm.keys import KeyHierarchy, KeyKind
from hsm.provider import HSMProvider, provider_from_settings
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import create_database_engine, migrate


def open_database(settings: Settings, *, run_migrations: bool = True) -> Engine:
    """Return an engine for the configured store, migrated to the newest schema."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = create_database_engine(settings.database_url, pool_size=settings.database.pool_size)
    if run_migrations:
        migrate(engine)
    return engine


def open_hsm(settings: Settings) -> HSMProvider:
    return provider_from_settings(settings.hsm)


def audit_signer(provider: HSMProvider) -> HSMTreeHeadSigner:
    """The current audit signing key of the token, as a tree-head signer."""
    return HSMTreeHeadSigner(provider, KeyHierarchy(provider).current_label(KeyKind.AUDIT))
