"""A test shop on loopback: a checkout page that embeds Cofre's hosted card fields, and
the shop's backend behind it, which holds only tokens.

The backend is outside PCI scope, as a real shop's would be: it opens a capture session
through the payments adapter (`adapters.services.PaymentsAdapter`), renders the page
with the session's id and secret, and on ``POST /pay`` authorizes the token it gets
through the Getnet adapter. Every request it receives and everything it logs is written
under its directory, where the session's PAN leak scan reads it
(tests/support/leakguard.py).
"""

from __future__ import annotations

import html
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from adapters.client import CaptureSession
from adapters.services import Authorization, PaymentsAdapter

SHOP_SCRIPT = """\
(function () {
  "use strict";
  var page = document.documentElement;
  var result = document.getElementById("result");
  var fields = Cofre.mount({
    container: "#card",
    session: page.getAttribute("data-session"),
    secret: page.getAttribute("data-secret"),
    style: { color: "#123456", fontFamily: "monospace" },
    onToken: function (card) {
      result.textContent = "paying with " + card.masked_pan;
      fetch("/pay", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: card.token, expiry: card.expiry })
      }).then(function (r) { return r.json(); }).then(function (answer) {
        result.textContent = answer.approved ? "approved " + answer.authorization_code
                                             : "declined";
        result.setAttribute("data-token", card.token);
      });
    },
    onError: function (problem) {
      result.textContent = "error " + problem.code;
      console.log("capture refused: " + problem.code);
    }
  });
  document.getElementById("pay").addEventListener("click", function () { fields.submit(); });
}());
"""


@dataclass
class Shop:
    """The shop: `start()` it, open `url` in a browser."""

    root: Path
    payments: PaymentsAdapter
    capture_origin: str
    capture_script_integrity: str
    port: int = 0
    sessions: list[CaptureSession] = field(default_factory=list)
    authorizations: list[Authorization] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    on_pay: Callable[[str], None] | None = None

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def requests_log(self) -> Path:
        return self.root / "shop-requests.log"

    @property
    def backend_log(self) -> Path:
        return self.root / "shop-backend.log"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # One logger per shop, named by its directory: an `id(self)` in the name is a
        # 15-digit address that passes Luhn one time in ten and tripped the leak scan.
        log = logging.getLogger(f"shop.{self.root.name}")
        log.setLevel(logging.DEBUG)
        handler = logging.FileHandler(self.backend_log)
        log.addHandler(handler)
        self._log_handler = handler
        self._log = log
        shop = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                shop._log.info("%s %s", self.address_string(), format % args)

            def _record(self, body: bytes = b"") -> None:
                with shop.requests_log.open("ab") as out:
                    out.write(f"{self.command} {self.path}\n".encode() + bytes(self.headers))
                    out.write(body + b"\n")

            def _send(self, status: int, content_type: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                # The shop's own CSP: scripts only from itself and the capture origin,
                # frames only from the capture origin (docs/capture.md).
                self.send_header(
                    "content-security-policy",
                    f"default-src 'self'; script-src 'self' {shop.capture_origin}; "
                    f"frame-src {shop.capture_origin}; connect-src 'self'",
                )
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._record()
                if self.path == "/shop.js":
                    self._send(200, "text/javascript", SHOP_SCRIPT.encode())
                elif self.path == "/":
                    self._send(200, "text/html; charset=utf-8", shop._checkout_page())
                else:
                    self._send(404, "text/plain", b"not found")

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                self._record(body)
                if self.path != "/pay":
                    self._send(404, "text/plain", b"not found")
                    return
                token = str(json.loads(body)["token"])
                answer = shop.pay(token)
                self._send(200, "application/json", json.dumps(answer).encode())

        # On the port it was given (its origin is in the vault's policy), else any.
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._log.removeHandler(self._log_handler)
        self._log_handler.close()

    def _checkout_page(self) -> bytes:
        session = self.payments.open_checkout(self.url)
        self.sessions.append(session)
        self._log.info("capture session opened: %r", session)
        attributes = (
            f'data-session="{html.escape(session.session_id)}" '
            f'data-secret="{html.escape(session.client_secret)}"'
        )
        return f"""<!doctype html>
<html lang="en" {attributes}>
<head><meta charset="utf-8"><title>Checkout</title></head>
<body>
<h1>Checkout</h1>
<div id="card"></div>
<button id="pay" type="button">Pay</button>
<p id="result"></p>
<script src="{self.capture_origin}/v1/capture.js"
        integrity="{self.capture_script_integrity}" crossorigin="anonymous"></script>
<script src="/shop.js"></script>
</body>
</html>
""".encode()

    def pay(self, token: str) -> dict[str, Any]:
        """Authorize `token` (all the backend ever holds) through the Getnet adapter."""
        self.tokens.append(token)
        order = f"order-{len(self.authorizations) + 1}"
        authorization = self.payments.pay(order, token, Decimal("42.00"))
        self.authorizations.append(authorization)
        self._log.info("authorization for %s: %r", order, authorization)
        return {
            "approved": authorization.approved,
            "authorization_code": authorization.authorization_code,
        }
