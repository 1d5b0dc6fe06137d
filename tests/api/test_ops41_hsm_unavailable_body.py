"""What a caller learns from a 503 `hsm_unavailable` (session 41), on a real `cofre serve`
over mTLS with its own copy of the real SoftHSM token.

Session 40's answer to a worker out of file descriptors named the node's limits in its
problem detail (`RLIMIT_NOFILE soft 3, hard 1048576: EMFILE`), and other HSM outages
named the library's path or the token's label: any client with a certificate learnt the
node's configuration, and could tell one cause from another. The body now says the one
generic `hsm_unavailable` detail, byte for byte the same whatever the cause; the cause
with its numbers goes to the request's log line and the ERROR line the on-call reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.test_guard40_hsm_open_files import _limit, _open_files
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, log_events, make_vault, scrape

CARD = {"pan": "4111111111111111", "format": "uuid"}
SAME_ID = {"x-request-id": "ops41-same-request"}


@pytest.fixture
def vault(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[VaultProcess]:
    node = make_vault(tmp_path / "node", softhsm_token, None)
    node.env["COFRE_LOG_LEVEL"] = "INFO"  # the request's log line, where the cause goes
    node.env["COFRE_SERVER__METRICS_PORT"] = str(free_port())
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _refused(client: httpx.Client) -> tuple[httpx.Response, httpx.Response]:
    return (
        client.post("/v1/tokenize", json=CARD, headers=SAME_ID),
        client.get("/readyz", headers=SAME_ID),
    )


def test_two_hsm_outages_answer_the_same_bytes(vault: VaultProcess) -> None:
    assert vault.process is not None
    pid = vault.process.pid
    with vault.client() as client:
        assert client.post("/v1/tokenize", json=CARD).status_code in (200, 201)
        soft = _limit(pid, "SOFT")
        hard = _limit(pid, "HARD")
        _open_files(pid, "3")  # out of descriptors
        try:
            starved = _refused(client)
        finally:
            _open_files(pid, soft)
        assert client.post("/v1/tokenize", json=CARD).status_code in (200, 201)
        tokens = vault.log.parent / "tokens"
        aside = tokens.with_name("tokens-aside")
        tokens.rename(aside)  # the token gone
        try:
            gone = _refused(client)
        finally:
            aside.rename(tokens)
    for first, second in zip(starved, gone, strict=True):
        assert first.status_code == second.status_code == 503, (first.text, second.text)
        assert first.json()["code"] == "hsm_unavailable", first.text
        assert first.content == second.content, (first.text, second.text)
        assert "RLIMIT_NOFILE" not in first.text, first.text
        assert hard not in first.text, first.text
    # The on-call still reads the cause with the node's numbers: the request's log line
    # and the ERROR line.
    events = log_events(vault.log)
    requests = [e for e in events if e.get("request_id") == SAME_ID["x-request-id"]]
    assert any(f"hard {hard}" in str(e.get("detail")) for e in requests), requests
    errors = [e for e in events if e.get("level") == "error"]
    assert any(f"RLIMIT_NOFILE soft 3, hard {hard}" in str(e) for e in errors), errors[-5:]
    # And the worker's metrics: its limits and the descriptors it holds.
    port = vault.env["COFRE_SERVER__METRICS_PORT"]
    gauges = {
        line.split('kind="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scrape(f"http://127.0.0.1:{port}/metrics").splitlines()
        if line.startswith("cofre_process_open_files{")
    }
    assert gauges["soft_limit"] == float(soft), gauges
    assert gauges["hard_limit"] == float(hard), gauges
    assert 0 < gauges["open"] < float(soft), gauges
