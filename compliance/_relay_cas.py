"""The relay routes' upstream CA bundles, for the bundle's `tls/certificates.json`.

IN PCI SCOPE. PCI DSS 4.2.1.1 asks for an inventory of the trusted keys and certificates
that protect PANs in transit; a relay sends clear PANs to an acquirer over TLS verified
against its route's `ca_bundle` (`vault.relay_client`), so those CAs belong beside the
vault's own certificates (finding F8 of docs/pci-tokenization.md). Read at export from
the policy in force (a reload may change the routes), every certificate of a bundle
(a bundle is usually a root and intermediates, not one certificate). A bundle that
cannot be read is listed with the reason rather than failing the export: the relay on
that route fails too, and the auditor should see it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from policies.models import RelayRoute


def relay_ca_inventory(routes: Mapping[str, RelayRoute]) -> list[dict[str, str]]:
    """One entry per certificate of each route's `ca_bundle` (routes sorted by name):
    the route, its upstream, the file, subject, issuer, not_after, serial (openssl's
    colon form, as `api.pki.certificate_inventory`) and the certificate's SHA-256.
    Routes without a `ca_bundle` trust the default store and are not listed."""
    out: list[dict[str, str]] = []
    for name, route in sorted(routes.items()):
        if not route.ca_bundle:
            continue
        where = {"relay_route": name, "upstream": route.upstream, "file": route.ca_bundle}
        try:
            certificates = x509.load_pem_x509_certificates(Path(route.ca_bundle).read_bytes())
        except (OSError, ValueError) as exc:
            out.append({**where, "error": f"cannot read the CA bundle ({type(exc).__name__})"})
            continue
        for cert in certificates:
            der = cert.public_bytes(serialization.Encoding.DER)
            out.append(
                {
                    **where,
                    "subject": cert.subject.rfc4514_string(),
                    "issuer": cert.issuer.rfc4514_string(),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                    # The colon form: a bare hex serial can hold a card-shaped digit run.
                    "serial": ":".join(
                        f"{b:02x}" for b in cert.serial_number.to_bytes(20, "big").lstrip(b"\0")
                    ),
                    "sha256": hashlib.sha256(der).hexdigest(),
                }
            )
    return out
