"""Two vault processes on one PostgreSQL enforce one rate limit, one quota and one oracle
guard (issue 17): the counters live in the database, not in each process, so N nodes do
not allow N times the limit, and a batch of N costs N."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.pans import GENERATED, card_number
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import POLICY, make_vault
from vault.pan import luhn_check_digit

LIMITS = (
    POLICY.replace(
        # store: 30 units, refilled at one every 1,000 s (none during the test)
        'read_domains = ["spiffe://cofre/payments"]\nrate_limit = { per_second = 500, '
        "burst = 1000 }",
        'read_domains = ["spiffe://cofre/payments"]\nrate_limit = { per_second = 0.001, '
        "burst = 30 }",
        1,
    )
    .replace("quota = { detokenize_per_day = 1000000 }", "quota = { detokenize_per_day = 5 }", 1)
    .replace(
        "oracle_guard = { max_pans_per_bucket = 100000,",
        "oracle_guard = { max_pans_per_bucket = 4,",
    )
)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_nodes_enforce_one_limit_one_quota_one_guard(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    assert LIMITS.count("burst = 30") == 1
    assert LIMITS.count("detokenize_per_day = 5") == 1
    shared_tokens = tmp_path / "tokens"
    shutil.copytree(softhsm_token.token_dir, shared_tokens)
    nodes = [
        make_vault(tmp_path / f"node{n}", softhsm_token, pg_database, token_dir=shared_tokens)
        for n in (1, 2)
    ]
    for node in nodes:
        (Path(node.env["COFRE_POLICY_FILE"])).write_text(LIMITS)
        node.start()
    a, b = nodes

    def batch(node_: object, identity: str, cards: list[str]) -> int:
        with node_.client(identity) as c:  # type: ignore[attr-defined]
            return int(
                c.post(
                    "/v1/tokenize/batch",
                    json={"items": [{"pan": p, "format": "uuid"} for p in cards]},
                ).status_code
            )

    cards = [card_number("4000", i) for i in range(40)]
    # Rate: 30 units across both nodes. A batch of 20 on A, then 20 on B is refused (10
    # left, a batch of N costs N), 10 on B pass, and A has nothing left.
    assert batch(a, "store", cards[:20]) == 200
    assert batch(b, "store", cards[20:40]) == 429
    assert batch(b, "store", cards[20:30]) == 200
    with a.client("store") as c:
        refused = c.post("/v1/tokenize", json={"pan": cards[30], "format": "uuid"})
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1

    # Quota: 5 detokenize a day for the ledger, across both nodes.
    with a.client("payments") as c:
        tokens = [
            c.post("/v1/tokenize", json={"pan": p, "format": "pan_bin6_last4"}).json()["token"]
            for p in cards[:6]
        ]
    with a.client("ledger") as c:
        assert c.post("/v1/detokenize/batch", json={"tokens": tokens[:3]}).status_code == 200
    with b.client("ledger") as c:
        assert c.post("/v1/detokenize/batch", json={"tokens": tokens[3:5]}).status_code == 200
        over = c.post("/v1/detokenize", json={"token": tokens[5]})
    assert over.status_code == 429
    assert over.json()["code"] == "quota_exceeded"
    with a.client("ledger") as c:
        assert c.post("/v1/detokenize", json={"token": tokens[5]}).status_code == 429

    # Oracle guard: 4 different cards of one BIN and last four per identity, both nodes.
    bodies = [f"411111{i:06d}000" for i in range(200)]
    bucket = [b + luhn_check_digit(b) for b in bodies if luhn_check_digit(b) == "7"]
    GENERATED.update(bucket)  # the session's leak scan looks for them byte for byte
    assert len(bucket) >= 6
    with a.client("payments") as c:
        for p in bucket[:2]:
            assert (
                c.post("/v1/tokenize", json={"pan": p, "format": "pan_bin6_last4"}).status_code
                == 200
            )
    with b.client("payments") as c:
        for p in bucket[2:4]:
            assert (
                c.post("/v1/tokenize", json={"pan": p, "format": "pan_bin6_last4"}).status_code
                == 200
            )
        guessed = c.post("/v1/tokenize", json={"pan": bucket[4], "format": "pan_bin6_last4"})
    assert guessed.status_code == 429
    assert guessed.json()["code"] == "oracle_suspected"
    for node in nodes:
        node.stop()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_one_stolen_certificate_gets_its_burst_and_no_more_across_workers_and_nodes(
    tmp_path: Path, softhsm_token: SoftHSMToken, database_url: str
) -> None:
    """Issue 21's attack: one stolen certificate floods two nodes of two workers each at
    once, singles and batches mixed, so that the calls race into every worker's commit
    groups together. The bucket (burst 30, no refill meanwhile) grants exactly 30 units
    across all four committers; every refused call is the 429 it always was, and wrote
    nothing."""
    if database_url.startswith("sqlite"):
        database_url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    shared_tokens = tmp_path / "tokens"
    shutil.copytree(softhsm_token.token_dir, shared_tokens)
    nodes = [
        make_vault(tmp_path / f"node{n}", softhsm_token, database_url, token_dir=shared_tokens)
        for n in (1, 2)
    ]
    for node in nodes:
        (Path(node.env["COFRE_POLICY_FILE"])).write_text(LIMITS)
        node.env["COFRE_SERVER__WORKERS"] = "2"
        node.start()
    # 48 calls: 36 singles and 12 batches of 3 (72 units asked, 30 granted).
    calls = [[card_number("4000", 1000 + i)] for i in range(36)] + [
        [card_number("4000", 2000 + 3 * i + k) for k in range(3)] for i in range(12)
    ]

    def send(index: int) -> tuple[int, int, dict[str, object], str | None]:
        cards = calls[index]
        # A fresh connection per call: the kernel spreads them over both workers.
        with nodes[index % 2].client("store") as c:
            if len(cards) == 1:
                r = c.post("/v1/tokenize", json={"pan": cards[0], "format": "uuid"})
            else:
                r = c.post(
                    "/v1/tokenize/batch",
                    json={"items": [{"pan": p, "format": "uuid"} for p in cards]},
                )
        return len(cards), r.status_code, r.json(), r.headers.get("retry-after")

    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(send, range(len(calls))))
    finally:
        for node in nodes:
            node.stop()
    granted = sum(cost for cost, status, _, _ in answers if status == 200)
    assert granted == 30
    for _, status, body, retry_after in answers:
        if status == 200:
            continue
        assert status == 429, body
        assert body["code"] == "rate_limited"
        assert retry_after is not None
        assert int(retry_after) >= 1
    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            stored = c.execute(
                text("SELECT count(*) FROM tokens WHERE owner = :o"), {"o": "spiffe://cofre/store"}
            ).scalar()
    finally:
        engine.dispose()
    assert stored == 30
