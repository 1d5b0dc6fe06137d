"""Two vault processes on one PostgreSQL enforce one rate limit, one quota and one oracle
guard (issue 17): the counters live in the database, not in each process, so N nodes do
not allow N times the limit, and a batch of N costs N."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
