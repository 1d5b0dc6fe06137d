"""Helpers for bench/api.py: start the vault (or a bare FastAPI app) behind the same
uvicorn + mutual TLS settings in a child process, on a loopback port."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
    pki = DevPKI(Path(pki_root))
    build_server(
        bare_app(),
        "127.0.0.1",
        port,
        TLSFiles(cert=pki.server_cert, key=pki.server_key, ca_bundle=pki.ca),
        log_level="WARNING",
    ).run()


def run_vault(config: str) -> None:
    os.environ["COFRE_CONFIG"] = config
    from api.observability import configure_logging
    from cofre.settings import load_settings
    from cofre_cli.wiring import build_runtime, tls_files

    settings = load_settings()
    configure_logging("WARNING")
    runtime = build_runtime(settings)
    build_server(
        runtime.app,
        settings.server.host,
        settings.server.port,
        tls_files(settings),
        log_level="WARNING",
    ).run()


if __name__ == "__main__":
    if sys.argv[1] == "bare":
        run_bare(sys.argv[2], int(sys.argv[3]))
    else:
        run_vault(sys.argv[2])
