"""Opening the configured database and HSM, and making the first key hierarchy: what the
CLI's commands other than `serve` need, without the API, relay and service imports
`cofre_cli.wiring` brings in (about a second of every such command's start).

IN PCI SCOPE (wiring). With `cofre_cli.wiring`, the only place outside `vault` that
constructs `hsm` objects.
"""

from __future__ import annotations

import structlog
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from audit.log import AuditEvent, AuditLog, Outcome
from cofre.errors import CofreError, ConfigurationError
from cofre.settings import Settings
from cofre_cli._existing_store import require_existing_store
from hsm.keys import KeyHierarchy, KeyKind
from hsm.provider import HSMProvider, provider_from_settings
from vault.key_registry import KeyRegistry
from vault.storage.database import create_database_engine
from vault.storage.schema_version import check_schema, migrate

_log = structlog.get_logger("cofre.vault")


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def refuse_unverified_owner_database(settings: Settings) -> None:
    """Raise `ConfigurationError` when the configured URL reaches a PostgreSQL server
    over the network without verifying it: the check `cofre serve` runs in production
    (`cofre_cli._database_tls.unverified_database`), for the commands run with the
    owner role's URL and password (`cofre db migrate`, `cofre audit retire`: the
    migration Job and the retirement CronJob). Before atk49h they connected to whatever
    the URL named, and with psycopg's default `sslmode=prefer` a server answering in the
    database's place could ask for the owner's password in clear. Loopback and a Unix
    socket are no network path (development); no allowance, as for `serve`."""
    from cofre_cli._database_tls import unverified_database

    unverified = unverified_database(settings.database_url)
    if unverified is not None:
        raise ConfigurationError(f"refusing the owner role's database: {unverified}")


def database_engine(settings: Settings, *, pool_size: int | None = None) -> Engine:
    """An engine for the configured store: URL and password from settings or their
    files, or an RDS IAM token per new connection (`COFRE_DATABASE__IAM_AUTH`)."""
    database = settings.database
    url = settings.database_url
    if database.url is None and database.url_file is None:
        # The default store is a file in the data directory. `cofre db migrate` and
        # `db status` come here without `open_database`, so on a fresh machine SQLite
        # could not create the file and the command failed with a bare OperationalError.
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    password_provider = None
    if database.iam_auth:
        from infra_pci.rds_auth import rds_auth_token_provider

        parsed = make_url(url)
        if database.iam_region is None or parsed.host is None or parsed.username is None:
            raise ConfigurationError(
                "RDS IAM authentication needs COFRE_DATABASE__IAM_REGION and a URL naming "
                "the host and the user"
            )
        # libpq connects to a `host`/`hostaddr` in the query over the URL's own host:
        # the token would be minted for one server and sent, unverified past the
        # loopback exception below, to another (the attack review).
        if overrides := sorted({"host", "hostaddr"} & set(parsed.query)):
            raise ConfigurationError(
                "RDS IAM authentication: name the database host in the URL itself, "
                f"not in its query ({', '.join(overrides)})"
            )
        # The token is a bearer credential for 15 minutes: sent over a connection whose
        # server is not verified (psycopg's default sslmode is "prefer"), anyone in the
        # path could take it (the infra review). Loopback is the development exception.
        if parsed.query.get("sslmode") != "verify-full" and parsed.host not in _LOOPBACK:
            raise ConfigurationError(
                "RDS IAM authentication sends a bearer token: the database URL must say "
                "sslmode=verify-full (and sslrootcert=<the RDS CA bundle>)"
            )
        password_provider = rds_auth_token_provider(
            parsed.host, parsed.port or 5432, parsed.username, database.iam_region
        )
    return create_database_engine(
        url,
        pool_size=pool_size or database.pool_size,
        statement_timeout_ms=database.statement_timeout_ms,
        password_provider=password_provider,
    )


def open_database(settings: Settings, *, run_migrations: bool = False) -> Engine:
    """Return an engine for the configured store.

    With `run_migrations` (`cofre dev`, `cofre db migrate`, tests) the schema is first
    brought to the newest revision under the migration lock; otherwise it is only
    checked, and `SchemaMismatch` is raised for a schema this code cannot use (so the
    vault and the read-only commands run as the least-privileged role); a missing
    SQLite file is not created then (`cofre_cli._existing_store`).
    """
    if not run_migrations:
        require_existing_store(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = database_engine(settings)
    try:
        if run_migrations:
            migrate(engine)
        else:
            status = check_schema(engine)
            if status.newer_but_compatible:
                _log.warning(
                    "newer database schema, declared compatible with this version",
                    schema=status.current,
                    code_head=status.head,
                )
    except CofreError:
        engine.dispose()
        raise
    return engine


def open_hsm(settings: Settings) -> HSMProvider:
    return provider_from_settings(settings.hsm)


def initialize_key_hierarchy(engine: Engine, provider: HSMProvider, *, actor: str) -> list[str]:
    """Make version 1 of each kind the token lacks and record it (`record_key_creation`);
    return the labels made. Raises `HSMKeyNotFound`, making nothing, when the key
    registry already holds keys: version 1 is made only at the log's first start
    (`KeyRegistry.refuse_version_one_after_first_start`)."""
    hierarchy = KeyHierarchy(provider)
    missing = [kind for kind in KeyKind if not hierarchy.versions(kind)]
    KeyRegistry(engine, provider).refuse_version_one_after_first_start(missing)
    created = hierarchy.initialize()
    record_key_creation(engine, provider, created, actor=actor)
    return created


def record_key_creation(
    engine: Engine, provider: HSMProvider, labels: list[str], *, actor: str
) -> None:
    """Record keys just created on the token: a `key.create` audit entry each and their
    registration in the key registry (label, CKA_ID, check value), in one transaction."""
    if not labels:
        return
    log = AuditLog()
    registry = KeyRegistry(engine, provider, log)
    with engine.begin() as connection:
        for label in labels:
            log.append(
                connection,
                AuditEvent(action="key.create", outcome=Outcome.SUCCESS, actor=actor, key_id=label),
            )
            registry.register(connection, label, actor=actor, how=actor)
