"""Session 35, telemetry reviewed as an attacker and an on-call engineer would: the
Prometheus port and the OTLP export of a real `cofre serve` process.

- The metrics port is plain HTTP with no identity (any pod of the monitoring namespace
  reaches it, and nothing there is in PCI scope). Each scrape ran the gauges'
  callbacks: an HSM key listing and database reads (a full count of the security codes
  among them), once per GET, however many scrapers asked at once; and an idle
  connection held a thread of the vault process for as long as it stayed open.
- A collector that accepts connections and never answers (a black hole: a node gone
  behind a load balancer, a full queue) made the last telemetry flush of a stopping
  vault wait out the SDK's own limits, one signal after another: past the pod's
  termination grace period, so the kubelet killed every stop.

Counts, not clocks: the waits below are bounded and fail only on a hang.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.observability import OncePer
from api.otlp import stop_within
from tests.support.pans import card_number
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault
from vault.errors import StorageUnavailable

# More than the listener serves at once (`api.metrics.MAX_SCRAPE_CONNECTIONS`).
IDLE_CONNECTIONS = 100
_HSM_CALLS = re.compile(r"^cofre_hsm_duration_milliseconds_count\{[^}]*\}\s+(\S+)$", re.M)


@pytest.fixture
def metered(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[tuple[VaultProcess, int]]:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    port = free_port()
    vault.env["COFRE_SERVER__METRICS_PORT"] = str(port)
    vault.start()
    try:
        yield vault, port
    finally:
        vault.stop()


def _scrape(port: int) -> str:
    for _ in range(600):  # the listener binds as the worker starts; bounded, not timed
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        assert response.status_code == 200, response.text
        return response.text
    pytest.fail("the metrics listener never answered")


def _hsm_calls(text: str) -> float:
    """Every HSM call the node has timed (all operations), from one scrape."""
    return sum(float(value) for value in _HSM_CALLS.findall(text))


def test_finding_a_flood_of_scrapes_does_not_make_a_flood_of_hsm_calls(
    metered: tuple[VaultProcess, int],
) -> None:
    """40 scrapes in a row: before, 40 HSM key listings (one per GET, by anyone who
    can reach the port); now the callbacks that touch the HSM or the database run at
    most once per `METRIC_CALLBACK_SECONDS`, however many scrapers ask. The bound
    below fails only if 40 scrapes took minutes."""
    _, port = metered
    scrapes = 40
    before = _hsm_calls(_scrape(port))
    for _ in range(scrapes):
        _scrape(port)
    after = _hsm_calls(_scrape(port))
    assert after - before < scrapes / 4, (before, after)


def test_finding_idle_connections_to_the_metrics_port_are_closed(
    metered: tuple[VaultProcess, int],
) -> None:
    """More idle connections than the listener serves at once, each sending nothing:
    each is closed by the listener (before, each held a thread of the vault for as long
    as it stayed open), and a scrape is answered while they are held."""
    vault, port = metered
    _scrape(port)
    idle = [
        socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(IDLE_CONNECTIONS)
    ]
    try:
        answered = False
        for _ in range(200):  # bounded: fails only if every attempt was refused
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
            except httpx.TransportError:
                time.sleep(0.1)  # the held places free as their connections time out
                continue
            if response.status_code == 200:
                answered = True
                break
        assert answered, "no scrape answered while idle connections were held"
        for conn in idle:
            # The listener's close reads as b"" (or a reset); a hang reads as the
            # 60 s timeout above, and fails.
            with contextlib.suppress(ConnectionResetError):
                assert conn.recv(1) == b""
    finally:
        for conn in idle:
            conn.close()
    assert vault.process is not None
    assert vault.process.poll() is None


def test_finding_a_black_holed_collector_does_not_hold_a_stopping_vault(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """A collector that takes the connection and never answers, with a 60 s export
    timeout (``OTEL_EXPORTER_OTLP_TIMEOUT``, the operator's to set): the vault stops
    within its own telemetry budget. Before, each signal's flush waited out the SDK's
    30 s, one after another (about 90 s: killed by the kubelet at the 65 s grace
    period). The bound fails only when the stop waits on the collector."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # accepted by the kernel, never answered
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    vault.env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{hole.getsockname()[1]}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "60",
            "OTEL_TRACES_SAMPLER": "always_on",
            "COFRE_LOG_LEVEL": "INFO",
        }
    )
    try:
        vault.start()
        with vault.client() as client:
            for i in range(5):
                made = client.post(
                    "/v1/tokenize", json={"pan": card_number("4", 700 + i), "format": "uuid"}
                )
                assert made.status_code == 200, made.text
        assert vault.process is not None
        vault.process.terminate()
        assert vault.process.wait(timeout=45) == 0
        log = vault.log.read_text(errors="replace")
        assert "telemetry export cut short" in log
        # Nothing after it: the SDK's exit hook no longer shuts the meter provider twice.
        assert "shutdown can only be called once" not in log
    finally:
        vault.stop()
        hole.close()


def test_a_gauge_callback_runs_once_per_interval_its_failure_too() -> None:
    """`OncePer` with a clock the test moves: one run answers every call within the
    interval, a `CofreError` included (an HSM that is down is not asked by every
    scraper), and the next interval runs it again."""
    now = [100.0]
    runs: list[int] = []

    def read() -> int:
        runs.append(1)
        if len(runs) == 2:
            raise StorageUnavailable("the database is down")
        return len(runs)

    once = OncePer(read, seconds=5.0, clock=lambda: now[0])
    assert [once(), once(), once()] == [1, 1, 1]
    now[0] += 5.0
    for _ in range(3):
        with pytest.raises(StorageUnavailable):
            once()
    now[0] += 5.0
    assert once() == 3
    assert len(runs) == 3


def test_concurrent_collections_share_one_run() -> None:
    """Scrapes arriving during a run wait for it and take its answer."""
    entered, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def read() -> int:
        runs.append(1)
        entered.set()
        assert release.wait(60)
        return 7

    once = OncePer(read, seconds=5.0)
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(once())) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert entered.wait(60)
    release.set()
    for thread in threads:
        thread.join(60)
    assert answers == [7] * 8
    assert runs == [1]


def test_stop_within_runs_every_stop_at_once_and_names_the_late() -> None:
    """Two stops that each wait for the other finish only if they run at once (before,
    the signals stopped one after another); a stop still running at the budget's end is
    named. The 60 s bound fails only on a hang."""
    first, second = threading.Event(), threading.Event()

    def traces() -> None:
        first.set()
        assert second.wait(60)

    def logs() -> None:
        second.set()
        assert first.wait(60)

    assert stop_within(60.0, {"traces": traces, "logs": logs}) == []
    stuck = threading.Event()

    def metrics() -> None:
        stuck.wait(60)

    assert stop_within(0.0, {"metrics": metrics}) == ["metrics"]
    stuck.set()


def _handshake_failures(port: int) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in _scrape(port).splitlines()
        if line.startswith("cofre_tls_handshake_failures_total{")
    )


def test_finding_a_flood_of_failed_handshakes_is_counted_not_logged_one_line_each(
    metered: tuple[VaultProcess, int],
) -> None:
    """Anyone who reaches the mTLS port (no certificate needed) sends plain HTTP 200
    times: each is a failed handshake, counted. Before, each was also a log line of its
    own (a log flood at the rate of the attacker's connections, and the log's cost on
    the event loop); now one line per listener and reason per
    `api.handshake.LOG_EVERY_SECONDS`, naming how many were not logged. The bound fails
    only if the 200 took minutes."""
    vault, port = metered
    attempts = 200
    before = _handshake_failures(port)
    for _ in range(attempts):
        with socket.create_connection(("127.0.0.1", vault.port), timeout=30) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                while raw.recv(4096):
                    pass
    for _ in range(600):  # the server counts after the client has seen the close
        if _handshake_failures(port) - before >= attempts:
            break
        time.sleep(0.05)
    assert _handshake_failures(port) - before == attempts
    lines = [
        line
        for line in vault.log.read_text(errors="replace").splitlines()
        if '"tls handshake failed"' in line and '"HTTP_REQUEST"' in line
    ]
    assert len(lines) < attempts / 4, len(lines)


def _distinct_requests(vault: VaultProcess, round_: int) -> None:
    """Requests whose every caller-chosen value is new: paths, a token, a format name,
    a relay route, an idempotency key, a request id, a header's name and value, a JSON
    key, a card number with separators in the path and in a header."""
    pan = card_number("4", 900 + round_)
    spaced = " ".join(pan[i : i + 4] for i in range(0, 16, 4))
    with vault.client() as client:
        for n in range(10):
            tag = f"r{round_}n{n}"
            headers = {
                "x-request-id": f"id-{tag}",
                f"x-made-up-{tag}": pan,
                "x-card": spaced,
                "idempotency-key": f"key-{tag}",
            }
            client.get(f"/v1/tokens/tok-{tag}", headers=headers)
            client.get(f"/nowhere/{tag}/{spaced}", headers=headers)
            client.post(
                "/v1/tokenize",
                json={"pan": pan, "format": f"fmt-{tag}", f"key-{tag}": 1},
                headers=headers,
            )
            client.post(f"/v1/relay/route-{tag}", json={"a": tag}, headers=headers)
            client.post(
                "/v1/tokenize/batch",
                json={"items": [{"pan": pan, "format": f"fmt-{tag}"}] * 3},
                headers=headers,
            )


def test_caller_chosen_values_never_become_metric_labels(
    metered: tuple[VaultProcess, int],
) -> None:
    """A guard, not a finding (main already held): requests whose every caller-chosen
    value is new leave none of those values in `/metrics` (its labels are route
    templates, known methods, statuses and codes: a bounded set, however many distinct
    values arrive), and no card number either."""
    vault, port = metered
    _distinct_requests(vault, 1)
    _distinct_requests(vault, 2)
    scraped = _scrape(port)
    assert "cofre_http_requests_total{" in scraped
    for chosen in ("r1n", "r2n", "tok-", "fmt-", "route-", "nowhere", "key-", "x-made-up"):
        assert chosen not in scraped, chosen
    # The card as it was sent, whole or in groups (the scrape's floats hold Luhn-valid
    # digit runs by chance: the scan's second rule is not for this text).
    for round_ in (1, 2):
        pan = card_number("4", 900 + round_)
        spaced = " ".join(pan[i : i + 4] for i in range(0, 16, 4))
        assert pan not in scraped
        assert spaced not in scraped
        assert spaced.replace(" ", "%20") not in scraped
