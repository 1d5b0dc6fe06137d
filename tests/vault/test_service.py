"""The vault service on SQLite and PostgreSQL: every operation, its audit entry, its
failures, and the guarantees of the acceptance list."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from audit.errors import AuditWriteFailed
from audit.sequencer import Sequencer
from audit.store import AuditStore
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied, RateLimited
from policies.formats import FormatSpec
from policies.loader import parse_policy
from policies.models import RateLimit
from tests.support.audit_trail import break_audit_writes
from tests.vault.conftest import GETNET, LEDGER, OFFICER, PAYMENTS, STRANGER, TEST_POLICY
from vault.errors import (
    BatchItemInvalid,
    FormatNotApplicable,
    IdempotencyConflict,
    IntegrityError,
    InvalidMetadata,
    InvalidTTL,
    TokenExpired,
    TokenNotFound,
)
from vault.limits import Limits
from vault.operations.tokenize import TokenizeOperations
from vault.pan import Pan, luhn_check_digit, luhn_valid
from vault.service import TokenizeRequest, VaultService
from vault.signing import HSMTreeHeadSigner

VISA = Pan("4111111111111111")
MC = Pan("5555555555554444")
AMEX = Pan("378282246310005")


def _pan(i: int, length: int = 16) -> Pan:
    body = f"4{i:0{length - 2}d}"
    return Pan(body + luhn_check_digit(body))


def _audit_actions(engine: Engine) -> list[str]:
    with engine.connect() as c:
        payloads = c.execute(sa.text("SELECT payload FROM audit_entries ORDER BY id")).scalars()
        return [p.split('"action":"')[1].split('"')[0] for p in payloads]


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.text(sql)).scalar_one())


def test_tokenize_detokenize_round_trip(service: VaultService, engine: Engine) -> None:
    record = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4"))
    assert len(record.token) == 16
    assert record.token[:6] == "411111"
    assert record.token[-4:] == "1111"
    assert not luhn_valid(record.token)
    revealed = service.detokenize(GETNET, record.token)
    assert revealed.pan == VISA
    masked = service.detokenize(LEDGER, record.token)
    assert masked.pan is None
    assert masked.masked == "411111******1111"
    assert service.detokenize_masked(PAYMENTS, record.token).masked == "411111******1111"
    assert _audit_actions(engine)[-4:] == [
        "tokenize",
        "detokenize",
        "detokenize",
        "detokenize_masked",
    ]


def test_convergent_and_random_dedup(service: VaultService) -> None:
    first = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4"))
    again = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4"))
    assert again.token == first.token
    assert again.existing
    other_format = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_last4"))
    assert other_format.token != first.token
    r1 = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random"))
    r2 = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random"))
    assert r1.token != r2.token


@pytest.mark.parametrize("fmt", ["pan_fpe", "card_fpe_any", "uuid", "card_pass", "pan_bin8_last4"])
def test_every_format_round_trips(service: VaultService, fmt: str) -> None:
    record = service.tokenize(PAYMENTS, TokenizeRequest(MC, fmt))
    assert service.detokenize(GETNET, record.token).pan == MC
    if fmt == "card_pass":
        assert luhn_valid(record.token)
    if fmt.startswith("pan_fpe"):
        assert service.tokenize(PAYMENTS, TokenizeRequest(MC, fmt)).token == record.token


def test_format_not_applicable_and_denials(service: VaultService, engine: Engine) -> None:
    with pytest.raises(FormatNotApplicable):
        service.tokenize(PAYMENTS, TokenizeRequest(AMEX, "pan_fpe"))
    with pytest.raises(PolicyDenied):
        service.tokenize(STRANGER, TokenizeRequest(VISA, "pan_bin6_last4"))
    with pytest.raises(PolicyDenied):
        service.tokenize(GETNET, TokenizeRequest(VISA, "pan_bin6_last4"))
    token = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4")).token
    with pytest.raises(PolicyDenied):
        service.detokenize(PAYMENTS, token)
    with pytest.raises(PolicyDenied):
        service.detokenize(OFFICER, token)
    with engine.connect() as c:
        denied = c.execute(
            sa.text(
                'SELECT count(*) FROM audit_entries WHERE payload LIKE \'%"outcome":"denied"%\''
            )
        ).scalar_one()
    assert denied == 4


def test_missing_expired_deleted(service: VaultService) -> None:
    now = [datetime.now(UTC)]
    service._clock = lambda: now[0]  # type: ignore[method-assign]
    with pytest.raises(TokenNotFound):
        service.detokenize(GETNET, "4111110000001111")
    record = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random", ttl_seconds=60))
    assert record.expires_at is not None
    now[0] += timedelta(seconds=61)
    with pytest.raises(TokenExpired):
        service.detokenize(GETNET, record.token)
    assert service.purge_expired() == 1
    with pytest.raises(TokenNotFound):
        service.detokenize(GETNET, record.token)
    live = service.tokenize(PAYMENTS, TokenizeRequest(MC, "card_random"))
    assert service.delete(PAYMENTS, live.token) is True
    assert service.delete(PAYMENTS, live.token) is False
    with pytest.raises(TokenNotFound):
        service.detokenize(GETNET, live.token)
    with pytest.raises(TokenNotFound):
        service.delete(PAYMENTS, "0000000000000000")


def test_expired_convergent_token_is_replaced(service: VaultService) -> None:
    now = [datetime.now(UTC)]
    service._clock = lambda: now[0]  # type: ignore[method-assign]
    first = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4", ttl_seconds=5))
    now[0] += timedelta(seconds=10)
    second = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4"))
    assert second.token != first.token
    assert service.detokenize(GETNET, second.token).pan == VISA


def test_crypto_shred_leaves_tombstone(service: VaultService, engine: Engine) -> None:
    record = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random"))
    service.delete(PAYMENTS, record.token)
    with engine.connect() as c:
        row = c.execute(
            sa.text(
                "SELECT ciphertext, nonce, fingerprint, deleted_at FROM tokens WHERE token = :t"
            ),
            {"t": record.token},
        ).one()
    assert row.ciphertext is None
    assert row.nonce is None
    assert row.fingerprint is None
    assert row.deleted_at is not None


def test_lookup_and_metadata(service: VaultService) -> None:
    a = service.tokenize(
        PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4", metadata={"order": "A-1"})
    )
    b = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_last4"))
    found = service.lookup(PAYMENTS, VISA)
    assert {r.token for r in found} == {a.token, b.token}
    assert [r.token for r in service.lookup(PAYMENTS, VISA, "pan_last4")] == [b.token]
    assert service.lookup(PAYMENTS, MC) == []
    info = service.token_info(PAYMENTS, a.token)
    assert info.metadata == {"order": "A-1"}
    assert info.format == "pan_bin6_last4"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"k": "card 4111111111111111"}, "looks like a card number"),
        ({"k" * 65: "v"}, "1 to 64"),
        ({"bad key": "v"}, "letters"),
        ({"k": "v" * 257}, "at most 256"),
        ({f"k{i}": "v" for i in range(17)}, "at most 16"),
        ({"k": 5}, "strings"),
    ],
)
def test_metadata_rules(service: VaultService, metadata: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidMetadata, match=message):
        service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4", metadata=metadata))  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [0, -5, 10**10])
def test_bad_ttl(service: VaultService, ttl: int) -> None:
    with pytest.raises(InvalidTTL):
        service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4", ttl_seconds=ttl))


def test_idempotency(service: VaultService) -> None:
    first = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random", idempotency_key="k1"))
    again = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random", idempotency_key="k1"))
    assert again.token == first.token
    with pytest.raises(IdempotencyConflict):
        service.tokenize(PAYMENTS, TokenizeRequest(MC, "card_random", idempotency_key="k1"))


def test_moved_ciphertext_fails_integrity(service: VaultService, engine: Engine) -> None:
    a = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random"))
    b = service.tokenize(PAYMENTS, TokenizeRequest(MC, "card_random"))
    with engine.begin() as c:
        row = c.execute(
            sa.text("SELECT nonce, ciphertext FROM tokens WHERE token=:t"), {"t": a.token}
        ).one()
        c.execute(
            sa.text("UPDATE tokens SET nonce=:n, ciphertext=:c WHERE token=:t"),
            {"n": row.nonce, "c": row.ciphertext, "t": b.token},
        )
    with pytest.raises(IntegrityError):
        service.detokenize(GETNET, b.token)
    assert service.detokenize(GETNET, a.token).pan == VISA


def test_every_card_of_a_batch_is_sealed_under_its_own_nonce(
    service: VaultService, engine: Engine
) -> None:
    # A batch's nonces come from one random draw (issue 21): each card still gets its
    # own twelve bytes, and each opens again to its own card.
    requests = [TokenizeRequest(_pan(100 + i), "pan_bin6_last4") for i in range(40)]
    records = service.tokenize_batch(PAYMENTS, requests)
    with engine.connect() as c:
        nonces = [
            bytes(n)
            for (n,) in c.execute(
                sa.text("SELECT nonce FROM tokens WHERE id IN :ids").bindparams(
                    sa.bindparam("ids", expanding=True)
                ),
                {"ids": [r.token_id for r in records]},
            )
        ]
    assert len(nonces) == 40
    assert all(len(n) == 12 for n in nonces)
    assert len(set(nonces)) == 40
    revealed = service.detokenize_batch(GETNET, [r.token for r in records])
    assert [r.pan for r in revealed] == [r.pan for r in requests]


def test_no_token_equals_a_card_stored_by_the_same_call(
    service: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review 14: the held-PAN check read only the store, where the call's own cards are
    # not yet. Two cards of one bucket in a batch: the first one's draw is forced to be
    # the second card (a real draw hits 1 in the bucket's size).
    a, b = [Pan(d) for d in (f"411111{m:06d}1111" for m in range(100)) if luhn_valid(d)][:2]
    real = TokenizeOperations._first_candidate

    def draw(
        self: TokenizeOperations, spec: FormatSpec, pan: Pan, domain: str, *draws: Any
    ) -> str:  # `draws`: a batch's random source (`_plan`), passed on as it came
        return b.reveal() if pan == a else real(self, spec, pan, domain, *draws)

    monkeypatch.setattr(TokenizeOperations, "_first_candidate", draw)
    records = service.tokenize_batch(
        PAYMENTS, [TokenizeRequest(a, "card_pass"), TokenizeRequest(b, "card_pass")]
    )
    assert {r.token for r in records}.isdisjoint({a.reveal(), b.reveal()})
    revealed = service.detokenize_batch(GETNET, [r.token for r in records])
    assert [r.pan for r in revealed] == [a, b]


def test_batch_all_or_nothing(service: VaultService, engine: Engine) -> None:
    before = _count(engine, "SELECT count(*) FROM tokens")
    requests = [TokenizeRequest(_pan(i), "pan_bin6_last4") for i in range(5)]
    requests[3] = TokenizeRequest(AMEX, "pan_fpe")
    with pytest.raises(BatchItemInvalid) as info:
        service.tokenize_batch(PAYMENTS, requests)
    assert info.value.index == 3
    assert info.value.item_code == "format_not_applicable"
    assert _count(engine, "SELECT count(*) FROM tokens") == before
    good = [TokenizeRequest(_pan(i), "pan_bin6_last4") for i in range(5)]
    good.append(TokenizeRequest(_pan(2), "pan_bin6_last4"))  # same PAN twice: one token
    records = service.tokenize_batch(PAYMENTS, good)
    assert records[2].token == records[5].token
    revealed = service.detokenize_batch(GETNET, [r.token for r in records])
    assert [r.pan for r in revealed] == [r.pan for r in good]
    with pytest.raises(BatchItemInvalid) as info:
        service.detokenize_batch(GETNET, [records[0].token, "9999999999999999"])
    assert info.value.index == 1


def test_batch_hmacs_each_card_once_and_none_for_a_refused_batch(
    service: VaultService, hsm_provider: HSMProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[bytes] = []
    many = hsm_provider.hmac_sha256_many

    def counted(label: str, messages: list[bytes]) -> list[bytes]:
        sent.extend(messages)
        return many(label, messages)

    monkeypatch.setattr(hsm_provider, "hmac_sha256_many", counted)
    bad = [TokenizeRequest(_pan(i), "pan_bin6_last4") for i in range(300, 305)]
    bad.append(TokenizeRequest(AMEX, "pan_fpe"))
    with pytest.raises(BatchItemInvalid):
        service.tokenize_batch(PAYMENTS, bad)
    assert sent == []  # every item is checked before any HSM call
    good = [TokenizeRequest(_pan(300 + i % 3), "pan_bin6_last4") for i in range(9)]
    records = service.tokenize_batch(PAYMENTS, good)
    assert sorted(sent) == sorted(_pan(300 + i).reveal().encode() for i in range(3))
    assert [r.token for r in records[3:]] == [r.token for r in records[:3]] * 2
    single = service.tokenize(PAYMENTS, TokenizeRequest(_pan(301), "pan_bin6_last4"))
    assert single.token == records[1].token
    assert single.existing


def test_early_rate_check_reads_the_clock_after_its_connection(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    # Under load a batch may wait for a pooled connection while other batches commit
    # and move the limit's clock-time forward: compared with a time read before the
    # wait, a limit with room to spare looked spent (429 "retry after 0.6s" at a
    # millionth of the limit, bench.api on PostgreSQL).
    text = TEST_POLICY.replace(
        "oracle_guard = { max_pans_per_bucket = 100000 }",
        "oracle_guard = { max_pans_per_bucket = 100000 }\n"
        "rate_limit = { per_second = 1000, burst = 1000 }",
    )
    start = datetime(2026, 3, 1, tzinfo=UTC)
    clock = [start + timedelta(seconds=1.5)]
    svc = VaultService(
        engine,
        hsm_provider,
        PolicyEngine(parse_policy(text, kind="toml").policy),
        clock=lambda: clock[0],
    )
    svc.initialize()
    try:
        svc.tokenize_batch(PAYMENTS, [TokenizeRequest(_pan(i), "uuid") for i in range(10)])
        clock[0] = start  # the next call starts 1.5 s earlier, then waits for a connection

        def waited(*_: object) -> None:
            clock[0] = start + timedelta(seconds=1.5)

        sa.event.listen(engine, "engine_connect", waited)
        try:
            later = [TokenizeRequest(_pan(i), "uuid") for i in range(10, 20)]
            assert len(svc.tokenize_batch(PAYMENTS, later)) == 10
        finally:
            sa.event.remove(engine, "engine_connect", waited)
    finally:
        svc.close()


def test_a_charge_that_waited_behind_a_later_one_is_judged_at_its_clock(engine: Engine) -> None:
    # The charge reads the clock, then may wait for the bucket's row lock while another
    # transaction charges it at a later time: refused against that later time, a limit
    # with room to spare looked spent (PostgreSQL, batch load).
    limits, limit, t = Limits(), RateLimit(per_second=1000, burst=1000), 1_800_000_000.0
    with engine.begin() as connection:
        limits.charge_rate(connection, "who", limit, 10, t + 1.5)
    with pytest.raises(RateLimited), engine.begin() as connection:
        limits.charge_rate(connection, "who", limit, 10, t)
    with engine.begin() as connection:
        limits.charge_rate(connection, "who", limit, 10, t, clock=lambda: t + 1.5)
    with pytest.raises(RateLimited), engine.begin() as connection:  # a spent limit stays so
        limits.charge_rate(connection, "who", limit, 990, t + 1.5, clock=lambda: t + 1.5)


def test_failed_audit_write_returns_no_token(service: VaultService, engine: Engine) -> None:
    break_audit_writes(engine)
    before = _count(engine, "SELECT count(*) FROM tokens")
    with pytest.raises(AuditWriteFailed):
        service.tokenize(PAYMENTS, TokenizeRequest(_pan(77), "pan_bin6_last4"))
    assert _count(engine, "SELECT count(*) FROM tokens") == before


@pytest.mark.parametrize(
    "call",
    ["detokenize", "detokenize_masked", "detokenize_batch", "token_info", "lookup", "delete"],
)
def test_nothing_is_answered_or_changed_when_the_audit_entry_cannot_be_written(
    service: VaultService, engine: Engine, call: str
) -> None:
    """Fail closed on every read and delete, not only tokenize: no PAN (full or masked),
    no record, no lookup hit and no deletion without its audit entry."""
    pan = _pan(78)
    token = service.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4")).token
    break_audit_writes(engine)
    tokens = _count(engine, "SELECT count(*) FROM tokens")
    calls = {
        "detokenize": lambda: service.detokenize(GETNET, token),
        "detokenize_masked": lambda: service.detokenize_masked(PAYMENTS, token),
        "detokenize_batch": lambda: service.detokenize_batch(GETNET, [token]),
        "token_info": lambda: service.token_info(PAYMENTS, token),
        "lookup": lambda: service.lookup(PAYMENTS, pan),
        "delete": lambda: service.delete(PAYMENTS, token),
    }
    with pytest.raises(AuditWriteFailed):
        calls[call]()
    assert _count(engine, "SELECT count(*) FROM tokens") == tokens
    with engine.begin() as c:
        c.execute(
            sa.text("DROP TRIGGER fail_audit")
            if engine.dialect.name == "sqlite"
            else sa.text("ALTER TABLE audit_entries DROP CONSTRAINT fail_audit")
        )
    assert service.detokenize(GETNET, token).pan == pan


def test_convergent_concurrency(service: VaultService, engine: Engine) -> None:
    """8 threads x 500 convergent tokenize calls over the same 50 PANs: 50 tokens and
    4,000 audit entries."""
    pans = [_pan(1000 + i) for i in range(50)]
    results: list[tuple[Pan, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        try:
            for i in range(500):
                pan = pans[(i + offset) % 50]
                token = service.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4")).token
                with lock:
                    results.append((pan, token))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    audit_before = _count(engine, "SELECT count(*) FROM audit_entries")
    threads = [threading.Thread(target=worker, args=(k * 7,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 4000
    by_pan: dict[Pan, set[str]] = {}
    for pan, token in results:
        by_pan.setdefault(pan, set()).add(token)
    assert all(len(tokens) == 1 for tokens in by_pan.values())
    assert _count(engine, "SELECT count(*) FROM tokens WHERE format='pan_bin6_last4'") == 50
    assert _count(engine, "SELECT count(*) FROM audit_entries") - audit_before == 4000
    assert Counter(a for a in _audit_actions(engine)[-4000:]) == {"tokenize": 4000}


def test_audit_log_of_operations_verifies(
    service: VaultService, engine: Engine, hsm_provider: HSMProvider
) -> None:
    record = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4"))
    service.detokenize(GETNET, record.token)
    signer = HSMTreeHeadSigner(hsm_provider, "cofre-audit-v1")
    Sequencer(engine, signer).drain()
    report = AuditStore(engine).verify(signer.public_key_pem())
    assert report.entries >= 4  # key creation x2, tokenize, detokenize


def test_policy_reload_is_audited(service: VaultService, engine: Engine) -> None:
    service.replace_policy(
        PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy), actor="cofre", source="test"
    )
    assert _audit_actions(engine)[-1] == "policy.reload"


def test_batch_path_matches_single_path(service: VaultService, engine: Engine) -> None:
    existing = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4"))
    small = Pan("411111001110")  # 12 digits, bin6+last4: two free digits, 90 fail-Luhn tokens
    items = [
        TokenizeRequest(VISA, "pan_bin6_last4"),  # existing convergent token
        TokenizeRequest(MC, "card_pass"),
        TokenizeRequest(MC, "uuid"),
        TokenizeRequest(MC, "card_random"),
        TokenizeRequest(MC, "card_random"),  # random dedup: a second token
        TokenizeRequest(MC, "pan_fpe"),
        *[TokenizeRequest(small, "card_random") for _ in range(30)],  # forces collisions
    ]
    audit_before = _count(engine, "SELECT count(*) FROM audit_entries")
    records = service.tokenize_batch(PAYMENTS, items)
    assert records[0].token == existing.token
    assert records[0].existing
    assert luhn_valid(records[1].token)
    assert records[3].token != records[4].token
    smalls = [r.token for r in records[6:]]
    assert len(set(smalls)) == 30
    assert all(t[:6] == "411111" and t[-4:] == "1110" and not luhn_valid(t) for t in smalls)
    for request, record in zip(items, records, strict=True):
        assert service.detokenize(GETNET, record.token).pan == request.pan
    # One audit entry per item, plus one per detokenize above.
    assert _count(engine, "SELECT count(*) FROM audit_entries") - audit_before == 2 * len(items)


def test_an_expired_fingerprint_key_list_is_read_by_one_caller_at_a_time(
    service: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load every thread met the expired list at once and each listed the token
    (issue 21); now one reads it while the others answer from the list they have."""
    registry = service._keyring.registry
    listed = registry.versions
    reading, release = threading.Event(), threading.Event()
    reads = []

    def slow_versions(kind: object) -> list[int]:
        reads.append(kind)
        if len(reads) == 1:  # the first reader holds on until the others have answered
            reading.set()
            release.wait()
        return listed(kind)  # type: ignore[arg-type]

    known = service._fingerprint_versions()
    service._fp_read = time.monotonic() - 2.0  # expired, without waiting for the clock
    monkeypatch.setattr(registry, "versions", slow_versions)
    first = threading.Thread(target=service._fingerprint_versions)
    first.start()
    assert reading.wait(timeout=30)
    others = [service._fingerprint_versions() for _ in range(5)]  # answered meanwhile
    release.set()
    first.join()
    assert others == [known] * 5
    assert len(reads) == 1


def test_a_fingerprint_key_list_too_old_is_not_served_while_it_is_read(
    service: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of the lever above: a listing that hangs must not leave the other callers
    on the old list indefinitely (through a fingerprint rotation they would mint a
    second token for a card). Past 5 s they wait for the reader."""
    registry = service._keyring.registry
    listed = registry.versions
    reading, release, answered = threading.Event(), threading.Event(), threading.Event()

    def slow_versions(kind: object) -> list[int]:
        reading.set()
        release.wait()
        return listed(kind)  # type: ignore[arg-type]

    service._fingerprint_versions()
    service._fp_read = time.monotonic() - 60.0
    monkeypatch.setattr(registry, "versions", slow_versions)
    first = threading.Thread(target=service._fingerprint_versions)
    first.start()
    assert reading.wait(timeout=30)
    other = threading.Thread(target=lambda: (service._fingerprint_versions(), answered.set()))
    other.start()
    assert not answered.wait(timeout=0.5)  # waits for the reader, not the old list
    release.set()
    first.join()
    other.join()
    assert answered.is_set()
