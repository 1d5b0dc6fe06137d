"""The capture listener's response headers: the strict CSP and security headers every
answer carries, and the CORS headers an answer to a session's own origin carries (and
to no other origin: `readable_by`).

IN PCI SCOPE (the capture listener receives card data).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BASE_CSP",
    "SECURITY_HEADERS",
    "cors_headers",
    "readable_by",
    "security_headers",
]

# Nothing is loaded but this listener's own script and style; nothing may frame a page
# unless a session's origin is named (the hosted fields), and forms post nowhere.
BASE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'none'; font-src 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def security_headers(csp: str = BASE_CSP + "; frame-ancestors 'none'") -> dict[str, str]:
    return {**SECURITY_HEADERS, "Content-Security-Policy": csp}


def cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "content-type",
        "Access-Control-Max-Age": "60",
        "Vary": "Origin",
    }


def readable_by(origin: str | None, bound: str | None) -> dict[str, str]:
    """The CORS headers that let `origin` read a capture's answer: none unless it is
    the session's `bound` origin (a refusal to another origin stays unreadable to it;
    a refusal with no `bound` origin, to every origin)."""
    if origin is None or origin != bound:
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
