"""IN PCI SCOPE: the FastAPI application served over mutual TLS, and the capture
listener for browsers (server TLS, hosted card fields: `api.capture`).

The only package that imports FastAPI. Callers are identified by the SAN URI of their
verified client certificate, never by a header.
"""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "accept",
    "app",
    "balance",
    "capture",
    "connections",
    "crl",
    "dependencies",
    "errors",
    "exception_handlers",
    "guard",
    "handshake",
    "health",
    "hotroutes",
    "lifecycle",
    "metrics",
    "mfa",
    "models",
    "observability",
    "otlp",
    "pki",
    "problems",
    "refusals",
    "routes",
    "server",
    "tls",
]
