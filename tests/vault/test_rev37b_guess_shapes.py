"""Review 37b: token sweeps of formats whose tokens do not keep a card's first six and
last four.

The guard (`vault.operations._guesses`) counted a miss in a bucket of the token's first
six, last four and length. A `pan_last4` token keeps only the card's last four: its
first six are random, so a sweep for a card whose last four and length the attacker
knows (a receipt; a 12-digit card's token hides 10^8 values, a 13-digit card's 10^9) put
each guess in a bucket of its own, and no bucket ever filled. A format of the policy that
keeps the first six and no trailing digit is swept the same way through its random last
four. Now a miss
counts in a bucket of the digits each format a reader may meet keeps, at the lengths
where that bucket holds at most 10^9 tokens (`vault._token_guesses.guess_shapes`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.loader import parse_policy
from tests.support.pans import card_number
from tests.support.policies import vault_on
from vault._token_guesses import guess_shapes
from vault.errors import OracleSuspected, TokenNotFound
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService

LIMIT = 4
POLICY = f"""
[formats.bin6_only]
type = "random"
keep_leading = 6
keep_trailing = 0

[identities."spiffe://cofre/payments"]
operations = ["tokenize", "detokenize_masked", "metadata"]
formats = ["pan_last4", "bin6_only"]
reveal = "masked"
oracle_guard = {{ max_pans_per_bucket = {LIMIT} }}
"""
PAYMENTS = CallContext("spiffe://cofre/payments", "req-p")


@pytest.fixture
def vault(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    svc = vault_on(engine, hsm_provider, POLICY)
    yield svc
    svc.close()


def _sweep(vault: VaultService, token: str, kept: slice, free: slice) -> None:
    """Read guesses of `token` that keep its `kept` digits and vary its `free` ones: the
    guard refuses the sweep within its limit, and the right token after it."""
    width = free.stop - free.start if free.stop is not None else len(token) - free.start
    answers = []
    for step in range(1, LIMIT + 1):
        digits = list(token)
        digits[free] = f"{(int(token[free]) + step * 7) % 10**width:0{width}d}"
        try:
            vault.detokenize_masked(PAYMENTS, "".join(digits))
            answers.append("answered")
        except TokenNotFound:
            answers.append("404")
        except OracleSuspected:
            answers.append("429")
    assert token[kept] == "".join(digits)[kept]
    assert answers == ["404"] * (LIMIT - 1) + ["429"], answers  # was: 404 every one
    with pytest.raises(OracleSuspected):  # was: the masked card, the sweep's hit
        vault.detokenize_masked(PAYMENTS, token)


def test_a_sweep_of_last4_tokens_fills_a_bucket(vault: VaultService) -> None:
    card = Pan(card_number("455673", 3_702, length=13))
    token = vault.tokenize(PAYMENTS, TokenizeRequest(card, "pan_last4")).token
    _sweep(vault, token, kept=slice(-4, None), free=slice(0, 6))


def test_a_sweep_of_tokens_keeping_no_trailing_digit_fills_a_bucket(
    vault: VaultService,
) -> None:
    card = Pan(card_number("455673", 3_703, length=15))
    token = vault.tokenize(PAYMENTS, TokenizeRequest(card, "bin6_only")).token
    _sweep(vault, token, kept=slice(0, 6), free=slice(len(token) - 4, None))


def test_a_wide_space_keeps_the_bin6_last4_bucket() -> None:
    """A 16-digit `pan_last4` token hides 10^12 values: its reads keep the first six
    and last four bucket (not one of the last four alone, that would refuse legitimate
    misses of every BIN together)."""
    shapes = guess_shapes(parse_policy(POLICY, kind="toml").policy, PAYMENTS.identity)
    assert (16, 6, 4) in shapes
    assert (13, 0, 4) in shapes
    assert (15, 6, 0) in shapes
    assert not [s for s in shapes if s[0] == 16 and s != (16, 6, 4)]
