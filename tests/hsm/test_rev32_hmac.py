"""Review 32: the direct HMAC (`hsm._hmac._DirectHmac`) and a batch's chunks side by side
on a networked HSM (`HmacOperations.hmac_sha256_many`), attacked through SoftHSM2 and the
CloudHSM-behaviour shim (our reading of AWS's SDK 5 documentation, not CloudHSM)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from cofre.blocking import never_blocking
from cofre.errors import WouldBlock
from cofre.settings import DEFAULT_SOFTHSM_LIBRARY
from hsm import _identity as identity_module
from hsm._hmac import _COPY_LABEL, HMAC_CHUNK, _DirectHmac
from hsm._login import UserLogin
from hsm._pool import CONNECTION_ERRORS
from hsm.errors import HSMKeyNotFound, HSMOperationFailed
from hsm.provider import HSMProvider, provider_from_settings
from tests.support.cloudhsm_shim import (
    PKCS11_INCLUDE,
    CloudHSMShim,
    ShimFaults,
    configure,
    round_trips,
)
from tests.support.probes import run_probe
from tests.support.softhsm import SoftHSMToken


def _probe(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    return run_probe("tests.support.hmac_probe", *args, env=env, timeout=600)


def _batch_under(
    tmp_path: Path,
    token: SoftHSMToken,
    shim: CloudHSMShim,
    *,
    pool: int,
    code: str,
    functions: str,
    count: str,
) -> dict[str, object]:
    faults = ShimFaults(tmp_path / "faults")
    faults.clear()
    return _probe(
        "batch",
        str(shim.library),
        str(token.conf),
        token.label + "-shim",
        token.user_pin,
        str(faults.path),
        str(pool),
        code,
        functions,
        count,
        env=shim.env(fault_file=faults.path),
    )


@pytest.mark.parametrize(
    ("code", "functions", "count"),
    [
        ("DEVICE_ERROR", "C_Sign", "3"),
        ("DEVICE_ERROR", "C_SignInit", "5"),
        ("SESSION_HANDLE_INVALID", "C_Sign", "3"),
        ("SESSION_HANDLE_INVALID", "C_SignInit", "7"),
        ("TOKEN_NOT_PRESENT", "C_Sign", "2"),
        ("DEVICE_ERROR", "C_OpenSession,C_Login,C_SignInit,C_Sign", "6"),
        ("SESSION_CLOSED", "*", "10"),
        ("DEVICE_ERROR", "C_Sign", "40"),
    ],
)
def test_a_parallel_batch_under_a_few_faults_is_whole_or_unavailable(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    cloudhsm_shim: CloudHSMShim,
    shim_provider: HSMProvider,
    *,
    code: str,
    functions: str,
    count: str,
) -> None:
    """A batch of 1,000 on a pool of 8 (4 chunks at once) while a few signing calls fail:
    it returns every MAC right or raises `HSMUnavailable` (never a wrong or partial list,
    never a hang), the next batch is whole, and no session is left open."""
    assert shim_provider.has_key("cofre-fp-v1")
    result = _batch_under(
        tmp_path, softhsm_token, cloudhsm_shim, pool=8, code=code, functions=functions, count=count
    )
    assert result["during"] in ("ok", "HSMUnavailable"), result
    assert result["after"] == "ok", result
    assert (result["zombies"], result["live"]) == (0, 0), result


@pytest.mark.parametrize("code", ["DEVICE_ERROR", "SESSION_HANDLE_INVALID"])
def test_a_parallel_batch_stops_at_its_first_failed_chunk(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    cloudhsm_shim: CloudHSMShim,
    shim_provider: HSMProvider,
    code: str,
) -> None:
    """With every ``C_Sign`` failing, a batch of 1,000 (16 chunks) on a pool of 4 (2 at
    once) raises `HSMUnavailable` once the chunks already running fail: each tries twice
    (two sessions and a re-initialisation of the library, a reconnection), so at most
    2 x 2 calls fail. Before, a worker free again started the next chunk until the
    caller reached the failed one in order (6 failed calls here; more when a later chunk
    fails while an earlier one still runs)."""
    assert shim_provider.has_key("cofre-fp-v1")
    result = _batch_under(
        tmp_path, softhsm_token, cloudhsm_shim, pool=4, code=code, functions="C_Sign", count="*"
    )
    assert result["during"] == "HSMUnavailable", result
    assert isinstance(result["injected"], int)
    assert result["injected"] <= 4, result
    assert result["after"] == "ok", result
    assert (result["zombies"], result["live"]) == (0, 0), result


# ------------------------------------------------------------------ in this process
# RFC 4231, test cases 6 and 7: keys longer than SHA-256's block (SoftHSM2 refuses an
# HMAC-SHA256 key shorter than 32 bytes, so cases 1-5 cannot be imported).
RFC4231 = [
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size "
        b"data. The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]


def _import_hmac_key(provider: HSMProvider, label: str, value: bytes) -> None:
    """A token HMAC key with a known value (as a ceremony's import would make it)."""

    def create(session: Any) -> None:
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.VERIFY: True,
                Attribute.LABEL: label,
                Attribute.ID: secrets.token_bytes(8),
                Attribute.VALUE: value,
            }
        )

    provider._run(create)


@pytest.fixture(autouse=True)
def _imported_keys_are_this_module_s_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's HMAC keys are imported with known values, to compare the token's
    HMACs with the standard library's. Since session 37 the provider refuses a key found
    by label whose value was ever outside the token (`hsm._identity`,
    tests/hsm/test_hsm37_key_attributes.py shows it refusing); here, and only here, that
    check is lifted, so these tests still reach the HMAC, cache and copy code."""
    monkeypatch.setattr(identity_module, "_refuse_a_key_that_can_leave", lambda _o, _l: None)


@pytest.fixture
def known_key(hsm_provider: HSMProvider) -> Iterator[tuple[str, bytes]]:
    label = f"rev32-known-{secrets.token_hex(3)}"
    value = secrets.token_bytes(32)
    _import_hmac_key(hsm_provider, label, value)
    yield label, value
    hsm_provider.destroy_key(label)


def test_rfc4231_vectors(hsm_provider: HSMProvider) -> None:
    label = f"rev32-rfc4231-{secrets.token_hex(3)}"
    key, _, _ = RFC4231[0]
    _import_hmac_key(hsm_provider, label, key)
    try:
        for _, data, mac in RFC4231:
            assert hsm_provider.hmac_sha256(label, data).hex() == mac
        # One chunk under the token key, one under a session copy (16 and more).
        for size in (2, 40):
            messages = [RFC4231[i % 2][1] for i in range(size)]
            macs = hsm_provider.hmac_sha256_many(label, messages)
            assert [m.hex() for m in macs] == [RFC4231[i % 2][2] for i in range(size)]
    finally:
        hsm_provider.destroy_key(label)


@pytest.mark.parametrize(
    "data", [b"", b"\x00", b"\x00" * 33, b"a\x00b", bytes(range(256)) * 4, b"x" * 16288]
)
def test_hmac_equals_the_standard_library_s(
    hsm_provider: HSMProvider, known_key: tuple[str, bytes], data: bytes
) -> None:
    """Empty data, NUL bytes (a ``c_char_p`` argument must pass the whole buffer, not a C
    string) and the shim's largest HMAC input, one by one and in a batch of each size."""
    label, value = known_key
    expected = hmac.new(value, data, hashlib.sha256).digest()
    assert hsm_provider.hmac_sha256(label, data) == expected
    for size in (2, 17, HMAC_CHUNK + 1):
        assert hsm_provider.hmac_sha256_many(label, [data] * size) == [expected] * size


def test_hmac_equals_python_pkcs11_s(hsm_provider: HSMProvider) -> None:
    """Under a generated (never extractable) key: what python-pkcs11's ``Key.sign`` says."""
    label = "cofre-fp-v1"
    messages = [b"", b"4111111111111111", b"\x00" * 7, b"z" * 5000]

    def python_pkcs11(session: Any) -> list[bytes]:
        key = hsm_provider._find_secret(session, label)
        return [bytes(key.sign(m, mechanism=Mechanism.SHA256_HMAC)) for m in messages]

    expected = hsm_provider._run(python_pkcs11)
    assert [hsm_provider.hmac_sha256(label, m) for m in messages] == expected
    assert hsm_provider.hmac_sha256_many(label, messages * 5) == expected * 5


def test_one_byte_over_the_shim_s_limit_leaves_the_session_usable(
    shim_provider: HSMProvider, known_key_on_shim: tuple[str, bytes]
) -> None:
    """CloudHSM refuses an HMAC over more than 16,288 bytes (``CKR_DATA_LEN_RANGE``): the
    call is refused as an operation (not a lost HSM), and the session it ran on signs
    again at once: the refused ``C_Sign`` ended the operation."""
    label, value = known_key_on_shim
    with pytest.raises(HSMOperationFailed, match="DataLenRange"):
        shim_provider.hmac_sha256(label, b"x" * 16289)
    with pytest.raises(HSMOperationFailed, match="DataLenRange"):
        shim_provider.hmac_sha256_many(label, [b"a", b"x" * 16289, b"b"])
    session = shim_provider._run(lambda s: s.handle)
    for data in (b"", b"y" * 16288):
        assert shim_provider.hmac_sha256(label, data) == hmac.new(value, data, "sha256").digest()
    assert shim_provider._run(lambda s: s.handle) == session


@pytest.fixture
def known_key_on_shim(shim_provider: HSMProvider) -> Iterator[tuple[str, bytes]]:
    label = f"rev32-known-{secrets.token_hex(3)}"
    value = secrets.token_bytes(32)
    _import_hmac_key(shim_provider, label, value)
    yield label, value
    shim_provider.destroy_key(label)


def test_a_key_that_is_not_an_hmac_key_is_refused_and_the_session_kept(
    hsm_provider: HSMProvider,
) -> None:
    """An AES key under the label: the token refuses the mechanism for it; the call says
    the operation was refused, and the next HMAC on the same session works."""
    label = f"rev32-aes-{secrets.token_hex(3)}"
    hsm_provider.generate_kek(label)
    try:
        with pytest.raises(HSMOperationFailed):
            hsm_provider.hmac_sha256(label, b"data")
        with pytest.raises(HSMOperationFailed):
            hsm_provider.hmac_sha256_many(label, [b"data"] * 20)
        assert len(hsm_provider.hmac_sha256("cofre-fp-v1", b"data")) == 32
    finally:
        hsm_provider.destroy_key(label)


def test_a_key_destroyed_behind_the_cache_is_looked_up_again(hsm_provider: HSMProvider) -> None:
    """The key's handle is cached on the session; the key is destroyed past the provider
    (another node, an officer): the next HMAC finds no key, and a new key under the label
    is used, not the old handle."""
    label = f"rev32-gone-{secrets.token_hex(3)}"
    _import_hmac_key(hsm_provider, label, b"\x01" * 32)
    assert hsm_provider.hmac_sha256(label, b"m") == hmac.new(b"\x01" * 32, b"m", "sha256").digest()

    def destroy_past_the_cache(session: Any) -> None:
        for obj in session.get_objects({Attribute.LABEL: label}):
            obj.destroy()

    hsm_provider._run(destroy_past_the_cache)
    with pytest.raises(HSMKeyNotFound):
        hsm_provider.hmac_sha256(label, b"m")
    with pytest.raises(HSMKeyNotFound):
        hsm_provider.hmac_sha256_many(label, [b"m"] * 20)
    _import_hmac_key(hsm_provider, label, b"\x02" * 32)
    try:
        new = hmac.new(b"\x02" * 32, b"m", "sha256").digest()
        assert hsm_provider.hmac_sha256(label, b"m") == new
        assert hsm_provider.hmac_sha256_many(label, [b"m"] * 20) == [new] * 20
    finally:
        hsm_provider.destroy_key(label)


def test_a_session_copy_destroyed_mid_chunk(softhsm_provider: HSMProvider) -> None:
    """SoftHSM2, a chunk of 16 or more: MACed under a session copy of the key. The copy is
    destroyed after the chunk's fifth HMAC: the chunk is rerun whole under a new copy and
    the batch is right; no copy is left behind."""
    provider = softhsm_provider
    label = f"rev32-copy-{secrets.token_hex(3)}"
    _import_hmac_key(provider, label, b"\x03" * 32)
    messages = [f"m{i}".encode() for i in range(40)]
    expected = [hmac.new(b"\x03" * 32, m, "sha256").digest() for m in messages]
    done = {"n": 0}
    direct = provider._direct_hmac()
    sha256 = direct.sha256

    def destroy_the_copy_once(session: int, key: int, data: bytes) -> bytes:
        done["n"] += 1
        if done["n"] == 6:
            pooled = provider._local.pooled
            for obj in pooled.session.get_objects({Attribute.LABEL: _COPY_LABEL}):
                obj.destroy()
        return sha256(session, key, data)

    try:
        direct.sha256 = destroy_the_copy_once  # type: ignore[method-assign]
        assert provider.hmac_sha256_many(label, messages) == expected
    finally:
        del direct.sha256
        provider.destroy_key(label)
    assert done["n"] > len(messages)  # the chunk ran again

    def copies(session: Any) -> int:
        return len(list(session.get_objects({Attribute.LABEL: _COPY_LABEL})))

    assert provider._run(copies) == 0


def test_a_refused_pin_is_tried_once_by_a_parallel_batch(
    softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim, shim_provider: HSMProvider
) -> None:
    """A node with a stale PIN runs two batches of 1,000, four chunks at once: every chunk
    opens a session, but the PIN is tried once (the shim locks the user out after two
    refusals in a row, so the right PIN still logs in afterwards)."""
    assert shim_provider.has_key("cofre-fp-v1")
    result = _probe(
        "refused-pin",
        str(cloudhsm_shim.library),
        str(softhsm_token.conf),
        softhsm_token.label + "-shim",
        softhsm_token.user_pin,
        "stale-" + softhsm_token.user_pin,
        env={**cloudhsm_shim.env(), "COFRE_SHIM_LOGIN_LOCKOUT": "2"},
    )
    assert result == {"wrong": ["HSMAuthFailed", "HSMAuthFailed"], "right": "ok"}


@pytest.mark.parametrize("backend", ["softhsm2", "cloudhsm-shim"])
def test_buffer_too_small_drops_the_session(
    softhsm_token: SoftHSMToken,
    cloudhsm_shim: CloudHSMShim,
    shim_provider: HSMProvider,
    backend: str,
) -> None:
    """``CKR_BUFFER_TOO_SMALL`` leaves the signing operation open on the session: the
    call fails as a lost session (`HSMUnavailable` once retried) and that session is
    never used again; the next HMAC is right."""
    assert shim_provider.has_key("cofre-fp-v1")
    library = DEFAULT_SOFTHSM_LIBRARY if backend == "softhsm2" else cloudhsm_shim.library
    label = softhsm_token.label + ("" if backend == "softhsm2" else "-shim")
    result = _probe(
        "small-buffer",
        str(library),
        str(softhsm_token.conf),
        label,
        softhsm_token.user_pin,
        env=cloudhsm_shim.env(),
    )
    assert result == {"during": "HSMUnavailable", "after": "ok"}


@pytest.fixture
def shim_pools(
    softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim, shim_provider: HSMProvider
) -> Iterator[Callable[[int], HSMProvider]]:
    """Providers through the shim (a networked HSM to the pool) with pools of a chosen
    size, on the shim's own token; closed afterwards."""
    made: list[HSMProvider] = []

    def make(size: int) -> HSMProvider:
        settings = softhsm_token.settings(
            library=cloudhsm_shim.library,
            token_label=softhsm_token.label + "-shim",
            session_pool_size=size,
        )
        made.append(provider_from_settings(settings))
        return made[-1]

    assert shim_provider.has_key("cofre-fp-v1")
    yield make
    for provider in made:
        provider.close()


def _bounded(work: Callable[[], None], threads: int = 1, timeout: float = 120) -> None:
    """Run `work` on `threads` threads at once; fail only when one hangs (a bound on a
    hang, never a duration); re-raise the first error."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout)
    assert not any(worker.is_alive() for worker in workers), "hung"
    if errors:
        raise errors[0]


LABEL = "cofre-fp-v1"
MESSAGES = [f"4{i:015d}".encode() for i in range(3 * HMAC_CHUNK + 7)]


def test_a_batch_inside_never_blocking_raises_before_any_call(
    shim_pools: Callable[[int], HSMProvider], cloudhsm_shim: CloudHSMShim
) -> None:
    """On an event loop a networked HSM's batch must not start: `WouldBlock` before any
    thread or call (the loop reruns the whole call in a thread)."""
    provider = shim_pools(8)
    provider.hmac_sha256(LABEL, b"warm")  # a session is idle: only the rule can refuse
    started: list[str] = []

    def note_thread(*_: object) -> None:  # the first call in every new thread
        started.append(threading.current_thread().name)
        sys.setprofile(None)

    calls = round_trips(cloudhsm_shim)
    threading.setprofile(note_thread)
    try:
        with never_blocking(), pytest.raises(WouldBlock):
            provider.hmac_sha256_many(LABEL, MESSAGES)
    finally:
        threading.setprofile(None)
    assert [name for name in started if name.startswith("cofre-hmac")] == []
    assert round_trips(cloudhsm_shim) == calls
    # The same batch off the loop does start the chunks' threads (the hook sees them).
    threading.setprofile(note_thread)
    try:
        provider.hmac_sha256_many(LABEL, MESSAGES)
    finally:
        threading.setprofile(None)
    assert any(name.startswith("cofre-hmac") for name in started)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_batches_and_single_calls_at_once_on_a_small_pool(
    shim_pools: Callable[[int], HSMProvider], size: int
) -> None:
    """Three batches and four single HMACs at once, three rounds, on a pool of 1 to 4:
    nothing waits for ever and every answer is right."""
    provider = shim_pools(size)
    expected = [provider.hmac_sha256(LABEL, m) for m in MESSAGES]
    workers = itertools.count()

    def work() -> None:
        batch = next(workers) < 3
        for _ in range(3):
            if batch:
                assert provider.hmac_sha256_many(LABEL, MESSAGES) == expected
            else:
                assert provider.hmac_sha256(LABEL, MESSAGES[5]) == expected[5]

    _bounded(work, threads=7)


@pytest.mark.parametrize("size", [1, 4])
def test_a_batch_inside_a_held_session(shim_pools: Callable[[int], HSMProvider], size: int) -> None:
    """A batch called from inside an operation (the thread holds a pooled session) runs on
    that session: a pool of one never waits for itself, and no chunk runs elsewhere."""
    provider = shim_pools(size)
    expected = [provider.hmac_sha256(LABEL, m) for m in MESSAGES]
    got: list[list[bytes]] = []

    def nested() -> None:
        got.append(provider._run(lambda _: provider.hmac_sha256_many(LABEL, MESSAGES)))

    _bounded(nested)
    assert got == [expected]


def test_a_parallel_batch_under_a_new_key_s_availability_window(
    shim_pools: Callable[[int], HSMProvider], cloudhsm_shim: CloudHSMShim
) -> None:
    """A new key used at once by a batch of four chunks side by side (CloudHSM: usable
    once a quorum of HSMs has it): every chunk waits for it and the batch is whole."""
    provider = shim_pools(8)
    label = f"rev32-avail-{secrets.token_hex(3)}"
    configure(cloudhsm_shim, key_availability_ms=300)
    try:
        provider.generate_hmac_key(label)
        macs = provider.hmac_sha256_many(label, MESSAGES)
    finally:
        configure(cloudhsm_shim)
    try:
        assert macs == [provider.hmac_sha256(label, m) for m in MESSAGES]
    finally:
        provider.destroy_key(label)


@pytest.mark.parametrize(
    "data", [bytearray(b"4111"), memoryview(b"4111"), "4111"], ids=["bytearray", "view", "str"]
)
def test_a_message_ctypes_refuses_leaves_no_operation_open(
    hsm_provider: HSMProvider, data: Any
) -> None:
    """``C_SignInit`` succeeded, then ctypes refused the message for ``C_Sign`` (a
    bytearray, or a str, which python-pkcs11's ``Key.sign`` encoded): the signing
    operation stayed open on a session that went back to the pool as sound, and every
    later HMAC and ECDSA signature on it failed (``CKR_OPERATION_ACTIVE``) until a
    restart; on SoftHSM2, the only session. A bytes-like message is MACed as its bytes,
    a str is refused before the operation starts; either way the next calls work."""
    expected = hsm_provider.hmac_sha256(LABEL, b"4111")
    for call in (
        lambda: [hsm_provider.hmac_sha256(LABEL, data)],
        lambda: hsm_provider.hmac_sha256_many(LABEL, [b"4111", data]),
        lambda: hsm_provider.hmac_sha256_many(LABEL, [b"4111"] * 20 + [data]),
    ):
        if isinstance(data, str):
            with pytest.raises(TypeError):
                call()
        else:
            assert call()[-1] == expected
        assert hsm_provider.hmac_sha256(LABEL, b"4111") == expected
        assert hsm_provider.hmac_sha256_many(LABEL, [b"4111"] * 20) == [expected] * 20
        assert hsm_provider.sign("cofre-audit-v1", b"entry")  # ECDSA: C_SignInit too


# A module whose C_GetFunctionList refuses with one of the answers PKCS#11 2.40 allows it.
_REFUSING_MODULE = r"""
#include <p11-kit/pkcs11.h>
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    (void)list;
    return LIST_RV;
}
"""


@pytest.mark.parametrize("rv", [0x02, 0x05, 0x06, 0x07])
def test_a_module_that_hands_no_function_list_is_a_lost_session(tmp_path: Path, rv: int) -> None:
    """Before `hsm._native`, a ``C_GetFunctionList`` that failed was the login's "device
    failing" whatever it answered: the pool's lost session (retried, then 503). The
    refactor said no behaviour change, but mapped it through the whole return-value
    table: ``CKR_ARGUMENTS_BAD`` became `ArgumentsBad`, "the token refused the
    operation", never retried, for a login and now for every HMAC too."""
    gcc = shutil.which("gcc")
    assert gcc is not None, "gcc is needed: run `make test-deps`"
    source = tmp_path / "refusing.c"
    source.write_text(_REFUSING_MODULE)
    library = tmp_path / f"librefusing{rv}.so"
    define = f"-DLIST_RV={rv:#x}UL"
    subprocess.run(
        [gcc, "-shared", "-fPIC", f"-I{PKCS11_INCLUDE}", define, str(source), "-o", str(library)],
        check=True,
        timeout=120,
    )
    for make in (UserLogin, _DirectHmac):
        with pytest.raises(CONNECTION_ERRORS):
            make(library)
