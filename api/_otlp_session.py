"""The HTTP session the OTLP/HTTP exporters send with (`api.otlp`).

IN PCI SCOPE (it runs in the vault process). The exporters' own `requests` session
made each connection's TLS context with urllib3, which writes every session secret to
the file ``SSLKEYLOGFILE`` names, and trusted a CA file ``REQUESTS_CA_BUNDLE`` or
``CURL_CA_BUNDLE`` names in place of certifi's (review 35: with such a file and a
capture, or that CA, the collector's bearer token in ``OTEL_EXPORTER_OTLP_HEADERS``
and every span and log line were read on the way). This session's connections use one
context of `cofre.tls.client_context`: the collector's CA that
``OTEL_EXPORTER_OTLP_[SIGNAL_]CERTIFICATE`` names, else certifi's, and no key log. An
``HTTPS_PROXY`` is still used: a CONNECT tunnel, the TLS to the collector inside it.
A session from ``OTEL_PYTHON_EXPORTER_OTLP_HTTP_<SIGNAL>_CREDENTIAL_PROVIDER`` is not:
it would bring TLS of its own.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from cofre.tls import client_context

__all__ = ["otlp_session"]


class _PinnedAdapter(HTTPAdapter):
    """Every connection, direct or through a proxy's tunnel, with one given context
    (urllib3 loads into it only what the session verifies with: the same CA file)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(
            connections, maxsize, block, **{**pool_kwargs, "ssl_context": self._context}
        )

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        return super().proxy_manager_for(proxy, **{**proxy_kwargs, "ssl_context": self._context})


class _PinnedSession(requests.Session):
    """A session that verifies with what it was told (`verify`), never with a CA file
    the environment names; proxies from the environment are still used."""

    def merge_environment_settings(
        self,
        url: str,
        proxies: Any,
        stream: Any,
        verify: Any,
        cert: Any,
    ) -> dict[str, Any]:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self.verify if verify is None else verify
        return settings


def otlp_session(signal: str, environ: Mapping[str, str]) -> requests.Session:
    """The session for `signal`'s exporter: its TLS trusts the CA file
    ``OTEL_EXPORTER_OTLP_<SIGNAL>_CERTIFICATE`` or ``OTEL_EXPORTER_OTLP_CERTIFICATE``
    names (what the exporter verifies with too), else certifi's public CAs.

    Raises `OSError` or `ssl.SSLError` when that file cannot be read.
    """
    ca = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_CERTIFICATE") or environ.get(
        "OTEL_EXPORTER_OTLP_CERTIFICATE"
    )
    session = _PinnedSession()
    session.mount("https://", _PinnedAdapter(client_context(ca or None)))
    return session
