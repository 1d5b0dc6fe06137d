"""Session 37: a capture whose body never ends, sent to the capture listener (the port
anyone on the internet reaches) over real TLS."""

from __future__ import annotations

import ssl

from tests.api.conftest import VaultServer
from tests.api.test_cap35_capture_connections import _browser, _listener
from tests.api.test_capture_listener import capture_vault

__all__ = ["capture_vault"]  # the fixture, imported for the tests here


def test_a_body_sent_a_byte_at_a_time_is_cut_off_at_the_body_deadline(
    capture_vault: VaultServer,
) -> None:
    """Body slowloris (held): a capture that announces a body within the limit and
    sends it one byte at a time is closed at the body deadline, not held open by each
    byte. The test sends until the listener closes, or until a bound far past the
    deadline (a hang, never a judgement of time)."""
    head = (
        b"POST /v1/capture/cs_" + b"q" * 32 + b" HTTP/1.1\r\nHost: localhost\r\n"
        b"Origin: https://shop.example\r\nContent-Type: application/json\r\n"
        b"Content-Length: 4000\r\n\r\n"
    )
    with _listener(capture_vault, body_timeout=1) as port:
        conn = _browser(port, capture_vault.pki.ca, "127.0.0.6")
        conn.sendall(head)
        conn.settimeout(0.1)
        closed = False
        try:
            for _ in range(4000):  # 4,000 bytes at 0.1 s or more each: 400 s at the least
                try:
                    conn.sendall(b" ")
                    if conn.recv(1024) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except (ConnectionError, ssl.SSLError):
                    closed = True
                    break
        finally:
            conn.close()
    assert closed
