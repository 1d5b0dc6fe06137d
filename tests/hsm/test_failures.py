"""Misconfiguration and failures map to our errors, with no PIN in any message; the
provider recovers on its own when the session goes away."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from hsm.errors import HSMAuthFailed, HSMUnavailable
from hsm.provider import HSMProvider
from tests.support.softhsm import SoftHSMToken, settled_health_check

WRONG_PIN_PROBE = """
import sys
from pathlib import Path
from pydantic import SecretStr
from hsm.provider import HSMProvider
from hsm.errors import HSMError
from tests.support.softhsm import settled_health_check
p = HSMProvider(Path(sys.argv[1]), sys.argv[2], SecretStr(sys.stdin.read()), Path(sys.argv[3]))
try:
    settled_health_check(p)
except HSMError as exc:
    print(type(exc).__name__, exc.code, exc, sep="|")
else:
    print("no error")
"""


def test_wrong_pin(softhsm_token: SoftHSMToken) -> None:
    # Login is per process: this process is already logged in to the token, so the wrong
    # PIN is tried in a fresh process, as a second vault node would.
    wrong = "wrong-pin-" + softhsm_token.user_pin[:4] + "x7"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            WRONG_PIN_PROBE,
            str(softhsm_token.library),
            softhsm_token.label,
            str(softhsm_token.conf),
        ],
        input=wrong,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    name, code, message = result.stdout.strip().split("|")
    assert name == "HSMAuthFailed"
    assert code == "hsm_unavailable"
    assert softhsm_token.label in message
    assert wrong not in result.stdout + result.stderr
    assert softhsm_token.user_pin not in result.stdout + result.stderr
    assert issubclass(HSMAuthFailed, HSMUnavailable)


def test_missing_library(softhsm_token: SoftHSMToken) -> None:
    provider = HSMProvider(
        Path("/nonexistent/libpkcs11.so"), softhsm_token.label, SecretStr(softhsm_token.user_pin)
    )
    with pytest.raises(HSMUnavailable, match="library not found") as info:
        settled_health_check(provider)
    assert softhsm_token.user_pin not in str(info.value)


def test_not_a_library(softhsm_token: SoftHSMToken, tmp_path: Path) -> None:
    fake = tmp_path / "libfake.so"
    fake.write_bytes(b"not an ELF file")
    provider = HSMProvider(fake, softhsm_token.label, SecretStr(softhsm_token.user_pin))
    with pytest.raises(HSMUnavailable, match="cannot load"):
        settled_health_check(provider)


def test_missing_token(softhsm_token: SoftHSMToken, hsm_provider: HSMProvider) -> None:
    provider = HSMProvider(
        softhsm_token.library, "no-such-token", SecretStr(softhsm_token.user_pin)
    )
    with pytest.raises(HSMUnavailable, match="no token labelled 'no-such-token'") as info:
        provider.hmac_sha256("cofre-fp-v1", b"x")
    assert softhsm_token.user_pin not in str(info.value)


def test_closed_session_recovers(hsm_provider: HSMProvider) -> None:
    expected = hsm_provider.hmac_sha256("cofre-fp-v1", b"recover")
    # Close the sessions behind the provider's back, as a token reset would.
    for pooled in list(hsm_provider._idle):
        pooled.session.close()
    assert hsm_provider.hmac_sha256("cofre-fp-v1", b"recover") == expected


def test_closed_session_under_running_pool_recovers(hsm_provider: HSMProvider) -> None:
    expected = hsm_provider.hmac_sha256("cofre-fp-v1", b"busy")
    stop = threading.Event()
    errors: list[BaseException] = []
    results: list[bytes] = []

    def worker() -> None:
        while not stop.is_set():
            try:
                results.append(hsm_provider.hmac_sha256("cofre-fp-v1", b"busy"))
            except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            time.sleep(0.05)
            # Between calls (SoftHSM2 must not see two threads at once), close every
            # session behind the provider's back.
            with hsm_provider._exclusive():
                for pooled in list(hsm_provider._idle):
                    pooled.session.close()
    finally:
        time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert results
    assert set(results) == {expected}


def test_holding_the_pool_alone_waits_for_calls_and_keeps_new_ones_out(
    hsm_provider: HSMProvider,
) -> None:
    # What re-initialising the library and close() rely on: the pool's own condition
    # (once a separate gate) waits for the call in flight and holds later calls back.
    order: list[str] = []
    inside, release, alone, leave = (threading.Event() for _ in range(4))

    def slow_call(session: object) -> None:
        inside.set()
        assert release.wait(10)
        order.append("call")

    def hold() -> None:
        with hsm_provider._exclusive():
            order.append("alone")
            alone.set()
            assert leave.wait(10)

    later: list[bytes] = []
    caller = threading.Thread(target=lambda: hsm_provider._run(slow_call))
    holder = threading.Thread(target=hold)
    latecomer = threading.Thread(
        target=lambda: later.append(hsm_provider.hmac_sha256("cofre-fp-v1", b"late"))
    )
    caller.start()
    assert inside.wait(10)
    holder.start()
    holder.join(0.2)  # it must still be waiting, however long this waits
    assert order == []
    release.set()
    assert alone.wait(10)
    assert order == ["call", "alone"]
    latecomer.start()
    latecomer.join(0.2)  # held back while the pool is held alone
    assert later == []
    leave.set()
    for thread in (caller, holder, latecomer):
        thread.join(10)
    assert later == [hsm_provider.hmac_sha256("cofre-fp-v1", b"late")]


def test_eight_threads_hammering(hsm_provider: HSMProvider) -> None:
    wrapped = hsm_provider.generate_wrapped_key("cofre-kek-v1")
    key = bytes(hsm_provider.unwrap_key(wrapped))
    mac = hsm_provider.hmac_sha256("cofre-fp-v1", b"4111111111111111")
    pem = hsm_provider.public_key_pem("cofre-audit-v1")
    public = serialization.load_pem_public_key(pem)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    deadline = time.monotonic() + 3.0
    errors: list[BaseException] = []
    counts = [0] * 8

    def worker(index: int) -> None:
        try:
            while time.monotonic() < deadline:
                assert hsm_provider.hmac_sha256("cofre-fp-v1", b"4111111111111111") == mac
                assert bytes(hsm_provider.unwrap_key(wrapped)) == key
                message = f"{index}-{counts[index]}".encode()
                public.verify(
                    hsm_provider.sign("cofre-audit-v1", message), message, ec.ECDSA(hashes.SHA256())
                )
                counts[index] += 1
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(count > 0 for count in counts)
