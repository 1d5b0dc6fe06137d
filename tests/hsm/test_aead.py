"""AES-256-GCM inside the token (the security-code epochs), on SoftHSM2 (caller's IV)
and on the CloudHSM-behaviour shim (the token picks the IV and writes it back)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from hsm.errors import HSMKeyNotExtractable, HSMKeyNotFound, HSMOperationFailed
from hsm.keys import code_epoch_label, parse_code_epoch_label, parse_key_label
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import HSM_BACKENDS, provider_for


@pytest.fixture(params=HSM_BACKENDS)
def epoch_key(request: pytest.FixtureRequest) -> Iterator[tuple[HSMProvider, str]]:
    # The rotation token: keys made and destroyed here never show up beside the shared
    # token's registered keys.
    provider = provider_for(request, rotation=True)
    label = code_epoch_label(secrets.randbelow(10**9) + 1)
    provider.generate_aead_key(label)
    yield provider, label
    if provider.has_key(label):
        provider.destroy_key(label)


def test_an_epoch_key_is_sensitive_and_never_leaves_the_token(
    epoch_key: tuple[HSMProvider, str],
) -> None:
    provider, label = epoch_key
    info = provider.describe_key(label)
    assert (info.key_type, info.key_bits, info.token) == ("AES", 256, True)
    assert (info.sensitive, info.extractable) == (True, False)
    assert (info.always_sensitive, info.never_extractable) == (True, True)
    with pytest.raises(HSMKeyNotExtractable):
        provider.export_key(label)
    with pytest.raises(HSMOperationFailed, match="already exists"):
        provider.generate_aead_key(label)


def test_round_trip_with_fresh_ivs(epoch_key: tuple[HSMProvider, str]) -> None:
    provider, label = epoch_key
    sealed = [provider.aead_encrypt(label, b"737", b"row-1") for _ in range(20)]
    assert len({iv for iv, _ in sealed}) == 20  # never one IV twice under a key
    # The shim refuses a caller's IV, as CloudHSM does: the provider switched to the
    # token's own IVs; SoftHSM2 takes ours.
    assert provider._token_picks_iv is ("shim" in str(provider._library_path))
    for iv, data in sealed:
        assert len(iv) == 12
        assert any(iv)
        assert len(data) == 3 + 16
        assert provider.aead_decrypt(label, iv, data, b"row-1") == b"737"


def test_another_aad_or_an_altered_ciphertext_fails(epoch_key: tuple[HSMProvider, str]) -> None:
    provider, label = epoch_key
    iv, data = provider.aead_encrypt(label, b"1234", b"row-1")
    with pytest.raises(HSMOperationFailed, match="authentication"):
        provider.aead_decrypt(label, iv, data, b"row-2")
    with pytest.raises(HSMOperationFailed, match="authentication"):
        provider.aead_decrypt(label, iv, data[:-1] + bytes([data[-1] ^ 1]), b"row-1")
    with pytest.raises(HSMOperationFailed, match="authentication"):
        provider.aead_decrypt(label, bytes(12), data, b"row-1")
    # The session survived the failures.
    assert provider.aead_decrypt(label, iv, data, b"row-1") == b"1234"


def test_a_destroyed_epoch_cannot_be_decrypted(epoch_key: tuple[HSMProvider, str]) -> None:
    provider, label = epoch_key
    iv, data = provider.aead_encrypt(label, b"737", b"row-1")
    provider.destroy_key(label)
    with pytest.raises(HSMKeyNotFound):
        provider.aead_decrypt(label, iv, data, b"row-1")
    with pytest.raises(HSMKeyNotFound):
        provider.aead_encrypt(label, b"737", b"row-1")


def test_epoch_labels() -> None:
    assert code_epoch_label(494520) == "cofre-csc-e494520"
    assert parse_code_epoch_label("cofre-csc-e494520") == 494520
    for other in ("cofre-kek-v1", "cofre-csc-e0", "cofre-csc-e", "cofre-csc-e1x", "x"):
        assert parse_code_epoch_label(other) is None
    # Not a versioned kind: initialisation and cryptoperiods never see it.
    assert parse_key_label("cofre-csc-e494520") is None
    with pytest.raises(ValueError, match="start at 1"):
        code_epoch_label(0)
