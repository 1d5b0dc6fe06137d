"""SDK 5 behaviours the CloudHSM-behaviour shim encodes (docs/cloudhsm.md, section 4,
table "SDK 5 against SoftHSM2"), and what the vault does under each: fail closed with
an `hsm.errors` class, or work. Each shim behaviour cites AWS's page in
tests/support/cloudhsm_shim.c; where AWS names no error code the shim's is ours.

The shim is our reading of AWS's documentation, not CloudHSM."""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import Iterator
from typing import Any, cast

import pkcs11.exceptions as p11e
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from hsm.errors import HSMKeyUnavailable, HSMMechanismUnsupported, HSMOperationFailed
from hsm.keys import KeyHierarchy, KeyKind
from hsm.provider import REQUIRED_MECHANISMS, HSMProvider
from tests.support.cloudhsm_shim import CloudHSMShim, configure

# pkcs11-mechanisms.html, "Maximum data size for each mechanism" (footnote 2's table).
HMAC_LIMIT = 16_288  # CKM_SHA256_HMAC
# CKM_AES_GCM: 16,224 bytes in that table. ki-pkcs11-8 says "16 KB" (16,384); the table
# is the exact and the smaller figure, so the shim holds to it (session 34).
GCM_LIMIT = 16_224
PAN = b"4111111111111111"
SESSIONS_PER_APPLICATION = 1_024  # limits.html


def _aes_session_key(session: Any, **template: Any) -> Any:
    """An AES session key; `template` names attributes (``EXTRACTABLE=True``)."""
    return session.generate_key(
        KeyType.AES,
        256,
        id=secrets.token_bytes(8),
        label="sdk5-probe",
        store=False,
        template={Attribute[name]: value for name, value in template.items()},
    )


# ------------------------------------------------------------------ templates
def test_unsupported_attribute_in_a_template_is_template_inconsistent(
    shim_provider: HSMProvider,
) -> None:
    """attr-errors.html: an attribute CloudHSM does not support for the key type answers
    CKR_TEMPLATE_INCONSISTENT (CKA_ENCRYPT on a generic secret)."""

    def generate(session: Any) -> None:
        with pytest.raises(p11e.TemplateInconsistent):
            session.generate_key(
                KeyType.GENERIC_SECRET,
                256,
                id=b"x",
                label="gs-encrypt",
                store=False,
                mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                template={Attribute.ENCRYPT: False},
            )

    shim_provider._run(generate)


def test_read_only_attribute_in_a_template_is_refused(shim_provider: HSMProvider) -> None:
    """CKA_LOCAL is "R" in SDK 5's tables; attr-errors.html: CKR_ATTRIBUTE_READ_ONLY."""

    def generate(session: Any) -> None:
        with pytest.raises(p11e.AttributeReadOnly):
            _aes_session_key(session, LOCAL=True)

    shim_provider._run(generate)


def test_private_and_modifiable_only_take_their_default(shim_provider: HSMProvider) -> None:
    """Footnote 1 of the attribute tables: CKA_PRIVATE and CKA_MODIFIABLE "must be
    explicitly set only to the default value" (True); Cofre's templates send True."""

    def generate(session: Any) -> None:
        for attribute in ("PRIVATE", "MODIFIABLE"):
            with pytest.raises(p11e.AttributeValueInvalid):
                _aes_session_key(session, **{attribute: False})

    shim_provider._run(generate)


def test_read_only_sessions_fail_with_function_failed(shim_provider: HSMProvider) -> None:
    """ki-pkcs11-13: C_OpenSession without CKF_RW_SESSION fails with CKR_FUNCTION_FAILED."""

    def open_read_only(session: Any) -> None:
        with pytest.raises(p11e.FunctionFailed):
            session.token.open(rw=False)

    shim_provider._run(open_read_only)


def test_an_application_gets_at_most_1024_sessions(shim_provider: HSMProvider) -> None:
    """limits.html: "Maximum number of PKCS#11 sessions per application: 1,024" (SDK 5:
    an application is one client connection). Until session 34 the shim let any number
    open, so a session leak (review 31's login leak) only showed in its report. Over the
    limit it answers CKR_SESSION_COUNT (ours: AWS names no code); a closed session frees
    its place."""

    def exhaust(session: Any) -> None:
        opened: list[Any] = []
        try:
            with pytest.raises(p11e.SessionCount):
                while len(opened) <= SESSIONS_PER_APPLICATION:  # kept even when one fails
                    opened.append(session.token.open(rw=True))
            assert 0 < len(opened) < SESSIONS_PER_APPLICATION  # the pool holds the rest
            opened.pop().close()
            opened.append(session.token.open(rw=True))
        finally:
            for extra in opened:
                extra.close()

    shim_provider._run(exhaust)
    assert shim_provider.token_info().token_label  # the pool still serves


# ------------------------------------------------------------------ functions
def test_functions_absent_from_sdk5_are_not_supported(shim_provider: HSMProvider) -> None:
    """pkcs11-apis.html lists the calls SDK 5 has; C_SetAttributeValue, C_SeedRandom,
    C_DigestKey, C_CopyObject are not among them. Cofre calls none of them except
    C_CopyObject, whose refusal it handles (test_cloudhsm_shim.py)."""

    def probe(session: Any) -> None:
        key = _aes_session_key(session, EXTRACTABLE=True)
        try:
            with pytest.raises(p11e.FunctionNotSupported):
                key[Attribute.LABEL] = "renamed"
            with pytest.raises(p11e.FunctionNotSupported):
                session.seed_random(b"entropy")
            with pytest.raises(p11e.FunctionNotSupported):
                session.digest(key, mechanism=Mechanism.SHA256)
            with pytest.raises(p11e.FunctionNotSupported):
                key.copy({Attribute.TOKEN: False})
        finally:
            key.destroy()

    shim_provider._run(probe)


# ------------------------------------------------------------------ mechanisms
def test_mechanisms_outside_sdk5_are_neither_offered_nor_accepted(
    shim_provider: HSMProvider,
) -> None:
    """pkcs11-mechanisms.html: no EdDSA, no MD5, no AES-MAC; Cofre needs none of them."""
    offered = shim_provider.mechanism_ids()
    assert set(REQUIRED_MECHANISMS.values()) <= offered
    md5 = Mechanism(0x210)  # python-pkcs11 0.10 spells it `_MD5`
    absent = {Mechanism.EC_EDWARDS_KEY_PAIR_GEN, Mechanism.EDDSA, md5}
    assert not offered & {int(m) for m in absent}
    with pytest.raises(HSMMechanismUnsupported):
        shim_provider._run(lambda s: s.digest(b"data", mechanism=md5))


def test_hsm_status_lists_every_mechanism_the_vault_calls(shim_provider: HSMProvider) -> None:
    """Session 34: `cofre hsm status` (REQUIRED_MECHANISMS) left out AES_GCM, which
    security codes run in the token (`hsm/aead.py`), so a token without it looked
    ready. Key wrap is resolved apart (`hsm.mechanisms`) and shown on its own line."""
    used = {
        Mechanism.AES_KEY_GEN,
        Mechanism.GENERIC_SECRET_KEY_GEN,
        Mechanism.SHA256_HMAC,
        Mechanism.EC_KEY_PAIR_GEN,
        Mechanism.ECDSA,
        Mechanism.AES_GCM,
    }
    assert {int(m) for m in used} == set(REQUIRED_MECHANISMS.values())
    assert set(REQUIRED_MECHANISMS.values()) <= shim_provider.mechanism_ids()


# ------------------------------------------------------------------ data limits
def test_hmac_over_the_sdk5_limit_fails_closed_and_the_session_goes_on(
    hsm_provider: HSMProvider,
) -> None:
    """Footnote 2: CKM_SHA256_HMAC takes at most 16,288 bytes. A longer message fails as
    `HSMOperationFailed` on the shim (a PAN is 19 bytes at most: Cofre never gets
    near it), and the sessions stay usable: the refused operation was ended."""
    label = KeyHierarchy(hsm_provider).current_label(KeyKind.FINGERPRINT)
    assert len(hsm_provider.hmac_sha256(label, bytes(HMAC_LIMIT))) == 32
    if hsm_provider.pool_size > 1:  # the shim
        for _ in range(hsm_provider.pool_size + 1):
            with pytest.raises(HSMOperationFailed, match="DataLenRange"):
                hsm_provider.hmac_sha256(label, bytes(HMAC_LIMIT + 1))
    for _ in range(hsm_provider.pool_size + 1):
        assert len(hsm_provider.hmac_sha256(label, PAN)) == 32


@pytest.fixture
def aead_label(hsm_provider: HSMProvider) -> Iterator[str]:
    label = f"sdk5-aead-{secrets.token_hex(3)}"
    hsm_provider.generate_aead_key(label)
    yield label
    hsm_provider.destroy_key(label)


def test_gcm_over_its_data_limit_fails_closed_and_the_session_goes_on(
    hsm_provider: HSMProvider, aead_label: str
) -> None:
    """pkcs11-mechanisms.html: CKM_AES_GCM takes at most 16,224 bytes per call (ki-pkcs11-8:
    "16 KB"). Cofre seals security codes (a few bytes) only."""
    iv, sealed = hsm_provider.aead_encrypt(aead_label, bytes(GCM_LIMIT), b"aad")
    if hsm_provider.pool_size > 1:  # the shim
        with pytest.raises(HSMOperationFailed):  # aead_decrypt: "failed authentication"
            hsm_provider.aead_decrypt(aead_label, iv, sealed, b"aad")  # the limit + tag
        for _ in range(hsm_provider.pool_size + 1):
            with pytest.raises(HSMOperationFailed, match="DataLenRange"):
                hsm_provider.aead_encrypt(aead_label, bytes(GCM_LIMIT + 1), b"aad")
    else:
        assert hsm_provider.aead_decrypt(aead_label, iv, sealed, b"aad") == bytes(GCM_LIMIT)
    for _ in range(hsm_provider.pool_size + 1):
        iv, sealed = hsm_provider.aead_encrypt(aead_label, b"123", b"aad")
        assert hsm_provider.aead_decrypt(aead_label, iv, sealed, b"aad") == b"123"


def test_multipart_gcm_and_ecdsa_are_refused(shim_provider: HSMProvider) -> None:
    """ki-pkcs11-8: multi-part AES-GCM answers CKR_MECHANISM_INVALID; CKM_ECDSA is
    "single-part operations only". Cofre makes single-part calls (bytes, never an
    iterable, reach python-pkcs11)."""
    audit = KeyHierarchy(shim_provider).current_label(KeyKind.AUDIT)

    def multipart(session: Any) -> None:
        key = _aes_session_key(session)
        try:
            with pytest.raises(p11e.MechanismInvalid):
                # The shim's GCM takes a zero IV buffer and writes its own there.
                params = GCMParams(cast(bytes, bytearray(12)), b"", 128)
                list(
                    key.encrypt(
                        [b"a" * 16, b"b" * 16], mechanism=Mechanism.AES_GCM, mechanism_param=params
                    )
                )
        finally:
            key.destroy()
        signer = session.get_key(ObjectClass.PRIVATE_KEY, label=audit)
        with pytest.raises(p11e.MechanismInvalid):
            signer.sign([bytes(16), bytes(16)], mechanism=Mechanism.ECDSA)
        assert len(signer.sign(bytes(32), mechanism=Mechanism.ECDSA)) == 64

    shim_provider._run(multipart)
    assert len(shim_provider.sign(audit, b"tree head")) > 64


# ------------------------------------------------------------------ key availability
@pytest.fixture
def gated_new_keys(cloudhsm_shim: CloudHSMShim) -> Iterator[None]:
    """New token keys refused for 300 ms, attribute reads included (our reading of
    "use", working-client-sync.html)."""
    configure(cloudhsm_shim, key_availability_ms=300, gate_attributes=True)
    yield
    configure(cloudhsm_shim)


@pytest.mark.usefixtures("gated_new_keys")
@pytest.mark.parametrize("kind", ["kek", "fp", "audit", "aead"])
def test_a_new_key_is_created_once_and_described_after_waiting(
    shim_provider: HSMProvider, kind: str
) -> None:
    """Creating a key is not retried (it could make two); reading its attributes is
    (`describe_key`). A refused read must not re-run the creation: the second run
    found the label taken and failed with "already exists" though the key was made."""
    label = f"cofre-sdk5-{kind}-{secrets.token_hex(3)}"
    make = {
        "kek": shim_provider.generate_kek,
        "fp": shim_provider.generate_hmac_key,
        "audit": shim_provider.generate_signing_key,
        "aead": shim_provider.generate_aead_key,
    }[kind]
    try:
        info = make(label)
        assert info.label == label
        assert info.sensitive is True
        assert info.extractable is False
    finally:
        if shim_provider.has_key(label):
            shim_provider.destroy_key(label)


def test_a_new_key_that_stays_unreadable_fails_as_unavailable(
    cloudhsm_shim: CloudHSMShim, shim_provider: HSMProvider
) -> None:
    """A key made but not readable within `key_availability_timeout` fails the creation
    as `HSMKeyUnavailable` (503), not as "already exists" and not twice: one key is on
    the token. (`_create_key` then tries to destroy it, waiting the same timeout; here
    the window outlasts that too, so it stays, one key, until the window ends.)"""
    label = f"cofre-sdk5-late-{secrets.token_hex(3)}"
    timeout = shim_provider.key_availability_timeout
    configure(cloudhsm_shim, key_availability_ms=60_000, gate_attributes=True)
    shim_provider.key_availability_timeout = 0
    try:
        with pytest.raises(HSMKeyUnavailable):
            shim_provider.generate_hmac_key(label)
    finally:
        configure(cloudhsm_shim)
        shim_provider.key_availability_timeout = timeout
    try:
        assert [k.label for k in shim_provider.list_keys()].count(label) == 1
    finally:
        shim_provider.destroy_key(label)


@pytest.mark.parametrize("kind", ["kek", "fp", "audit"])
def test_a_taken_label_still_unavailable_is_never_answered_as_a_new_key(
    cloudhsm_shim: CloudHSMShim, shim_provider: HSMProvider, kind: str
) -> None:
    """Review 30c: a creation whose label is taken by a key another node made a moment
    ago (not yet on a quorum of HSMs: its attributes are refused) failed inside the
    duplicate check, before anything was made; `_create_key` took that refusal for
    "made, then refused", waited for the other key and answered it as the new key (or,
    still refused, destroyed every key with the label: the other node's). The check's
    refusal is the caller's: nothing was made, the other key stays, untouched."""
    label = f"cofre-sdk5-taken-{kind}-{secrets.token_hex(3)}"
    make = {
        "kek": shim_provider.generate_kek,
        "fp": shim_provider.generate_hmac_key,
        "audit": shim_provider.generate_signing_key,
    }[kind]
    configure(cloudhsm_shim, key_availability_ms=300, gate_attributes=True)
    try:
        with contextlib.suppress(HSMKeyUnavailable):  # python-pkcs11 reads it at once
            shim_provider._run(
                lambda session: session.generate_key(
                    KeyType.AES, 256, id=b"other-node", label=label, store=True
                ),
                retry=False,
            )
        with pytest.raises((HSMOperationFailed, HSMKeyUnavailable)):
            make(label)
    finally:
        configure(cloudhsm_shim)
        ids = [k.key_id for k in shim_provider.list_keys() if k.label == label]
        if ids:
            shim_provider.destroy_key(label)
    # The other node's key: neither answered as the new one, destroyed nor doubled.
    assert ids == [base64.b64encode(b"other-node").decode()]
