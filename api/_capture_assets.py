"""The capture listener's served assets and the hosted fields' page (`api.capture`
re-exports `asset` and `sri_hash`).

IN PCI SCOPE (the capture listener receives card data).
"""

from __future__ import annotations

import base64
import hashlib
import html
from importlib import resources

from vault.capture import SessionCodeRule

__all__ = ["asset", "asset_version", "sri_hash"]


def asset(name: str) -> bytes:
    """The bytes of a served asset (api/capture_assets/NAME)."""
    return resources.files("api").joinpath("capture_assets", name).read_bytes()


def sri_hash(data: bytes) -> str:
    """The Subresource Integrity value of `data` (``sha384-`` and base64)."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def asset_version(data: bytes) -> str:
    """The version the fields' page names an asset by (``?v=``): the first 16 hex digits
    of its SHA-256. A browser or CDN keys its cache by the URL, so a new copy of the
    script is a new URL: named by the bare path, a copy cached from the previous
    version (``public, max-age=300``) was taken again after an upgrade, refused by the
    new page's `integrity`, and the fields were dead for up to five minutes, Pay doing
    nothing (session 38, checked in Chromium)."""
    return hashlib.sha256(data).hexdigest()[:16]


def _hosted_fields_page(session_id: str, parent_origin: str, code: SessionCodeRule) -> bytes:
    # The page names the hash of its script and style (review web36): both are served
    # cacheable (`public, max-age=300`), so a cache or CDN in front of the capture
    # origin could hand the browser another copy of the script that reads the card;
    # the page itself is never cached, and the browser refuses a copy that differs.
    template = asset("hosted-fields.html").decode()
    script, style = asset("hosted-fields.js"), asset("hosted-fields.css")
    return (
        template.replace("{{SCRIPT_INTEGRITY}}", sri_hash(script))
        .replace("{{SCRIPT_VERSION}}", asset_version(script))
        .replace("{{STYLE_INTEGRITY}}", sri_hash(style))
        .replace("{{STYLE_VERSION}}", asset_version(style))
        .replace("{{PARENT_ORIGIN}}", html.escape(parent_origin, quote=True))
        .replace("{{SESSION}}", html.escape(session_id, quote=True))
        .replace("{{SECURITY_CODE}}", code.value)
        .encode()
    )
