"""Review 37: `runtime.close` closes the relay's HTTP clients under a relay still running
past the drain bound; a retry then got httpx's RuntimeError, which escaped the vault's
error handling, so no outcome entry was written for a card that went upstream."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from cofre.errors import CofreError
from tests.support.fake_acquirer import plain_route
from vault.relay_client import RelayClient


def test_a_relay_cut_by_the_close_at_the_drain_bound_still_raises_a_cofre_error() -> None:
    """`runtime.close` closes the relay's clients under a relay still running (past the
    drain bound). A retry (PUT / idempotent routes) then gets httpx's RuntimeError
    ('the client has been closed'), not an `httpx.HTTPError`: it escapes
    `VaultService.relay`'s `except CofreError`, so no outcome entry is written for a
    relay whose PAN went upstream (its `relay.send` entry is there)."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = int(blackhole.getsockname()[1])
    fillers = []
    for _ in range(4):  # a full accept queue: further SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.3)
    route = plain_route(port).model_copy(
        update={"method": "PUT", "retries": 1, "timeout_seconds": 2.0}
    )
    client = RelayClient()
    raised: list[BaseException] = []

    def call() -> None:
        try:
            client.send("down", route, {"amount": 1})
        except BaseException as exc:  # noqa: BLE001
            raised.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)
    client.close()  # runtime.close at the bound
    thread.join(30)
    for sock in [blackhole, *fillers]:
        sock.close()
    assert raised
    assert isinstance(raised[0], CofreError), raised
