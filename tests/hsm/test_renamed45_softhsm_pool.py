"""Session 45: SoftHSM2 under another file name is served one call at a time.

python-pkcs11 initialises a library with ``C_Initialize(NULL)``, which leaves SoftHSM2
without locking; the provider gave SoftHSM2 a pool of one session only when its file
name said ``libsofthsm2``. A renamed copy (allowed with
``COFRE_INSECURE__ALLOW_SOFTWARE_HSM``, tests/cofre_cli/test_production.py) was pooled
like CloudHSM, and two threads listing keys at once corrupted its heap: CI saw `cofre
serve` die of SIGSEGV at start, and 1 of 17 local starts aborted ("malloc(): unaligned
fastbin chunk detected", the readiness thread and the ready signal both listing keys).
Now the loaded library's ``C_GetInfo`` decides (`hsm.library.softhsm_module`): the pool
is one session from its first load, and a call that borrowed a place before that waits
for the one place. The CloudHSM-behaviour shim, which asks SoftHSM2 for OS locking,
names itself and stays pooled.

The threads run in a child process: without the fix the crash would take pytest with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cofre.settings import DEFAULT_SOFTHSM_LIBRARY
from hsm.provider import HSMProvider
from tests.support.softhsm import SoftHSMToken

_CHILD = """
import json, os, sys, threading
from pydantic import SecretStr
from cofre.settings import HSMSettings
from hsm.provider import provider_from_settings

library, conf, label = sys.argv[1:4]
pin = os.environ["COFRE_TEST_USER_PIN"]
provider = provider_from_settings(HSMSettings.model_validate({
    "library": library, "token_label": label, "pin": SecretStr(pin),
    "softhsm_conf": conf, "session_pool_size": 8,
}))
before = provider.pool_size
start = threading.Barrier(8)
failures = []

def lister():
    start.wait()
    try:
        for _ in range(150):
            provider.list_keys()
    except BaseException as exc:
        failures.append(type(exc).__name__)

threads = [threading.Thread(target=lister) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"before": before, "after": provider.pool_size, "failures": failures}))
provider.close()
"""


def _run_child(library: Path, token: SoftHSMToken) -> subprocess.CompletedProcess[str]:
    # The PIN in the environment, never on a command line.
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "COFRE_TEST_USER_PIN": token.user_pin}
    args = [str(library), str(token.conf), token.label]
    return subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def test_a_renamed_softhsm2_is_one_session_and_eight_threads_do_not_crash_it(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    renamed = tmp_path / "libvendor.so"
    shutil.copyfile(DEFAULT_SOFTHSM_LIBRARY, renamed)
    done = _run_child(renamed, softhsm_token)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    # Pooled as asked until it loads (its name says nothing), one session from then on.
    assert answer == {"before": 8, "after": 1, "failures": []}, answer


def test_the_cloudhsm_behaviour_shim_names_itself_and_stays_pooled(
    shim_provider: HSMProvider,
) -> None:
    shim_provider.list_keys()
    assert shim_provider.pool_size == 8
