"""Session 37: one stolen certificate (the payments service) against three vault nodes of
two workers each on one PostgreSQL, through every endpoint that charges its bucket at
once, mixed: single and batch tokenize, lookup, metadata, masked reveal, delete and
update of tokens that do not exist (a miss costs what a hit costs), capture sessions.
Each call charges where it lands: its group's end since session 37 for all of them
(`vault._core.VaultCore._charge`). Across the six committers the bucket grants exactly
its burst, and every other call is `429 rate_limited`, never a 500 or a deadlock's
503."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.pans import card_number
from tests.support.policies import with_capture_origins
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import POLICY, make_vault

BURST = 40
UNLIMITED = "rate_limit = { per_second = 1000000, burst = 1000000 }"
# payments: 40 units, refilled at one every 1,000 s (none during the test).
LIMITED = with_capture_origins(
    POLICY.replace(UNLIMITED, f"rate_limit = {{ per_second = 0.001, burst = {BURST} }}", 1),
    ["https://shop.example"],
)
SESSION = {"origin": "https://shop.example", "formats": ["uuid"]}

# (cost, call): each answered 200/201 or 404 when charged, 429 when refused.
CALLS: list[tuple[int, Callable[[httpx.Client, int], httpx.Response]]] = [
    (
        1,
        lambda c, i: c.post("/v1/tokenize", json={"pan": card_number("4000", i), "format": "uuid"}),
    ),
    (
        3,
        lambda c, i: c.post(
            "/v1/tokenize/batch",
            json={
                "items": [
                    {"pan": card_number("4001", 3 * i + k), "format": "uuid"} for k in range(3)
                ]
            },
        ),
    ),
    (1, lambda c, i: c.post("/v1/lookup", json={"pan": card_number("4002", i)})),
    (1, lambda c, i: c.get(f"/v1/tokens/missing-{i}")),
    (1, lambda c, i: c.post("/v1/detokenize-masked", json={"token": f"missing-{i}"})),
    (1, lambda c, i: c.delete(f"/v1/tokens/missing-{i}")),
    (1, lambda c, i: c.patch(f"/v1/tokens/missing-{i}", json={"metadata": {"order": "1"}})),
    (1, lambda c, i: c.post("/v1/capture-sessions", json=SESSION)),
]


@pytest.mark.postgres
@pytest.mark.slow
def test_one_certificate_gets_its_burst_through_every_endpoint_on_three_nodes(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    assert LIMITED.count(f"burst = {BURST}") == 1
    shared_tokens = tmp_path / "tokens"
    shutil.copytree(softhsm_token.token_dir, shared_tokens)
    nodes = [
        make_vault(tmp_path / f"node{n}", softhsm_token, pg_database, token_dir=shared_tokens)
        for n in (1, 2, 3)
    ]
    try:
        for node in nodes:
            Path(node.env["COFRE_POLICY_FILE"]).write_text(LIMITED)
            node.env["COFRE_SERVER__WORKERS"] = "2"
            node.start()

        def send(index: int) -> tuple[int, int, dict[str, object]]:
            cost, call = CALLS[index % len(CALLS)]
            # A fresh connection per call: the kernel spreads them over both workers.
            with nodes[index % 3].client("payments") as c:
                r = call(c, 100 + index)
            return cost, r.status_code, r.json()

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(send, range(8 * len(CALLS))))
    finally:
        for node in nodes:
            node.stop()
    granted = sum(cost for cost, status, _ in answers if status in {200, 201, 404})
    assert granted == BURST, answers
    for _, status, body in answers:
        if status not in {200, 201, 404}:
            assert (status, body["code"]) == (429, "rate_limited"), body
