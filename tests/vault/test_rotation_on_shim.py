"""A KEK rotation through the CloudHSM-behaviour shim while the new KEK is not yet
available (on CloudHSM: not yet on a quorum of HSMs): the batch fails as
`hsm_unavailable`, nothing is half-written, and the rotation resumes once the key is
there. The shim is our reading of AWS's documentation, not CloudHSM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from hsm.errors import HSMKeyUnavailable
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.cloudhsm_shim import CloudHSMShim, configure
from tests.vault.conftest import GETNET, PAYMENTS, TEST_POLICY, rotation_of
from tests.vault.test_rotation import ALICE, BOB, OFFICERS, _pan
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService


@pytest.fixture
def unavailable_new_keys(
    cloudhsm_shim: CloudHSMShim, shim_rotation_provider: HSMProvider
) -> Iterator[HSMProvider]:
    """New token keys on the shim refused for a minute; the provider gives up at once."""
    timeout = shim_rotation_provider.key_availability_timeout
    configure(cloudhsm_shim, key_availability_ms=60_000)
    shim_rotation_provider.key_availability_timeout = 0
    yield shim_rotation_provider
    configure(cloudhsm_shim)
    shim_rotation_provider.key_availability_timeout = timeout


def _vault(engine: Engine, provider: HSMProvider) -> VaultService:
    policy = PolicyEngine(parse_policy(TEST_POLICY + OFFICERS, kind="toml").policy)
    service = VaultService(engine, provider, policy)
    service.initialize()
    return service


def _cards(service: VaultService, first: int, count: int) -> dict[str, Pan]:
    """`count` cards tokenized in one batch: token -> PAN."""
    pans = [_pan(first + i) for i in range(count)]
    records = service.tokenize_batch(PAYMENTS, [TokenizeRequest(p, "pan_bin6_last4") for p in pans])
    return {r.token: pan for r, pan in zip(records, pans, strict=True)}


def _completed(rotation: KeyRotation, ceremony_id: str) -> bool:
    for _ in range(100):
        if rotation.status(ALICE, ceremony_id).state == "completed":
            return True
        rotation.run_pending()
    return rotation.status(ALICE, ceremony_id).state == "completed"


def _all_revealed(service: VaultService, cards: dict[str, Pan]) -> bool:
    return all(service.detokenize(GETNET, token).pan == pan for token, pan in cards.items())


def test_kek_rotation_waits_for_the_new_key(
    engine: Engine, cloudhsm_shim: CloudHSMShim, unavailable_new_keys: HSMProvider
) -> None:
    provider = unavailable_new_keys
    service = _vault(engine, provider)
    try:
        cards = _cards(service, 900_000, 20)
        rotation = rotation_of(service, engine, provider)
        ceremony = rotation.propose(ALICE, "kek")
        assert rotation.approve(BOB, ceremony.id).state == "running"
        # The new KEK exists but the token refuses it: the batch fails, 503-class.
        with pytest.raises(HSMKeyUnavailable) as info:
            rotation.run_pending()
        assert info.value.code == "hsm_unavailable"
        assert rotation.status(ALICE, ceremony.id).progress_done == 0
        # The key reaches its quorum; the same ceremony resumes and finishes.
        configure(cloudhsm_shim)
        assert _completed(rotation, ceremony.id)
        assert _all_revealed(service, cards)
    finally:
        service.close()


@pytest.fixture
def gated_new_keys(cloudhsm_shim: CloudHSMShim) -> Iterator[None]:
    """New token keys refused for 300 ms, reading their attributes included (our reading
    of AWS's "use"; the provider waits up to its default 5 s)."""
    configure(cloudhsm_shim, key_availability_ms=300, gate_attributes=True)
    yield
    configure(cloudhsm_shim)


@pytest.mark.usefixtures("gated_new_keys")
def test_kek_rotation_creates_its_key_once_while_the_key_is_unreadable(
    engine: Engine, shim_rotation_provider: HSMProvider
) -> None:
    """The ceremony's new KEK cannot be read at first: approving waits for it instead of
    re-running the creation (which found its own key and failed "already exists")."""
    provider = shim_rotation_provider
    service = _vault(engine, provider)
    try:
        cards = _cards(service, 910_000, 5)
        rotation = rotation_of(service, engine, provider)
        ceremony = rotation.propose(ALICE, "kek")
        assert rotation.approve(BOB, ceremony.id).state == "running"
        assert _completed(rotation, ceremony.id)
        assert _all_revealed(service, cards)
    finally:
        service.close()
