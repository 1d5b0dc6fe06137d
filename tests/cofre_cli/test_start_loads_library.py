"""A restarted worker loads the PKCS#11 library before it listens, as a first start does.

A worker waits, up to ``COFRE_HSM__INIT_TIMEOUT_SECONDS``, for its start's key adoption
(`cofre_cli.wiring._record_start`) before it listens. On a first start the adoption
lists the token's keys, so the library is loaded by then; on every later start the key
registry is already filled, the adoption touched no HSM, and the worker listened with
the library not loaded yet. Its first readiness check then handed the load to a
background thread and waited only 0.5 s for it (`hsm._readiness`): on a busy host
(`make run` the second time, on the project's 2-core machine) SoftHSM2 took longer, and
every restart logged ``background loop failing`` for ``node readiness`` with "PKCS#11
library not answering: C_Initialize … has not returned (its HSM or cluster may be
unreachable)", followed by ``background loop recovered`` two seconds later: a false HSM
alarm for the on-call engineer at each restart."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cofre.settings import Settings
from cofre_cli._opening import open_database
from cofre_cli.wiring import _record_start
from hsm.provider import provider_from_settings
from policies.engine import PolicyEngine
from policies.loader import load_policy
from tests.support.softhsm import SoftHSMToken
from vault.service import VaultService


def test_a_restart_loads_the_library_before_the_worker_listens(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    settings = Settings(data_dir=tmp_path, hsm=softhsm_token.settings())
    engine = open_database(settings, run_migrations=True)
    loaded = load_policy(None)
    try:
        for start in ("first", "restart"):
            provider = provider_from_settings(softhsm_token.settings())
            service = VaultService(
                engine, provider, PolicyEngine(loaded.policy), idempotency_window=timedelta(hours=1)
            )
            try:
                _record_start(service, provider, loaded, settings)
                # Private, read on purpose: whether the library is loaded is what the
                # first readiness check depends on, and nothing public says it without
                # loading it.
                assert provider._lib is not None, f"{start}: the library was not loaded"
            finally:
                service.close()
                provider.close()
    finally:
        engine.dispose()
