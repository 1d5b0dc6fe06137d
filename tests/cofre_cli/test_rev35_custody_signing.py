"""Review 35: `cofre keys acknowledge-custody` signed, with the officer's token key,
whatever text the vault it reached sent as "the statement".

That key is also the officers' second factor, the one that signs key ceremony actions
(RFC 9421); a stored proposal or approval counts only with such a signature
(`vault.approval_proof`: "a database writer cannot forge a proof"). An operator who
controls a vault node (its TLS key, its database: the lone operator of the threat
model) answered the command with an approval's signature base instead of a statement:
the token signed it (with ``--yes``, or a person pressing y at text they did not read;
session 34's upgrade notes send every officer to run the command), and the signature
made a proof that the vault and the offline verifier take as the officer's approval
of a ceremony they never saw. The CLI now signs only a custody statement
(`vault.custody.is_custody_statement`): canonical JSON of the six fields, this type and
this text, which no signature base is.

A real officer token (SoftHSM), the real CLI in its own process, real TLS to a node
that answers with the bait.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.officers import token_officers
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault
from vault.approval_proof import SignedAction, approval_path, approval_problem
from vault.httpsig import HttpRequest, sign_request

STATEMENT = "/v1/admin/keys/custody/statement"


class _Node(ThreadingHTTPServer):
    bait: str
    posted: list[dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    server: _Node

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == STATEMENT:
            self._answer(200, {"statement": self.server.bait})
        else:
            self._answer(404, {"code": "not_found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.server.posted.append(json.loads(self.rfile.read(length)))
        self._answer(201, {"identity": "spiffe://cofre/officer-bob", "keyid": "k"})

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def vault(tmp_path: Path, softhsm_token: SoftHSMToken) -> VaultProcess:
    """The vault's configuration, PKI and officer tokens; no vault runs on its port."""
    return make_vault(tmp_path / "v", softhsm_token, None)


@pytest.fixture
def node(vault: VaultProcess) -> Iterator[_Node]:
    """What answers the CLI on the vault's address: a node its operator controls."""
    server = _Node(("127.0.0.1", vault.port), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(vault.pki.server_cert), str(vault.pki.server_key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.posted = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_cli_signs_nothing_but_a_custody_statement(
    vault: VaultProcess, node: _Node, softhsm_token: SoftHSMToken
) -> None:
    bob = token_officers(softhsm_token)["officer-bob"]
    ceremony, authority = str(uuid.uuid4()), f"127.0.0.1:{vault.port}"
    request = {
        "authority": authority,
        "keyid": bob.keyid,
        "nonce": "bait-nonce-0123456789",
        "created": int(time.time()),
    }
    bases: list[bytes] = []

    def capture(base: bytes) -> bytes:
        bases.append(base)
        return bytes(64)

    path = approval_path(ceremony)
    sign_request("POST", path, "", b"", **request, sign=capture)  # type: ignore[arg-type]
    node.bait = bases[0].decode()

    signed = vault.cofre("keys", "acknowledge-custody", "--as", "officer-bob", "--yes")

    if node.posted:
        # What the token signed, as the proof of an approval the node's operator stores.
        signature = base64.b64decode(node.posted[0]["signature"])
        headers = sign_request("POST", path, "", b"", **request, sign=lambda _: signature)  # type: ignore[arg-type]
        proof = SignedAction.of(HttpRequest("POST", path, "", {"host": authority, **headers}, b""))
        problem = approval_problem(proof.to_json(), bob.pem.encode(), ceremony, ["127.0.0.1"])
        pytest.fail(
            "the officer's token signed what the node sent; as an approval proof of "
            f"ceremony {ceremony} it is {'valid' if problem is None else problem}"
        )
    assert signed.returncode == 1, signed.stdout + signed.stderr
    assert "not a key custody statement" in signed.stderr
