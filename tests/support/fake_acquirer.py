"""A fake Getnet acquirer: a small HTTPS server on loopback that checks it receives a
valid card number and answers with an authorization (echoing the card, as some acquirers
do, so the vault's response tokenizing/masking is exercised)."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from api.pki import ensure_dev_pki
from policies.models import RelayRoute
from tests.support.https_server import LoopbackHttps
from vault.pan import luhn_valid


def plain_route(port: int, **changes: object) -> RelayRoute:
    """A relay route to plain HTTP on 127.0.0.1:`port` (a test's raw upstream; the
    policy itself takes only https, hence `model_construct`), with `changes`."""
    route = RelayRoute.model_construct(
        upstream=f"http://127.0.0.1:{port}/auth",
        method="POST",
        identities=frozenset({"spiffe://cofre/getnet-adapter"}),
        detokenize=(),
        card=None,
        response_tokenize={},
        timeout_seconds=1.0,
        retries=0,
        idempotent=False,
        ca_bundle=None,
    )
    return route.model_copy(update=changes)


@dataclass
class FakeAcquirer(LoopbackHttps):
    cert: Path
    key: Path
    received: list[dict[str, Any]] = field(default_factory=list)
    delay_seconds: float = 0.0
    port: int = 0
    # A test's own answer: the received body -> (status, JSON answer). Called in the
    # server's thread when the request arrives, so it can look at the vault's state then.
    answer: Callable[[dict[str, Any]], tuple[int, Any]] | None = None
    # Where to write what arrived, one JSON line each: a directory named
    # tests.support.leakguard.ACQUIRER_SIDE, which the leak scan skips by name (an
    # acquirer is where the card is meant to arrive).
    journal: Path | None = None
    # Headers a test's upstream adds to its answer, given the received body (an echo in a
    # Location or a Set-Cookie).
    headers: Callable[[dict[str, Any]], dict[str, str]] | None = None

    def start(self) -> None:
        acquirer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                acquirer.received.append(body)
                if acquirer.journal is not None:
                    acquirer.journal.parent.mkdir(parents=True, exist_ok=True)
                    with acquirer.journal.open("a") as out:
                        out.write(json.dumps(body) + "\n")
                if acquirer.delay_seconds:
                    time.sleep(acquirer.delay_seconds)
                if acquirer.answer is not None:
                    self._extra = {} if acquirer.headers is None else acquirer.headers(body)
                    self._answer(*acquirer.answer(body))
                    return
                number = str((body.get("card") or {}).get("number", ""))
                if not (number.isdigit() and 13 <= len(number) <= 19 and luhn_valid(number)):
                    self._answer(400, {"status": "DECLINED", "reason": "invalid card number"})
                    return
                self._answer(
                    200,
                    {
                        "status": "APPROVED",
                        "authorization_code": "A1B2C3",
                        "card": {"number": number},
                        "message": f"approved for card {number}",
                    },
                )

            def _answer(self, status: int, payload: Any) -> None:
                # Bytes are an answer that is no JSON (an XML or form body), sent as is.
                raw = isinstance(payload, bytes)
                data = payload if raw else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "text/plain" if raw else "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in getattr(self, "_extra", {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(self.key))
        self._serve(Handler, context)


@contextmanager
def running_acquirer(directory: Path) -> Iterator[FakeAcquirer]:
    """A `FakeAcquirer` behind server TLS, its certificate from a dev PKI made in
    `directory`; its CA, for a relay route's ``ca_bundle``, is `acquirer.ca`."""
    pki = ensure_dev_pki(directory, identities=("payments",))
    acquirer = FakeAcquirer(cert=pki.server_cert, key=pki.server_key)
    acquirer.start()
    acquirer.ca = pki.ca  # type: ignore[attr-defined]
    yield acquirer
    acquirer.stop()
