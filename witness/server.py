"""The witness's HTTP listener (c2sp.org/tlog-witness), on the standard library's
threading HTTP server: no web framework, nothing shared with the vault's API.

    POST /add-checkpoint          old size, proof, blank line, checkpoint -> cosignature
    GET  /<sha256(origin)>/checkpoint   the last cosigned checkpoint of that log
    GET  /metrics                 Prometheus text: cosigned / refused by reason
    GET  /healthz                 "ok"

TLS is optional (the protocol allows either); give a certificate and key to serve HTTPS.
Each read from a client, and its TLS handshake, times out (`READ_TIMEOUT`) and closes its
connection, so clients that connect and go silent cannot hold the listener's threads; the
handshake runs in the connection's thread, so they cannot stop the accepting one either.
At most `MAX_CONNECTIONS` connections are handled at once, and `MAX_PER_ADDRESS` from one
IP address (IPv6 by its /64): a connection over either is closed unanswered, with no
thread started, and counted (`cofre_witness_connections_refused_total`), so clients that
open connections by the thousand cannot have a thread each and exhaust the process.
Configuration is files only (`WitnessConfig`): the Ed25519 key is read from a file,
never from the command line.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Final

from audit.errors import NoteError
from audit.note import CosignerKey, VerifierKey
from cofre.filemodes import refuse_readable_secrets
from cofre.origins import address_key
from cofre.tls import server_context
from witness.core import MAX_BODY, Witness
from witness.errors import CheckpointConflict, RequestMalformed, WitnessError
from witness.state import WitnessState

_log = logging.getLogger("cofre.witness")
_ORIGIN_PATH = re.compile(r"^/([0-9a-f]{64})/checkpoint$")
# Seconds the witness waits on each read from a client (request line, headers, body).
# Without a timeout a client that connects and sends nothing, or only part of its body,
# holds a handler thread for good (slowloris); enough of them exhaust the process. An
# honest submitter (the vault's publisher) sends its few KB at once: 30 s is ample.
READ_TIMEOUT: Final = 30.0
# Connections handled at once; each has a thread. The read timeout alone does not bound
# them: a client that sends a byte every 29 s, over thousands of connections, would get
# thousands of threads. A witness serves a handful of logs' publishers and monitors, each
# with a connection or two open at a time: 64 is ample, and bounds the threads and memory.
MAX_CONNECTIONS: Final = 64
# Of those, connections from one IP address, so one client cannot take every place and
# shut the logs' publishers out.
MAX_PER_ADDRESS: Final = 16


@dataclass(frozen=True)
class WitnessConfig:
    """Where the witness's key, state and trusted logs are, and where it listens."""

    key_file: Path
    state_file: Path
    logs_file: Path
    host: str = "127.0.0.1"
    port: int = 7380
    tls_cert: Path | None = None
    tls_key: Path | None = None


def read_logs(path: Path) -> dict[str, list[VerifierKey]]:
    """Return origin -> verifier keys from a file of vkeys, one a line ('#' comments).
    The origin of a log is its key's name. Raises `NoteError` naming the bad line."""
    logs: dict[str, list[VerifierKey]] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = VerifierKey.parse(line)
        except NoteError as exc:
            raise NoteError(f"{path}:{number}: {exc}") from None
        logs.setdefault(key.name, []).append(key)
    return logs


def read_key(path: Path) -> CosignerKey:
    """Return the witness's key from `path` (never echoed in an error)."""
    return CosignerKey.parse(path.read_text(encoding="utf-8"))


class _ConnectionLimit:
    """Counts the connections being handled, in total and by IP address; `admit` says
    whether one more may be, `release` ends one admitted (exactly once each)."""

    LIMITS: Final = ("max_connections", "max_per_address")

    def __init__(self, total: int, per_address: int) -> None:
        if total < 1 or per_address < 1:
            raise ValueError("connection limits must be at least 1")
        self.total, self.per_address = total, per_address
        self._lock = threading.Lock()
        self._open = 0
        self._by_address: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()  # by the limit that refused
        self._refusing = False  # whether the last connection was refused (logged once)

    def admit(self, address: str) -> str | None:
        """Count a connection from `address` in, or return the limit that refuses it. An
        IPv6 address counts by its /64 (`address_key`, as the vault's listeners count
        one): a host holds a whole /64, and a count per address gave it 2^64 budgets."""
        address = address_key(address)
        with self._lock:
            if self._open >= self.total:
                limit = "max_connections"
            elif self._by_address[address] >= self.per_address:
                limit = "max_per_address"
            else:
                self._open += 1
                self._by_address[address] += 1
                self._refusing = False
                return None
            self._refused[limit] += 1
            first, self._refusing = not self._refusing, True
        if first:  # once per run of refusals: a flood must not flood the log too
            _log.warning("%s: connection limit reached (%s), closing new ones", address, limit)
        return limit

    def release(self, address: str) -> None:
        address = address_key(address)
        with self._lock:
            self._open -= 1
            self._by_address[address] -= 1
            if not self._by_address[address]:
                del self._by_address[address]  # else an entry for every address ever seen

    def counts(self) -> tuple[int, dict[str, int]]:
        """The connections being handled, and those refused by each limit."""
        with self._lock:
            return self._open, {limit: self._refused[limit] for limit in self.LIMITS}


class _BoundedHTTPServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` that starts a connection's thread only if `limit` admits it,
    and otherwise closes the connection at once."""

    daemon_threads = True
    limit: _ConnectionLimit

    def process_request(self, request: Any, client_address: Any) -> None:
        address = str(client_address[0])
        if self.limit.admit(address) is not None:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self.limit.release(address)  # no thread: none will release it
            raise  # the accept loop logs it and closes the connection

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn's, with the release: whether the handler returned, raised, or
        # gave up on a TLS handshake, once, and before the close, so that a client that
        # sees its connection closed finds the place free.
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - as ThreadingMixIn: logged, the connection closed
            self.handle_error(request, client_address)
        finally:
            try:
                self.limit.release(str(client_address[0]))
            finally:
                self.shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    witness: ClassVar[Witness]
    connections: ClassVar[_ConnectionLimit]
    server_version = "cofre-witness"
    protocol_version = "HTTP/1.1"
    # StreamRequestHandler sets it on the connection's socket; a read that times out
    # ends the connection (BaseHTTPRequestHandler.handle_one_request).
    timeout = READ_TIMEOUT

    def log_message(self, format: str, *args: object) -> None:
        _log.info("%s %s", self.address_string(), format % args)

    def handle(self) -> None:
        # The TLS handshake runs here, in this connection's thread and under its read
        # timeout, not in accept(): there it would run in the one thread that accepts
        # connections, and a client that connected and sent nothing would stop the
        # whole witness (`WitnessServer` wraps with do_handshake_on_connect=False).
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except OSError as exc:  # ssl.SSLError, a timeout, a reset
                _log.info("%s TLS handshake failed: %s", self.address_string(), exc)
                self.close_connection = True
                return
        super().handle()

    def _answer(self, status: int, body: str = "", content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        if self.path != "/add-checkpoint":
            self._answer(404, "not found\n")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(411, "a Content-Length is required\n")
            return
        if not 0 <= length <= MAX_BODY:
            self._answer(413, "the body is too large\n")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        try:
            lines = self.witness.add_checkpoint(body)
        except CheckpointConflict as exc:
            self._answer(409, f"{exc.latest_size}\n", "text/x.tlog.size")
        except WitnessError as exc:
            self._answer(exc.status, f"{exc}\n")
        except Exception:  # noqa: BLE001 - an answer, never a dropped connection
            _log.exception("add-checkpoint failed")
            self._answer(500, "internal error\n")
        else:
            self._answer(200, lines)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(200, "ok\n")
            return
        if self.path == "/metrics":
            self._answer(200, self._metrics(), "text/plain; version=0.0.4")
            return
        match = _ORIGIN_PATH.match(self.path)
        note = self.witness.latest_note(match.group(1)) if match else None
        if note is None:
            self._answer(404, "not found\n")
        else:
            self._answer(200, note)

    def _metrics(self) -> str:
        out = [
            "# HELP cofre_witness_requests_total add-checkpoint requests by outcome",
            "# TYPE cofre_witness_requests_total counter",
        ]
        for outcome, count in sorted(self.witness.counted().items()):
            out.append(f'cofre_witness_requests_total{{outcome="{outcome}"}} {count}')
        open_now, refused = self.connections.counts()
        out += [
            "# HELP cofre_witness_connections_refused_total connections closed unanswered,"
            " by the limit they were over",
            "# TYPE cofre_witness_connections_refused_total counter",
            *(
                f'cofre_witness_connections_refused_total{{limit="{limit}"}} {count}'
                for limit, count in refused.items()
            ),
            "# HELP cofre_witness_connections_open connections being handled",
            "# TYPE cofre_witness_connections_open gauge",
            f"cofre_witness_connections_open {open_now}",
        ]
        return "\n".join(out) + "\n"


class WitnessServer:
    """A running witness: `start()` binds and serves in a thread, `stop()` ends it.
    `read_timeout` bounds each read from a client (`READ_TIMEOUT`; tests make it short),
    `max_connections` and `max_per_address` the connections handled at once, in all and
    from one IP address (`MAX_CONNECTIONS`, `MAX_PER_ADDRESS`; tests make them small)."""

    def __init__(
        self,
        config: WitnessConfig,
        *,
        read_timeout: float = READ_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_per_address: int = MAX_PER_ADDRESS,
    ) -> None:
        self.config = config
        limit = _ConnectionLimit(max_connections, max_per_address)
        # The key signs for the witness: a copy readable by anyone is a key anyone holds.
        refuse_readable_secrets(
            [("witness key file", config.key_file), ("TLS private key", config.tls_key)]
        )
        key, logs = read_key(config.key_file), read_logs(config.logs_file)
        self._state = WitnessState(config.state_file)
        witness = Witness(key, logs, self._state)
        handler = type(
            "WitnessHandler",
            (_Handler,),
            {"witness": witness, "connections": limit, "timeout": read_timeout},
        )
        self.witness = witness
        self._http = _BoundedHTTPServer((config.host, config.port), handler)
        self._http.limit = limit
        if config.tls_cert is not None:
            if config.tls_key is None:
                raise RequestMalformed("a TLS certificate needs its key")
            # Not `ssl.create_default_context`: it writes the session secrets to the
            # file SSLKEYLOGFILE names (review 35).
            context = server_context(config.tls_cert, config.tls_key)
            # The handshake is the handler's (`_Handler.handle`), never the accept loop's.
            self._http.socket = context.wrap_socket(
                self._http.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread: threading.Thread | None = None
        self._serving = False  # shutdown() waits for a serving loop: none, it never returned

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def serve_forever(self) -> None:
        self._serving = True
        self._http.serve_forever()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="cofre-witness")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        if self._serving:
            self._http.shutdown()
        self._http.server_close()
        self._state.close()
