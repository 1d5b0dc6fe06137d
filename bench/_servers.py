"""Helpers for bench/api.py: the bare FastAPI baselines in a child process, on a
loopback port, client certificate required.

``bare`` is the issue's reference: uvicorn with httptools and uvloop, one process.
``bare-cofre`` is the same app behind Cofre's own uvicorn set-up (`api.server`), so the
report shows what the server set-up itself costs. The vault is started as production
starts it (`cofre serve`), by bench/api.py.
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from api.pki import DevPKI
from api.server import TLSFiles, build_server


def bare_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/tokenize")
    def tokenize(body: dict[str, str]) -> dict[str, str]:
        return {"token": body.get("pan", "")[::-1]}

    return app


def run_bare(pki_root: str, port: int) -> None:
    """uvicorn with httptools + uvloop, one process, client certificate required."""
    pki = DevPKI(Path(pki_root))
    uvicorn.Server(
        uvicorn.Config(
            bare_app(),
            host="127.0.0.1",
            port=port,
            http="httptools",
            loop="uvloop",
            ssl_certfile=str(pki.server_cert),
            ssl_keyfile=str(pki.server_key),
            ssl_ca_certs=str(pki.ca),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    ).run()


def run_bare_cofre(pki_root: str, port: int) -> None:
    """The same app on Cofre's server set-up (`api.server.build_server`)."""
    pki = DevPKI(Path(pki_root))
    build_server(
        bare_app(),
        "127.0.0.1",
        port,
        TLSFiles(cert=pki.server_cert, key=pki.server_key, ca_bundle=pki.ca),
        log_level="WARNING",
    ).run()


if __name__ == "__main__":
    if sys.argv[1] == "bare":
        run_bare(sys.argv[2], int(sys.argv[3]))
    else:
        run_bare_cofre(sys.argv[2], int(sys.argv[3]))
