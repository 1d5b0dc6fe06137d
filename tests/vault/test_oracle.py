"""The tokenize oracle, run as an attacker would (issue 17), and what stops it.

An identity allowed to tokenize takes a victim's token, lists every Luhn-valid card its
visible digits allow (the first six and last four are assumed known: a masked reveal or
a receipt shows them), and tokenizes the candidates: if one answers the victim's token,
that candidate is the card. This runs that attack for every built-in format and PAN
lengths 13-19, from the token's own identity and from another one, by batch and one by
one, with up to 10,000 candidates, and asserts that no card is recovered and why.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, func, select

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.formats import BUILTIN_FORMATS, hidden_candidates, may_converge
from policies.loader import parse_policy
from vault.errors import (
    BatchItemInvalid,
    FormatNotApplicable,
    IdempotencyConflict,
    InvalidPan,
    OracleSuspected,
    VaultError,
)
from vault.pan import Pan, luhn_check_digit
from vault.service import CallContext, TokenizeRequest, VaultService
from vault.storage.database import create_database_engine, migrate
from vault.storage.schema import tokens

FORMATS = sorted(BUILTIN_FORMATS)
MAX_CANDIDATES = 10_000
# One by one is slow only where nothing stops the attacker early (fresh UUIDs); the
# answer is the same as for the batch of 10,000.
MAX_SINGLES = 1_000
ALL = '["pan_bin6_last4", "pan_bin8_last4", "pan_last4", "pan_fpe", "uuid"]'
POLICY = f"""
[identities."spiffe://cofre/victim"]
operations = ["tokenize", "detokenize_masked", "lookup"]
formats = {ALL}
reveal = "masked"

[identities."spiffe://cofre/attacker"]
operations = ["tokenize", "detokenize_masked", "lookup"]
formats = {ALL}
reveal = "masked"
"""
VICTIM = CallContext("spiffe://cofre/victim", "req-victim")
ATTACKER = CallContext("spiffe://cofre/attacker", "req-attacker")


@pytest.fixture(scope="module")
def oracle_service(
    tmp_path_factory: pytest.TempPathFactory, softhsm_provider: HSMProvider
) -> Iterator[tuple[VaultService, Engine]]:
    # One store for the whole matrix: every case draws its own random card, so cases do
    # not share an oracle bucket. The guard is the vault's, not the HSM's: one backend.
    path = tmp_path_factory.mktemp("oracle") / "cofre.sqlite3"
    engine = create_database_engine(f"sqlite:///{path}")
    migrate(engine)
    service = VaultService(
        engine, softhsm_provider, PolicyEngine(parse_policy(POLICY, kind="toml").policy)
    )
    service.initialize()
    yield service, engine
    service.close()
    engine.dispose()


def victim_card(length: int, known_leading: int = 6) -> str:
    """A random Luhn-valid card whose hidden digits do not start with 0, so that an
    attacker enumerating in order does not meet it among the first guesses by luck."""
    digits = ["4", *(secrets.choice("0123456789") for _ in range(length - 2))]
    digits[known_leading] = secrets.choice("123456789")
    body = "".join(digits)
    return body + luhn_check_digit(body)


def candidates(card: str, known_leading: int, known_trailing: int) -> Iterator[str]:
    """Every Luhn-valid card with `card`'s visible digits, in numeric order."""
    prefix, suffix = card[:known_leading], card[len(card) - known_trailing :]
    hidden = len(card) - known_leading - known_trailing
    for middle in itertools.product("0123456789", repeat=hidden):
        guess = prefix + "".join(middle) + suffix
        if Pan(guess).luhn_valid():
            yield guess


@dataclass
class Outcome:
    recovered: bool = False
    refused: VaultError | None = None
    tried: int = 0


def attack(
    service: VaultService,
    attacker: CallContext,
    fmt: str,
    card: str,
    victim_token: str,
    *,
    batch: bool,
) -> Outcome:
    spec = BUILTIN_FORMATS[fmt]
    guesses = list(
        itertools.islice(
            candidates(card, max(spec.keep_leading, 6), max(spec.keep_trailing, 4)),
            MAX_CANDIDATES if batch else MAX_SINGLES,
        )
    )
    # The worst case for the vault: the real card is among the guesses.
    if card not in guesses:
        guesses[-1] = card
    outcome = Outcome()
    try:
        if batch:
            for start in range(0, len(guesses), 1000):
                chunk = guesses[start : start + 1000]
                results = service.tokenize_batch(
                    attacker, [TokenizeRequest(pan=Pan(g), format=fmt) for g in chunk]
                )
                outcome.tried += len(chunk)
                outcome.recovered |= any(r.token == victim_token for r in results)
        else:
            for guess in guesses:
                result = service.tokenize(attacker, TokenizeRequest(pan=Pan(guess), format=fmt))
                outcome.tried += 1
                outcome.recovered |= result.token == victim_token
    except (OracleSuspected, BatchItemInvalid) as exc:
        outcome.refused = exc
    return outcome


CASES = [
    (fmt, length)
    for fmt in FORMATS
    for length in range(13, 20)
    if length in BUILTIN_FORMATS[fmt].pan_lengths
]


@pytest.mark.hsm
@pytest.mark.parametrize("batch", [True, False], ids=["batch", "singles"])
@pytest.mark.parametrize("who", ["same-identity", "cross-identity"])
@pytest.mark.parametrize(("fmt", "length"), CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_no_pan_is_recovered_through_tokenize(
    oracle_service: tuple[VaultService, Engine], fmt: str, length: int, who: str, batch: bool
) -> None:
    service, _ = oracle_service
    spec = BUILTIN_FORMATS[fmt]
    card = victim_card(length, max(spec.keep_leading, 6))
    victim_token = service.tokenize(VICTIM, TokenizeRequest(pan=Pan(card), format=fmt)).token
    attacker = VICTIM if who == "same-identity" else ATTACKER

    outcome = attack(service, attacker, fmt, card, victim_token, batch=batch)

    assert not outcome.recovered, f"{fmt} on {length} digits gave the card away"
    # What stopped it:
    if may_converge(spec, length):
        # Enough hidden digits for convergence: the guard refuses long before the
        # attacker reaches the card (its hidden digits do not start with 0).
        assert hidden_candidates(spec, length) >= 100_000
        assert isinstance(outcome.refused, OracleSuspected)
        assert outcome.tried <= (0 if batch else 10)
    # Too few hidden digits: every call answers a fresh token, so there is nothing to
    # compare a guess with; random-digit formats are also capped by the guard, since
    # each fresh token uses up a small space.
    elif spec.type.value == "random":
        assert isinstance(outcome.refused, OracleSuspected)
    else:
        assert outcome.refused is None


@pytest.mark.hsm
def test_the_guard_refusal_writes_nothing_and_is_audited(
    oracle_service: tuple[VaultService, Engine],
) -> None:
    service, engine = oracle_service
    card = victim_card(16)
    guesses = list(itertools.islice(candidates(card, 6, 4), 50))
    with engine.connect() as connection:
        before = connection.execute(select(func.count()).select_from(tokens)).scalar()
    with pytest.raises(OracleSuspected) as refused:
        service.tokenize_batch(
            ATTACKER, [TokenizeRequest(pan=Pan(g), format="pan_bin6_last4") for g in guesses]
        )
    assert refused.value.code == "oracle_suspected"
    assert refused.value.retry_after > 0
    with engine.connect() as connection:
        after = connection.execute(select(func.count()).select_from(tokens)).scalar()
        entry = connection.exec_driver_sql(
            "SELECT payload FROM audit_entries ORDER BY rowid DESC LIMIT 1"
        ).scalar()
    assert after == before  # all or nothing: not one token of the batch was stored
    assert entry is not None
    assert '"oracle_suspected"' in entry
    assert '"denied"' in entry


@pytest.mark.hsm
def test_luhn_failures_are_refused(oracle_service: tuple[VaultService, Engine]) -> None:
    service, _ = oracle_service
    with pytest.raises(InvalidPan) as refused:
        service.tokenize(VICTIM, TokenizeRequest(pan=Pan("4111111111111112"), format="uuid"))
    assert refused.value.code == "invalid_pan"
    assert "4111111111111112" not in str(refused.value)


@pytest.mark.hsm
@pytest.mark.parametrize("batch", [False, True], ids=["singles", "batch"])
@pytest.mark.parametrize("first", ["new", "converged"])
def test_idempotency_conflicts_count_against_the_guard(
    oracle_service: tuple[VaultService, Engine], batch: bool, first: str
) -> None:
    """The owner knows the key it tokenized a card with: a guess sent with that key is
    answered 409 idempotency_conflict when wrong and with the token when right. A
    conflict rolled back the guard's rows (and the rate charge) with it, so guesses were
    never counted: 45 wrong guesses then the card, over mTLS against `cofre dev`. A key
    first answered by convergence (the card held already) was recorded nowhere: the
    first guess took it (review tok, F2)."""
    service, _ = oracle_service
    card = victim_card(16)
    key = f"order-{secrets.token_hex(4)}"
    if first == "converged":
        service.tokenize(VICTIM, TokenizeRequest(Pan(card), "pan_bin6_last4"))
    service.tokenize(VICTIM, TokenizeRequest(Pan(card), "pan_bin6_last4", idempotency_key=key))
    guesses = [g for g in itertools.islice(candidates(card, 6, 4), 50) if g != card]
    guesses.append(card)
    refused: VaultError | None = None
    recovered = False
    conflicts: list[str] = []
    chunks = (
        [guesses[i : i + 5] for i in range(0, len(guesses), 5)] if batch else [[g] for g in guesses]
    )
    for chunk in chunks:
        requests = [TokenizeRequest(Pan(g), "pan_bin6_last4", idempotency_key=key) for g in chunk]
        try:
            service.tokenize_batch(VICTIM, requests) if batch else service.tokenize(
                VICTIM, requests[0]
            )
            recovered = True
        except OracleSuspected as exc:
            refused = exc
            break
        except (IdempotencyConflict, BatchItemInvalid) as exc:
            conflicts.append(exc.code)
    assert not recovered
    assert isinstance(refused, OracleSuspected)
    assert set(conflicts) <= {"idempotency_conflict", "batch_item_invalid"}


@pytest.mark.hsm
@pytest.mark.parametrize("fmt", ["pan_bin6_last4", "pan_last4", "uuid"])
def test_lookup_answers_nothing_a_guess_could_confirm_in_a_small_space(
    oracle_service: tuple[VaultService, Engine], fmt: str
) -> None:
    """A 13-digit card hides 100 candidates: tokenize answers a fresh token there, but
    lookup found it, so ten guesses a day (the guard) recovered one card in ten."""
    service, _ = oracle_service
    card = victim_card(13)
    service.tokenize(VICTIM, TokenizeRequest(Pan(card), fmt))
    guesses = [g for g in itertools.islice(candidates(card, 6, 4), 8) if g != card] + [card]
    found = [g for g in guesses if service.lookup(VICTIM, Pan(g), fmt)]
    assert found == []
    # A 16-digit card leaves 10^5: lookup answers as before (guarded).
    long_card = victim_card(16)
    record = service.tokenize(VICTIM, TokenizeRequest(Pan(long_card), fmt))
    assert [r.token for r in service.lookup(VICTIM, Pan(long_card))] == [record.token]


@pytest.mark.hsm
def test_idempotency_keys_are_refused_in_a_small_space(
    oracle_service: tuple[VaultService, Engine],
) -> None:
    """With its key, a 13-digit card's 100 candidates could be tested ten a day (the
    guard): 409 for a wrong one, the token for the right one. Refused on the input."""
    service, _ = oracle_service
    card = victim_card(13)
    with pytest.raises(FormatNotApplicable) as refused:
        service.tokenize(VICTIM, TokenizeRequest(Pan(card), "pan_bin6_last4", idempotency_key="k"))
    assert refused.value.code == "format_not_applicable"
    assert card not in str(refused.value)
