"""What the CloudHSM-behaviour shim enforces, and that Cofre's keys cross between it and
SoftHSM2. The shim is our reading of AWS's SDK 5 documentation, not CloudHSM."""

from __future__ import annotations

import ctypes
import itertools
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import pkcs11.exceptions as p11e
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from hsm._hmac import HMAC_CHUNK
from hsm.errors import HSMKeyUnavailable, HSMOperationFailed
from hsm.mechanisms import CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD, CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD
from hsm.provider import HSMProvider, provider_from_settings
from tests.support.cloudhsm_shim import CloudHSMShim, configure, round_trips
from tests.support.softhsm import SoftHSMToken

STANDARD_WRAP = {0x2109, 0x210A, 0x210B}


@pytest.fixture(scope="module")
def shim_on_main_token(
    softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> Iterator[HSMProvider]:
    """The session's SoftHSM2 token (the one `softhsm_provider` uses), through the shim."""
    provider = provider_from_settings(softhsm_token.settings(library=cloudhsm_shim.library))
    yield provider
    provider.close()


def test_mechanism_list_has_vendor_wrap_only(shim_provider: HSMProvider) -> None:
    offered = shim_provider.mechanism_ids()
    assert not offered & STANDARD_WRAP
    assert {CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD, CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD} <= offered
    algorithm = shim_provider.wrap_algorithm()
    assert algorithm == "aes-kwp-rfc5649"
    assert shim_provider.wrap_mechanism_name(algorithm) == "CLOUDHSM_AES_KEY_WRAP_ZERO_PAD"


def test_standard_wrap_numbers_are_refused(shim_provider: HSMProvider) -> None:
    def wrap_standard(session: Any) -> None:
        kek = session.get_key(ObjectClass.SECRET_KEY, label="cofre-kek-v1")
        key = session.generate_key(
            KeyType.AES, 256, id=b"k", label="t", template={Attribute.EXTRACTABLE: True}
        )
        try:
            with pytest.raises(p11e.MechanismInvalid):
                kek.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        finally:
            key.destroy()

    shim_provider._run(wrap_standard)


def test_hmac_many_uses_the_token_key_where_keys_cannot_be_copied(
    shim_provider: HSMProvider,
) -> None:
    """SDK 5 has no ``C_CopyObject``: a batch's HMACs fall back to the token key."""
    label = f"shim-fp-{secrets.token_hex(3)}"
    shim_provider.generate_hmac_key(label)
    messages = [f"41111111{i:08d}".encode() for i in range(40)]
    try:
        macs = shim_provider.hmac_sha256_many(label, messages)
        assert macs == [shim_provider.hmac_sha256(label, m) for m in messages]
        assert shim_provider._copy_refused
    finally:
        shim_provider.destroy_key(label)


def test_an_hmac_is_two_round_trips(
    shim_provider: HSMProvider, cloudhsm_shim: CloudHSMShim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a networked HSM every PKCS#11 call may be a round trip: an HMAC is
    ``C_SignInit`` and one ``C_Sign`` into a buffer of the known size. python-pkcs11
    asks the length with a first ``C_Sign`` every time (three round trips a card).

    The batch is counted with its chunks one after another: side by side, which pooled
    session each chunk borrows, and whether one must open a session (``C_GetSlotList``,
    ``C_GetTokenInfo`` per slot, ``C_OpenSession``, ``C_Login``), depends on the
    threads' timing. CI once counted 264 calls against 262 that way, for the same two
    round trips a card. The side-by-side run is the next test's."""
    label = f"shim-fp-{secrets.token_hex(3)}"
    shim_provider.generate_hmac_key(label)
    messages = [f"41111111{i:08d}".encode() for i in range(2 * HMAC_CHUNK)]
    # Counts, never `messages` itself, in an assertion: a failure would print the
    # Luhn-valid test cards, and the suite's leak scan counts them as a leak.
    cards = len(messages)
    chunks = cards // HMAC_CHUNK
    try:
        shim_provider.hmac_sha256(label, messages[0])  # the key's handle is found and kept
        before = round_trips(cloudhsm_shim)
        one = shim_provider.hmac_sha256(label, messages[1])
        assert round_trips(cloudhsm_shim) - before == 2
        monkeypatch.setattr(shim_provider, "_hmac_width", lambda chunks: 1)
        shim_provider.hmac_sha256_many(label, messages)  # the key found on the session
        before = round_trips(cloudhsm_shim)
        many = shim_provider.hmac_sha256_many(label, messages)
        spent = round_trips(cloudhsm_shim) - before
        # Two a card, and at most one key lookup (three calls) per chunk's session.
        assert 2 * cards <= spent <= 2 * cards + 3 * chunks
        monkeypatch.undo()
        assert many[1] == one

        def python_pkcs11(session: Any) -> list[bytes]:
            key = shim_provider._find_secret(session, label)
            return [bytes(key.sign(m, mechanism=Mechanism.SHA256_HMAC)) for m in messages]

        assert many == shim_provider._run(python_pkcs11)
    finally:
        shim_provider.destroy_key(label)


def test_a_batch_s_hmac_chunks_run_side_by_side_on_a_networked_hsm(
    shim_provider: HSMProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every HMAC on CloudHSM is round trips (three through python-pkcs11), so a batch's
    chunks run on several pooled sessions at once: one after another, 1,000 cards at
    1 ms a call took ~3.8 s (bench/levers.md, session 32). The first two chunks to look
    the key up wait for each other; run one at a time, the first would wait alone until
    the barrier's timeout (a bound on a hang, not a timing)."""
    label = f"shim-fp-{secrets.token_hex(3)}"
    shim_provider.generate_hmac_key(label)
    met = threading.Barrier(2, timeout=20)
    arrivals = itertools.count()
    find = shim_provider._find_secret

    def meeting(session: Any, name: str) -> Any:
        if next(arrivals) < 2:
            met.wait()
        return find(session, name)

    messages = [f"41111111{i:08d}".encode() for i in range(3 * HMAC_CHUNK + 5)]
    try:
        monkeypatch.setattr(shim_provider, "_find_secret", meeting)
        macs = shim_provider.hmac_sha256_many(label, messages)
        monkeypatch.undo()
        assert macs == [shim_provider.hmac_sha256(label, m) for m in messages]
    finally:
        monkeypatch.undo()
        shim_provider.destroy_key(label)


def test_python_pkcs11_default_hmac_template_is_refused(shim_provider: HSMProvider) -> None:
    """The failure issue 19 found: python-pkcs11 sends every usage flag by default."""

    def generate_default(session: Any) -> None:
        # attr-errors.html: an attribute CloudHSM does not support for the key type.
        with pytest.raises(p11e.TemplateInconsistent):
            session.generate_key(
                KeyType.GENERIC_SECRET,
                256,
                id=b"x",
                label="default-flags",
                mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            )

    shim_provider._run(generate_default)


def test_empty_id_is_refused(shim_provider: HSMProvider) -> None:
    def generate_without_id(session: Any) -> None:
        with pytest.raises(p11e.AttributeValueInvalid):
            session.generate_key(KeyType.AES, 256, label="no-id")

    shim_provider._run(generate_without_id)


def test_read_only_sessions_are_refused(shim_provider: HSMProvider) -> None:
    def open_read_only(session: Any) -> None:
        with pytest.raises(p11e.PKCS11Error):
            session.token.open(rw=False)

    shim_provider._run(open_read_only)


class _GCMParams(ctypes.Structure):
    _fields_ = [
        ("pIv", ctypes.c_void_p),
        ("ulIvLen", ctypes.c_ulong),
        ("ulIvBits", ctypes.c_ulong),
        ("pAAD", ctypes.c_void_p),
        ("ulAADLen", ctypes.c_ulong),
        ("ulTagBits", ctypes.c_ulong),
    ]


def test_gcm_iv_is_chosen_by_the_hsm_and_written_back(shim_provider: HSMProvider) -> None:
    """The IV buffer must be ours (writable) and zero; the HSM writes its IV there."""
    value, aad, plaintext = secrets.token_bytes(32), b"aad", b"gcm in the hsm"
    iv = ctypes.create_string_buffer(12)
    aad_buffer = ctypes.create_string_buffer(aad, len(aad))
    params = _GCMParams(
        ctypes.cast(iv, ctypes.c_void_p), 12, 96, ctypes.cast(aad_buffer, ctypes.c_void_p), 3, 128
    )

    def encrypt(session: Any) -> bytes:
        key = session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.TOKEN: False,
                Attribute.VALUE: value,
                Attribute.ENCRYPT: True,
            }
        )
        try:
            # python-pkcs11 passes a bytes parameter through as the raw CK_GCM_PARAMS.
            return bytes(
                key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=bytes(params))
            )
        finally:
            key.destroy()

    sealed = shim_provider._run(encrypt)
    chosen = iv.raw
    assert chosen != bytes(12)
    assert AESGCM(value).decrypt(chosen, sealed, aad) == plaintext
    # A caller-chosen IV is refused.
    iv.raw = b"\x01" * 12
    with pytest.raises(HSMOperationFailed, match="MechanismParamInvalid"):
        shim_provider._run(encrypt)


def test_keys_wrapped_on_softhsm_unwrap_through_the_shim_and_back(
    softhsm_provider: HSMProvider, shim_on_main_token: HSMProvider
) -> None:
    kek = "cofre-kek-v1"
    on_softhsm = softhsm_provider.generate_wrapped_key(kek)
    assert on_softhsm.algorithm == "aes-kwp-rfc5649"
    key = softhsm_provider.unwrap_key(on_softhsm)
    assert shim_on_main_token.unwrap_key(on_softhsm) == key
    on_shim = shim_on_main_token.generate_wrapped_key(kek)
    assert softhsm_provider.unwrap_key(on_shim) == shim_on_main_token.unwrap_key(on_shim)
    # Rewrapped through the shim, unwrapped on SoftHSM2: the same key again.
    label = f"cofre-kek-x{secrets.token_hex(3)}"
    shim_on_main_token.generate_kek(label)
    try:
        moved = shim_on_main_token.rewrap_key(on_softhsm, label)
        assert softhsm_provider.unwrap_key(moved) == key
    finally:
        shim_on_main_token.destroy_key(label)


def test_python_pkcs11_refuses_a_plain_vendor_number(shim_provider: HSMProvider) -> None:
    """Why hsm.mechanisms makes pseudo-members: python-pkcs11 0.10.1 refuses a plain int."""
    with pytest.raises(HSMOperationFailed, match="ArgumentsBad"):
        shim_provider._run(
            lambda s: s.get_key(ObjectClass.SECRET_KEY, label="cofre-kek-v1").wrap_key(
                s.get_key(ObjectClass.SECRET_KEY, label="cofre-kek-v1"),
                mechanism=CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD,
            )
        )


@pytest.fixture
def key_availability_window(cloudhsm_shim: CloudHSMShim) -> Iterator[None]:
    """New token keys on the shim are refused for 300 ms, as keys not yet on a quorum."""
    configure(cloudhsm_shim, key_availability_ms=300)
    yield
    configure(cloudhsm_shim)


@pytest.mark.usefixtures("key_availability_window")
def test_first_use_of_a_new_key_waits_for_availability(shim_provider: HSMProvider) -> None:
    label = f"cofre-fp-avail-{secrets.token_hex(3)}"
    shim_provider.generate_hmac_key(label)
    try:
        # Used at once: refused by the shim, retried with backoff until available.
        assert len(shim_provider.hmac_sha256(label, b"data")) == 32
    finally:
        shim_provider.destroy_key(label)


@pytest.mark.usefixtures("key_availability_window")
def test_a_key_that_stays_unavailable_fails_as_hsm_unavailable(
    shim_provider: HSMProvider,
) -> None:
    label = f"cofre-fp-avail-{secrets.token_hex(3)}"
    shim_provider.generate_hmac_key(label)
    timeout = shim_provider.key_availability_timeout
    shim_provider.key_availability_timeout = 0  # give up at the first refusal
    try:
        with pytest.raises(HSMKeyUnavailable) as info:
            shim_provider.hmac_sha256(label, b"data")
        assert info.value.code == "hsm_unavailable"  # the API answers 503
    finally:
        shim_provider.key_availability_timeout = timeout
        shim_provider.destroy_key(label)
