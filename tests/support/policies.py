"""Policy pieces the tests add to the dev policy.

The dev policy gives nobody a full PAN (the relay sends it to the acquirer from inside
the vault). Tests that check a full reveal use `settlement`, an in-scope service that may
read the payment service's tokens in full, as a real deployment might have for refunds
or a move to another processor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

from api.pki import DEV_IDENTITIES
from policies.engine import PolicyEngine
from policies.loader import parse_policy

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy import Engine

    from hsm.provider import HSMProvider
    from vault.service import CallContext, VaultService

SETTLEMENT_POLICY: Final = """
[identities."spiffe://cofre/settlement"]
description = "Tests only: an in-scope service that reads payments' cards in full"
operations = ["detokenize", "detokenize_masked", "metadata"]
reveal = "full"
read_domains = ["spiffe://cofre/payments"]
"""

TEST_IDENTITIES: Final = (*DEV_IDENTITIES, "settlement")

# The shop pages the tests' vaults let payments open capture sessions for: the dev
# policy's local pages and the tests' shop (a policy granting capture names them).
TEST_CAPTURE_ORIGINS: Final = (
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "https://shop.example",
)


def with_capture_origins(policy: str, origins: Iterable[str]) -> str:
    """`policy` (the dev policy, whose payments identity is the one that captures) with
    its `capture_origins` list replaced by `origins`."""
    line = f"capture_origins = {json.dumps(sorted(origins))}\n"
    replaced, count = re.subn(r"(?m)^capture_origins = .*\n", lambda _: line, policy)
    if count != 1:
        raise ValueError(f"the policy names capture_origins {count} times, not once")
    return replaced


def getnet_card_route(acquirer_url: str, ca: Path) -> str:
    """The policy's `getnet-authorize` relay route with card pointers, as docs/adapters.md
    shows it: the adapter sends the token, the vault puts number, expiry, code and name in
    and tokenizes the number the acquirer echoes."""
    return f"""
[relay_routes.getnet-authorize]
upstream = "{acquirer_url}/v1/authorize"
identities = ["spiffe://cofre/getnet-adapter"]
response_tokenize = {{ "/card/number" = "pan_bin6_last4" }}
ca_bundle = "{ca}"
timeout_seconds = 5

[relay_routes.getnet-authorize.card]
number = "/card/number"
expiry_month = "/card/expiration_month"
expiry_year = "/card/expiration_year"
security_code = "/card/security_code"
cardholder_name = "/card/cardholder_name"
"""


def vault_on(engine: Engine, hsm: HSMProvider, policy: str) -> VaultService:
    """An initialised `VaultService` on `engine` and `hsm` under the TOML `policy`."""
    from vault.service import VaultService  # noqa: PLC0415 - kept off this module's import

    vault = VaultService(engine, hsm, PolicyEngine(parse_policy(policy, kind="toml").policy))
    vault.initialize()
    return vault


def vault_serving(engine: Engine, hsm: HSMProvider, policy: str) -> Iterator[VaultService]:
    """`vault_on`, closed after the test whatever its outcome: a fixture's body
    (`yield from vault_serving(engine, provider, POLICY)`)."""
    vault = vault_on(engine, hsm, policy)
    try:
        yield vault
    finally:
        vault.close()


def workers_serving(
    engine: Engine, hsm: HSMProvider, policy: str, identities: tuple[CallContext, ...]
) -> Iterator[list[VaultService]]:
    """Two `vault_on` services on one database (two workers of a node, or two nodes),
    each of `identities` having tokenized once so that its bucket rows exist; closed
    after the test (`yield from workers_serving(...)` in a fixture's body)."""
    from tests.support.pans import card_number  # noqa: PLC0415 - kept off this module's import
    from vault.pan import Pan  # noqa: PLC0415
    from vault.service import TokenizeRequest  # noqa: PLC0415

    services = [vault_on(engine, hsm, policy) for _ in range(2)]
    try:
        for ctx in identities:
            services[0].tokenize(
                ctx, TokenizeRequest(Pan(card_number("4000", 36)), "pan_bin6_last4")
            )
        yield services
    finally:
        for service in services:
            service.close()


@contextmanager
def clocked_vault_on(
    engine: Engine, hsm: HSMProvider, policy: str, clock: list[datetime]
) -> Iterator[VaultService]:
    """An initialised `VaultService` on `engine` and `hsm` under the TOML `policy`, whose
    clock reads `clock[0]` (the test moves it); closed when the block ends."""
    from vault.service import VaultService  # noqa: PLC0415 - kept off this module's import

    policy_engine = PolicyEngine(parse_policy(policy, kind="toml").policy)
    svc = VaultService(engine, hsm, policy_engine, clock=lambda: clock[0])
    svc.initialize()
    yield svc
    svc.close()
