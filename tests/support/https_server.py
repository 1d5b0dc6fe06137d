"""What the tests' small HTTPS servers on loopback share (`tests.support.tls_peer`,
`tests.support.fake_acquirer`): a handler served over TLS on 127.0.0.1, a port of the
kernel's choosing, in a thread of its own."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackHttps:
    """Serves a request handler over TLS on 127.0.0.1 once `_serve` runs; `stop` ends it."""

    port: int
    _server: ThreadingHTTPServer

    def _serve(self, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
