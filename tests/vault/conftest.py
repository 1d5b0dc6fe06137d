from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pkcs11 import Attribute, KeyType, Mechanism
from sqlalchemy import Engine

from hsm.keys import KeyKind
from hsm.mechanisms import secret_key_template
from hsm.models import WrappedKey
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.cloudhsm_shim import HSM_BACKENDS, provider_for
from tests.support.custody import acknowledge_in_process
from tests.support.databases import migrated_engine
from tests.support.fake_acquirer import FakeAcquirer, running_acquirer
from tests.support.officers import (
    SigningOfficer,
    new_software_officer,
    policy_with,
    signed_approval,
    signed_registration,
)
from tests.support.policies import vault_serving
from vault.ceremony import Ceremony, CeremonyState
from vault.rotation import KeyRotation
from vault.service import CallContext, VaultService

TEST_POLICY = """
[formats.card_random]
type = "random"
dedup = "random"

[formats.card_pass]
type = "random"
luhn = "pass"

[formats.card_fpe_any]
type = "fpe"
luhn = "any"
pan_lengths = [16, 19]

[identities."spiffe://cofre/payments"]
operations = ["tokenize", "detokenize_masked", "lookup", "metadata", "delete"]
formats = ["pan_bin6_last4", "pan_bin8_last4", "pan_last4", "pan_fpe", "uuid", "card_random",
           "card_pass", "card_fpe_any"]
reveal = "masked"
# The service tests tokenize many cards of one BIN and last four on purpose (collisions,
# load); tests/vault/test_oracle.py tests the guard at its default.
oracle_guard = { max_pans_per_bucket = 100000 }

# An in-scope identity with full reveal (the dev policy has none; tests need one).
[identities."spiffe://cofre/getnet-adapter"]
operations = ["detokenize"]
reveal = "full"
read_domains = ["spiffe://cofre/payments"]

[identities."spiffe://cofre/ledger"]
operations = ["detokenize"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]

[identities."spiffe://cofre/officer-alice"]
role = "security_officer"
operations = ["key_admin", "audit_read"]
"""

PAYMENTS = CallContext("spiffe://cofre/payments", "req-payments")
GETNET = CallContext("spiffe://cofre/getnet-adapter", "req-getnet")
LEDGER = CallContext("spiffe://cofre/ledger", "req-ledger")
OFFICER = CallContext("spiffe://cofre/officer-alice", "req-officer")
STRANGER = CallContext("spiffe://cofre/stranger", "req-stranger")


@pytest.fixture(params=HSM_BACKENDS)
def hsm_provider(request: pytest.FixtureRequest) -> HSMProvider:
    """The vault's tests run against SoftHSM2 and the CloudHSM-behaviour shim."""
    return provider_for(request)


@pytest.fixture(params=HSM_BACKENDS)
def rotation_provider(request: pytest.FixtureRequest) -> HSMProvider:
    return provider_for(request, rotation=True)


@pytest.fixture
def engine(migrated_database: None, database_url: str) -> Iterator[Engine]:
    with migrated_engine(database_url) as engine:
        yield engine


@pytest.fixture
def service(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    policy = PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy)
    svc = VaultService(engine, hsm_provider, policy)
    svc.initialize()
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def acquirer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAcquirer]:
    """An acquirer behind server TLS for the relay tests; its CA is `acquirer.ca`."""
    with running_acquirer(tmp_path_factory.mktemp("relay-pki")) as acquirer:
        yield acquirer


def oos_relay_policy(
    acquirer: FakeAcquirer,
    identity: str,
    *,
    operations: str = '"relay", "detokenize_masked"',
    limits: str = "",
    response_tokenize: str = "",
) -> str:
    """TEST_POLICY with `identity`, an out-of-scope relayer reading payments' tokens
    masked, and its route `acq` to `acquirer` detokenizing ``/card/number``; `limits`
    (TOML lines) go to the identity, `response_tokenize` (a TOML inline table) to the
    route."""
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    tokenized = f"response_tokenize = {response_tokenize}\n" if response_tokenize else ""
    return (
        TEST_POLICY
        + f"""
[identities."{identity}"]
scope = "out"
operations = [{operations}]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]
{limits}

[relay_routes.acq]
upstream = "{acquirer.url}/v1/authorize"
identities = ["{identity}"]
detokenize = ["/card/number"]
{tokenized}ca_bundle = "{ca}"
timeout_seconds = 5
"""
    )


@contextmanager
def relay_vault(
    engine: Engine, provider: HSMProvider, acquirer: FakeAcquirer, policy: str
) -> Iterator[VaultService]:
    """A vault under `policy` (TOML) whose relay routes reach `acquirer`, which starts and
    ends with nothing received and no canned answer."""
    service = VaultService(engine, provider, PolicyEngine(parse_policy(policy, kind="toml").policy))
    service.initialize()
    acquirer.received.clear()
    acquirer.answer = None
    try:
        yield service
    finally:
        acquirer.answer = None
        service.close()


# Officers beside TEST_POLICY's alice, for the dual control of key rotations.
OFFICERS = """
[identities."spiffe://cofre/officer-bob"]
role = "security_officer"
operations = ["key_admin"]

[identities."spiffe://cofre/officer-carol"]
role = "security_officer"
operations = ["key_admin"]
"""
ALICE, BOB, CAROL = (f"spiffe://cofre/officer-{n}" for n in ("alice", "bob", "carol"))


def rotation_of(service: VaultService, engine: Engine, provider: HSMProvider) -> KeyRotation:
    """A `KeyRotation` of `service`'s keys, retired keys destroyed at once (a new one
    resumes what the database says another left)."""
    return KeyRotation(
        engine,
        provider,
        service.keyring,
        lambda: service.policy,
        destroy_grace=timedelta(0),
        # Its officers register no MFA key: their in-process actions carry no signed proof.
        unsigned_officers_count=True,
    )


DATA_KEYS = sa.table(
    "data_keys",
    sa.column("wrapped"),
    sa.column("wrap_mechanism"),
    sa.column("kek_label"),
    sa.column("purpose"),
    sa.column("version"),
)


def until_destroy_pending(rotation: KeyRotation, ceremony_id: str) -> bool:
    """Run `rotation`'s pending work until ceremony `ceremony_id` waits to destroy its
    old key; whether it got there."""
    for _ in range(10_000):
        if rotation.status(ALICE, ceremony_id).state == CeremonyState.DESTROY_PENDING:
            return True
        rotation.run_pending()
    return False


def wrap_a_data_key_late(
    engine: Engine, provider: HSMProvider, rotation: KeyRotation, ceremony_id: str
) -> tuple[str, str]:
    """A late write under the old KEK of KEK rotation `ceremony_id`, waiting to destroy
    it: one data key the migration moved goes back under the old KEK. Returns the old
    and the new KEK's labels."""
    status = rotation.status(ALICE, ceremony_id)
    old, new = f"cofre-kek-v{status.old_version}", f"cofre-kek-v{status.new_version}"
    with engine.begin() as connection:
        late = connection.execute(sa.select(DATA_KEYS).where(DATA_KEYS.c.kek_label == new)).first()
        assert late is not None
        back = provider.rewrap_key(
            WrappedKey(bytes(late.wrapped), late.wrap_mechanism, late.kek_label), old
        )
        connection.execute(
            sa.update(DATA_KEYS)
            .where(DATA_KEYS.c.purpose == late.purpose, DATA_KEYS.c.version == late.version)
            .values(wrapped=back.wrapped, wrap_mechanism=back.algorithm, kek_label=old)
        )
    return old, new


@pytest.fixture
def rig(
    engine: Engine, rotation_provider: HSMProvider
) -> Iterator[tuple[VaultService, KeyRotation]]:
    """A vault and its key rotation on a token of their own (no grace before a
    retired key is destroyed)."""
    policy = PolicyEngine(parse_policy(TEST_POLICY + OFFICERS, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy)
    service.initialize()
    yield service, rotation_of(service, engine, rotation_provider)
    service.close()


def unsigned_ceremonies(service: VaultService) -> None:
    """Let `service`'s key registry take a version 2 or later its test registers unsigned
    "as a ceremony would" (as `rotation_of`'s in-process ceremonies, whose officers sign
    nothing: since session 40 a served vault takes only the officers' signed records)."""
    registry = service.keyring.registry
    registry.trust_officers(lambda: service.policy, None, insecure_unsigned_ceremonies=True)


def officers_vault(engine: Engine, provider: HSMProvider) -> Iterator[VaultService]:
    """A vault on `engine` and `provider` under the test policy with its two officers,
    initialised, closed after the test: for the planted-key and forged-registration
    tests' `vault` fixtures (`yield from officers_vault(engine, rotation_provider)`)."""
    yield from vault_serving(engine, provider, TEST_POLICY + OFFICERS)


def plant_secret_key(provider: HSMProvider, kind: KeyKind, label: str, key_id: bytes) -> None:
    """A secret key of `kind` made under `label` with ``CKA_ID`` `key_id`, sensitive and
    never extractable like ours: what the crypto-user PIN allows (hsm37's planted twin,
    cka38's substitute)."""
    key_type = KeyType.AES if kind is KeyKind.KEK else KeyType.GENERIC_SECRET
    usage = {Attribute.WRAP, Attribute.UNWRAP} if kind is KeyKind.KEK else {Attribute.SIGN}

    def plant(session: Any) -> None:
        session.generate_key(
            key_type,
            256,
            label=label,
            id=key_id,
            store=True,
            mechanism=(
                Mechanism.AES_KEY_GEN if kind is KeyKind.KEK else Mechanism.GENERIC_SECRET_KEY_GEN
            ),
            template=secret_key_template(key_type, usage),
        )

    provider._run(plant, retry=False)  # the PIN holder's own call


# A KEK label the suite's tokens never hold: the PIN holder's next version (`planted`).
PLANTED_KEK = "cofre-kek-v9"


@pytest.fixture
def planted(hsm_provider: HSMProvider) -> Iterator[str]:
    """A KEK created on the session token behind Cofre's back (removed afterwards)."""
    hsm_provider.generate_kek(PLANTED_KEK)
    try:
        yield PLANTED_KEK
    finally:
        hsm_provider.destroy_key(PLANTED_KEK)


@pytest.fixture
def signing_officers() -> dict[str, SigningOfficer]:
    """Alice, Bob and Carol, each with a token key the policy registers."""
    return {i: new_software_officer(i.rpartition("/")[2]) for i in (ALICE, BOB, CAROL)}


@pytest.fixture
def signing_rig(
    engine: Engine, rotation_provider: HSMProvider, signing_officers: dict[str, SigningOfficer]
) -> Iterator[tuple[VaultService, KeyRotation]]:
    """A vault whose officers sign their ceremony actions (custody acknowledged), and its
    key ceremonies, which count only proofs signed for ``localhost``."""
    officers = signing_officers
    text = policy_with(TEST_POLICY + OFFICERS, {o.name: o for o in officers.values()})
    policy = PolicyEngine(parse_policy(text, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy)
    service.initialize()
    try:
        acknowledge_in_process(engine, service, policy, officers)
        rotation = KeyRotation(
            engine,
            rotation_provider,
            service.keyring,
            lambda: service.policy,
            authorities=lambda: ["localhost"],
        )
        yield service, rotation
    finally:
        service.close()


def reregister(
    rotation: KeyRotation,
    officers: dict[str, SigningOfficer],
    registered: dict[str, str | None],
    approvers: tuple[str, ...] = (BOB,),
) -> Ceremony:
    """Alice proposes a ``register`` ceremony (`registered`'s label is its key, session
    39); `approvers` approve it with their tokens. Returns the ceremony as it ends."""
    proposal = signed_registration(officers[ALICE], registered)
    view = rotation.propose(ALICE, "register", keyid=officers[ALICE].keyid, proof=proposal)
    for who in approvers:
        approval = signed_approval(officers[who], view.id)
        view = rotation.approve(who, view.id, keyid=officers[who].keyid, proof=approval)
    return view
