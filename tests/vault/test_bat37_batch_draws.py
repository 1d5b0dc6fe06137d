"""A batch's random draws (issue 21, bat37): its first candidates, token ids and oracle
guard items come from a few reads of the OS's generator, not one or more per card, and
with the distributions the per-card calls had (`secrets.randbelow`'s rejection sampling,
`uuid.uuid4`'s bits)."""

from __future__ import annotations

import random  # noqa: TID251 - CPython's SystemRandom (what `secrets` runs) is the reference
import secrets
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.pans import card_number
from tests.support.policies import vault_on
from vault import tokens as tokens_module
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService
from vault.tokens import RandomDraws, uuid4_strings

POLICY = """
[identities."spiffe://cofre/payments"]
operations = ["tokenize", "detokenize"]
formats = ["pan_bin6_last4"]
reveal = "full"
"""
PAYMENTS = CallContext("spiffe://cofre/payments", "req-bat37-draws")


@pytest.fixture
def vault(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    svc = vault_on(engine, hsm_provider, POLICY)
    yield svc
    svc.close()


@pytest.mark.hsm
def test_a_batch_reads_the_os_generator_a_few_times_not_per_card(
    vault: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 cards of a batch each drew their first candidate (`secrets.randbelow`: one
    ``getrandom`` or two), their token id (`uuid.uuid4`: one) and their oracle guard
    item (32 random bytes that the card's fingerprint then replaced): ~800 reads of the
    generator, ~2-4 us of CPU each on this machine kind. Now a handful per batch."""
    reads = [0]
    os_read, random_read = uuid.os.urandom, random._urandom  # type: ignore[attr-defined]

    def counted_os(size: int) -> bytes:
        reads[0] += 1
        return os_read(size)

    def counted_random(size: int) -> bytes:
        reads[0] += 1
        return random_read(size)

    cards = [card_number("4000001", serial) for serial in range(200)]
    requests = [TokenizeRequest(Pan(card), "pan_bin6_last4") for card in cards]
    monkeypatch.setattr(uuid.os, "urandom", counted_os)
    monkeypatch.setattr(random, "_urandom", counted_random)
    records = vault.tokenize_batch(PAYMENTS, requests)
    monkeypatch.undo()
    assert reads[0] <= 20, f"{reads[0]} reads of the OS generator for 200 cards"
    assert len({r.token for r in records}) == 200
    assert len({r.token_id for r in records}) == 200
    for record, card in zip(records, cards, strict=True):
        assert record.token[:6] == card[:6]
        assert record.token[-4:] == card[-4:]
        assert record.token != card
        assert uuid.UUID(record.token_id).version == 4
        revealed = vault.detokenize(PAYMENTS, record.token).pan
        assert revealed is not None
        assert revealed.reveal() == card


@settings(max_examples=60)
@given(
    stream=st.binary(min_size=3 * 400, max_size=3 * 400),
    bounds=st.lists(st.integers(2**16 + 1, 2**24), min_size=1, max_size=60),
)
def test_random_draws_are_secrets_randbelow_over_the_same_bytes(
    stream: bytes, bounds: list[int]
) -> None:
    """Fed the same generator bytes, `RandomDraws.randbelow` answers what CPython's
    `SystemRandom` (what `secrets.randbelow` calls) answers: the same bits taken, the
    same values rejected."""
    reference_at, draws_at = [0], [0]

    def read(cursor: list[int], size: int) -> bytes:
        if cursor[0] + size > len(stream):
            raise _StreamEnd
        cursor[0] += size
        return stream[cursor[0] - size : cursor[0]]

    system = random.SystemRandom()
    real = random._urandom  # type: ignore[attr-defined]
    expected: list[int] = []
    random._urandom = lambda size: read(reference_at, size)  # type: ignore[attr-defined]
    try:
        for bound in bounds:
            expected.append(system._randbelow(bound))  # type: ignore[attr-defined]  # noqa: PERF401 - stops at the stream's end
    except _StreamEnd:
        pass
    finally:
        random._urandom = real  # type: ignore[attr-defined]
    # Every bound here takes 3 bytes a try: a block of 96 leaves nothing unread.
    draws = RandomDraws(block=96)
    original = tokens_module.secrets.token_bytes
    tokens_module.secrets.token_bytes = lambda size=None: read(draws_at, size or 32)  # type: ignore[assignment]
    try:
        got = []
        try:
            for bound in bounds[: len(expected)]:
                got.append(draws.randbelow(bound))  # noqa: PERF401 - stops at the stream's end
        except _StreamEnd:
            got = got[: len(expected)]
            expected = expected[: len(got)]
    finally:
        tokens_module.secrets.token_bytes = original  # type: ignore[assignment]
    assert got == expected
    assert all(0 <= value < bound for value, bound in zip(got, bounds, strict=False))


class _StreamEnd(Exception):
    """The test's byte stream is used up."""


def test_random_draws_refuse_an_empty_range_and_cover_a_small_one() -> None:
    draws = RandomDraws()
    with pytest.raises(ValueError, match="positive"):
        draws.randbelow(0)
    assert {draws.randbelow(1) for _ in range(20)} == {0}
    assert {draws.randbelow(3) for _ in range(300)} == {0, 1, 2}


@given(raw=st.binary(min_size=16, max_size=16 * 8).filter(lambda b: len(b) % 16 == 0))
def test_uuid4_strings_spell_what_uuid4_would_from_the_same_bytes(raw: bytes) -> None:
    """Each id is ``str(uuid.UUID(bytes=..., version=4))`` of its 16 bytes: what
    `uuid.uuid4` spells from the 16 bytes it reads."""
    original = tokens_module.secrets.token_bytes
    tokens_module.secrets.token_bytes = lambda size=None: raw[: size or 32]  # type: ignore[assignment]
    try:
        got = uuid4_strings(len(raw) // 16)
    finally:
        tokens_module.secrets.token_bytes = original  # type: ignore[assignment]
    expected = [str(uuid.UUID(bytes=raw[at : at + 16], version=4)) for at in range(0, len(raw), 16)]
    assert got == expected


def test_uuid4_strings_are_distinct_version_4_ids() -> None:
    ids = uuid4_strings(500)
    assert len(set(ids)) == 500
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert uuid4_strings(0) == []
    assert secrets.compare_digest(uuid4_strings(1)[0][14], "4")
