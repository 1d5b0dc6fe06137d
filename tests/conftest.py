"""Session fixtures: a private SoftHSM2 token and a throwaway PostgreSQL cluster.

Both are real (no mocks of what we sell). When PostgreSQL cannot be started or reached
the fixture *fails* every test that needs it; in CI (CI=true) any skipped test fails the
run as well, so nothing that should have run can quietly not run.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import psycopg
import pytest

from hsm.keys import KeyHierarchy
from hsm.provider import HSMProvider, provider_from_settings
from hsm.softhsm import init_softhsm_token
from tests.support.cloudhsm_shim import (
    HSM_BACKENDS,
    CloudHSMShim,
    ShimBuildFailed,
    activate,
    build_shim,
)
from tests.support.databases import MIGRATED_WANTED, create_migrated
from tests.support.keyguard import shared_token_keys
from tests.support.leakguard import LeakGuard, dump_database, install_leak_guard
from tests.support.postgres import (
    PostgresCluster,
    PostgresUnavailable,
    find_bindir,
    wait_until_reachable,
)
from tests.support.softhsm import SoftHSMToken, create_token


def pytest_configure(config: pytest.Config) -> None:
    install_leak_guard(config)


@pytest.fixture(scope="session", autouse=True)
def leak_guard(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> LeakGuard:
    """The session-end PAN leak scan over everything under the base temp directory
    (tests/support/leakguard.py)."""
    return LeakGuard.of(request.config, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def softhsm_token(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SoftHSMToken]:
    """A fresh SoftHSM2 token in this session's temp dir, with Cofre's hierarchy on it."""
    token = create_token(tmp_path_factory.mktemp("softhsm"))
    watcher = provider_from_settings(token.settings())
    KeyHierarchy(watcher).initialize()
    shared_token_keys(request.config).watch("shared", watcher)
    yield token
    watcher.close()


@pytest.fixture(scope="module", autouse=True)
def shared_token_unchanged(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each module: the shared tokens hold the Cofre keys they held before it
    (tests/support/keyguard.py). A module that rotates or leaves a key there fails
    here, by name, instead of a later module failing on what it finds."""
    yield
    changes = shared_token_keys(request.config).changes()
    if changes:
        pytest.fail(
            f"{request.node.nodeid} changed the Cofre keys of a token the session shares "
            f"({'; '.join(changes)}): rotate on `rotation_provider` / "
            "`shim_rotation_provider`, or destroy what the module made",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def rotation_provider(softhsm_token: SoftHSMToken) -> Iterator[HSMProvider]:
    """A provider for the session's second token, whose keys tests may rotate away."""
    provider = provider_from_settings(
        softhsm_token.settings(token_label=softhsm_token.label + "-rot")
    )
    KeyHierarchy(provider).initialize()
    yield provider
    provider.close()


@pytest.fixture(scope="session")
def softhsm_provider(softhsm_token: SoftHSMToken) -> Iterator[HSMProvider]:
    provider = provider_from_settings(softhsm_token.settings())
    yield provider
    provider.close()


@pytest.fixture(scope="session")
def hsm_provider(softhsm_provider: HSMProvider) -> HSMProvider:
    """The session's SoftHSM2 provider. tests/hsm and tests/vault override this fixture to
    run each test against SoftHSM2 and the CloudHSM-behaviour shim."""
    return softhsm_provider


# ------------------------------------------------------------------ CloudHSM-behaviour shim
@pytest.fixture(scope="session")
def cloudhsm_shim(
    softhsm_token: SoftHSMToken, tmp_path_factory: pytest.TempPathFactory
) -> CloudHSMShim:
    """The shim (tests/support/cloudhsm_shim.c), built for this run, with two tokens of its
    own (``<label>-shim``, ``<label>-shim-rot``) that carry Cofre's hierarchy created
    through the shim. It is our reading of AWS's documentation, not CloudHSM."""
    try:
        shim = build_shim(tmp_path_factory.mktemp("cloudhsm-shim"))
    except ShimBuildFailed as exc:
        pytest.fail(f"the CloudHSM-behaviour shim could not be built: {exc}", pytrace=False)
    for suffix in ("-shim", "-shim-rot"):
        init_softhsm_token(
            softhsm_token.conf,
            softhsm_token.label + suffix,
            so_pin=softhsm_token.so_pin,
            user_pin=softhsm_token.user_pin,
        )
    activate(shim)
    return shim


def _shim_provider(token: SoftHSMToken, shim: CloudHSMShim, suffix: str) -> HSMProvider:
    provider = provider_from_settings(
        token.settings(library=shim.library, token_label=token.label + suffix)
    )
    KeyHierarchy(provider).initialize()
    return provider


@pytest.fixture(scope="session")
def shim_provider(
    request: pytest.FixtureRequest, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> Iterator[HSMProvider]:
    """A provider through the shim, on the shim's own token."""
    provider = _shim_provider(softhsm_token, cloudhsm_shim, "-shim")
    shared_token_keys(request.config).watch("shim", provider)
    yield provider
    provider.close()


@pytest.fixture(scope="session")
def shim_rotation_provider(
    softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> Iterator[HSMProvider]:
    """Through the shim, the token whose keys rotation tests may rotate away."""
    provider = _shim_provider(softhsm_token, cloudhsm_shim, "-shim-rot")
    yield provider
    provider.close()


class ExternalPostgres:
    """A server the suite did not start (COFRE_TEST_PG_DSN): never stopped by us."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.log_file: Path | None = None

    def dsn(self, dbname: str = "postgres") -> str:
        base, _, _ = self._dsn.rpartition("/")
        return f"{base}/{dbname}"

    def sqlalchemy_url(self, dbname: str = "postgres") -> str:
        return self.dsn(dbname).replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def postgres(leak_guard: LeakGuard) -> Iterator[PostgresCluster | ExternalPostgres]:
    """The suite's PostgreSQL server: started here unless COFRE_TEST_PG_DSN names one."""
    external = os.environ.get("COFRE_TEST_PG_DSN")
    try:
        if external:
            wait_until_reachable(external, timeout_s=5)
            yield ExternalPostgres(external)
            return
        cluster = PostgresCluster.create()
        cluster.start()
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL is required and could not be used: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.keep_log(leak_guard.dumps)
        cluster.destroy()


@pytest.fixture
def migrated_database(request: pytest.FixtureRequest) -> None:
    """Asked for before `database_url` by an `engine` fixture whose database is migrated
    (`migrated_engine`): `pg_database` then makes it a copy of the migrated template at
    once. Only a saving: a database made before (empty) is copied over as before."""
    request.node.stash[MIGRATED_WANTED] = True


@pytest.fixture
def pg_database(
    request: pytest.FixtureRequest,
    postgres: PostgresCluster | ExternalPostgres,
    leak_guard: LeakGuard,
) -> Iterator[str]:
    """A fresh, empty database on the suite's server; yields its SQLAlchemy URL. It is
    dumped for the session's leak scan before it is dropped. Asked for after
    `migrated_database` (an `engine` fixture that migrates it), a copy of the migrated
    template at once: made empty, then dropped for the copy, it cost ~0.1-0.3 s of each
    of ~1,300 tests (session 47)."""
    name = f"t_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(postgres.dsn(), autocommit=True, connect_timeout=5) as conn:
            if request.node.stash.get(MIGRATED_WANTED, False):
                create_migrated(conn, postgres.sqlalchemy_url(name))
            else:
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL stopped answering: {exc}", pytrace=False)
    yield postgres.sqlalchemy_url(name)
    try:
        dump_database(postgres.dsn(), name, find_bindir(), leak_guard.dumps)
        with psycopg.connect(postgres.dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.OperationalError:
        pass  # the test under way already failed on it, or the server is gone at teardown


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against the embedded SQLite store and the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cofre.sqlite3'}"
    url: str = request.getfixturevalue("pg_database")
    return url


# ------------------------------------------------------------------ no silent skips in CI
_SKIPPED: list[str] = []


# Markers come from what a test uses, so `pytest -m "not postgres and not hsm"` is the
# fast subset without anyone remembering to mark a test (fixturenames is the whole
# closure of a test's fixtures; `database_url` picks PostgreSQL by parameter, and a test
# parametrised over `HSM_BACKENDS` reaches its provider through `getfixturevalue`, which
# no closure shows).
_POSTGRES_FIXTURES: Final = frozenset({"postgres", "pg_database", "durable_postgres"})
_HSM_FIXTURES: Final = frozenset(
    {
        "softhsm_token",
        "softhsm_provider",
        "hsm_provider",
        "rotation_provider",
        "cloudhsm_shim",
        "shim_provider",
        "shim_rotation_provider",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        on_postgres = params.get("database_url") == "postgresql"
        on_hsm = any(isinstance(v, str) and v in HSM_BACKENDS for v in params.values())
        if names & _POSTGRES_FIXTURES or on_postgres:
            item.add_marker(pytest.mark.postgres)
        if names & _HSM_FIXTURES or on_hsm:
            item.add_marker(pytest.mark.hsm)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") and _SKIPPED and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.environ.get("CI") and _SKIPPED:
        terminalreporter.write_line(
            f"CI=true and {len(_SKIPPED)} test(s) skipped: the run fails. "
            "In CI everything must run: " + ", ".join(_SKIPPED[:10]),
            red=True,
        )
