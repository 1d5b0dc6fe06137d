"""A plain-TCP test server: accepts on 127.0.0.1 and serves each connection in a
thread of its own (small upstreams for the relay's tests)."""

from __future__ import annotations

import socket
import threading


class ThreadedTcpServer:
    """Counts the connections it accepts and runs `_run` on each in its own thread;
    subclasses say what a connection is answered."""

    def __init__(self) -> None:
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(connection,), daemon=True).start()

    def _run(self, connection: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._server.close()
