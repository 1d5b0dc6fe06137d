"""`cofre hsm selftest`: what an operator runs against a token before go-live.

IN PCI SCOPE. Creates temporary keys with the *production* templates (a KEK, an HMAC
key, an EC P-256 signing key, a security-code AES-GCM key, labelled ``cofre-selftest-*``
so the key hierarchy never mistakes them for its own), checks that they behave
(wrap/unwrap/rewrap, HMAC, ECDSA, AES-GCM with the IV the token picks on CloudHSM),
measures each operation's latency and rate, and destroys the keys whatever happened.
It reports timings and pass/fail only, never key material.

It refuses a token that already holds Cofre's keys (`HSMTokenInService`): every serving
node's `/readyz` fails while a key the registry does not know is on its token (review
34: 14 of 16 probes answered `503 hsm_key_unregistered` during one run), and an
interrupted run would leave them there. A node added to a fleet uses a token already
proven; `cofre hsm status` reads it without creating anything.
"""

from __future__ import annotations

import secrets
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm.errors import HSMError, HSMTokenInService
from hsm.provider import HSMProvider, wipe


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Timing:
    """One operation, run `count` times in a row on one thread, then by `threads` threads."""

    operation: str
    count: int
    p50_ms: float
    p95_ms: float
    per_second: float
    threads: int
    per_second_threads: float


@dataclass
class SelftestReport:
    token: dict[str, str]
    wrap_algorithm: str | None
    wrap_mechanism: str | None
    pool_size: int
    checks: list[Check] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "token": self.token,
            "wrap_algorithm": self.wrap_algorithm,
            "wrap_mechanism": self.wrap_mechanism,
            "session_pool_size": self.pool_size,
            "checks": [asdict(c) for c in self.checks],
            "timings": [asdict(t) for t in self.timings],
        }


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _measure(name: str, call: Callable[[], object], count: int, threads: int) -> Timing:
    samples: list[float] = []
    started = time.perf_counter()
    for _ in range(count):
        before = time.perf_counter()
        call()
        samples.append((time.perf_counter() - before) * 1000)
    serial = count / max(time.perf_counter() - started, 1e-9)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(count):
                call()
        except BaseException as exc:  # noqa: BLE001 - reported after the threads join
            errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    parallel = threads * count / max(time.perf_counter() - started, 1e-9)
    if errors:
        raise errors[0]
    return Timing(
        operation=name,
        count=count,
        p50_ms=round(statistics.median(samples), 3),
        p95_ms=round(_percentile(samples, 0.95), 3),
        per_second=round(serial, 1),
        threads=threads,
        per_second_threads=round(parallel, 1),
    )


SELFTEST_PREFIX = "cofre-selftest-"


def serving_labels(provider: HSMProvider) -> list[str]:
    """The labels of Cofre's own keys on the token, sorted (the selftest's aside): a token
    in service holds some (`cofre hsm status` reads the same, session 43)."""
    return sorted(
        {
            key.label
            for key in provider.list_keys()
            if key.label.startswith("cofre-") and not key.label.startswith(SELFTEST_PREFIX)
        }
    )


def refuse_serving_token(provider: HSMProvider) -> None:
    """Raise `HSMTokenInService` if the token holds Cofre's own keys (see the module text)."""
    serving = serving_labels(provider)
    if serving:
        raise HSMTokenInService(
            f"the token holds Cofre's keys ({', '.join(serving[:4])}"
            f"{', …' if len(serving) > 4 else ''}): the selftest runs before the first "
            "`cofre hsm init`, never on a token in service (docs/cloudhsm.md)"
        )


def run_selftest(provider: HSMProvider, *, count: int = 200, threads: int = 0) -> SelftestReport:
    """Run the go-live checks and measurements on `provider`'s token; return the report.

    `threads` (default: the provider's session pool size) run each operation at once for
    the aggregate rate. Raises `HSMError` only when the token cannot be reached at all;
    every other failure is a failed `Check` in the report.
    """
    info = provider.token_info()
    report = SelftestReport(
        token={k: str(v) for k, v in asdict(info).items()},
        wrap_algorithm=None,
        wrap_mechanism=None,
        pool_size=provider.pool_size,
    )
    threads = threads or provider.pool_size
    try:
        algorithm = provider.wrap_algorithm()
        report.wrap_algorithm = algorithm.value
        report.wrap_mechanism = provider.wrap_mechanism_name(algorithm)
        report.checks.append(Check("wrap mechanism", True, report.wrap_mechanism))
    except HSMError as exc:
        report.checks.append(Check("wrap mechanism", False, str(exc)))
        return report
    suffix = secrets.token_hex(4)
    kek, kek2 = f"cofre-selftest-kek-{suffix}", f"cofre-selftest-kek2-{suffix}"
    mac, signer = f"cofre-selftest-fp-{suffix}", f"cofre-selftest-audit-{suffix}"
    sealer = f"cofre-selftest-csc-{suffix}"
    created: list[str] = []
    try:
        creators: list[tuple[str, Callable[[str], object]]] = [
            (kek, provider.generate_kek),
            (kek2, provider.generate_kek),
            (mac, provider.generate_hmac_key),
            (signer, provider.generate_signing_key),
            (sealer, provider.generate_aead_key),
        ]
        for label, create in creators:
            if _check(report, f"create {label.split('-')[2]} key", partial(create, label)):
                created.append(label)
        if report.passed:
            _functional_checks(report, provider, keks=(kek, kek2), mac=mac, signer=signer)
            _check(report, "AES-GCM seal and open", partial(_aead_checks, provider, sealer))
        if report.passed:
            wrapped = provider.generate_wrapped_key(kek)
            message = b"cofre selftest"
            for name, call in (
                ("wrap (generate data key)", lambda: provider.generate_wrapped_key(kek)),
                ("unwrap", lambda: wipe(provider.unwrap_key(wrapped))),
                ("rewrap (KEK rotation)", lambda: provider.rewrap_key(wrapped, kek2)),
                ("hmac-sha256", lambda: provider.hmac_sha256(mac, message)),
                ("ecdsa-p256 sign", lambda: provider.sign(signer, message)),
                ("aes-gcm seal (codes)", lambda: provider.aead_encrypt(sealer, b"1", b"")),
            ):
                report.timings.append(_measure(name, call, count, threads))
    except HSMError as exc:
        report.checks.append(Check("token", False, str(exc)))
    finally:
        for label in created:
            name = f"destroy {label.split('-')[2]} key"
            _check(report, name, partial(_destroy, provider, label))
    return report


def _destroy(provider: HSMProvider, label: str) -> None:
    provider.destroy_key(label)
    if provider.has_key(label):
        raise HSMError(f"{label} is still on the token")


def _aead_checks(provider: HSMProvider, label: str) -> None:
    # Security codes: CloudHSM writes its own IV into the caller's buffer (hsm.aead), so
    # two seals must differ in IV, open to the same bytes, and refuse another AAD.
    (iv, sealed), (iv2, _) = (
        provider.aead_encrypt(label, b"123", b"t"),
        provider.aead_encrypt(label, b"123", b"t"),
    )
    if iv == iv2 or provider.aead_decrypt(label, iv, sealed, b"t") != b"123":
        raise HSMError("AES-GCM does not round-trip with a fresh IV per seal")
    try:
        provider.aead_decrypt(label, iv, sealed, b"other")
    except HSMError:
        return
    raise HSMError("AES-GCM opened a code under another token's AAD")


def _check(report: SelftestReport, name: str, call: Callable[[], object]) -> bool:
    try:
        call()
    except HSMError as exc:
        report.checks.append(Check(name, False, str(exc)))
        return False
    report.checks.append(Check(name, True))
    return True


def _functional_checks(
    report: SelftestReport,
    provider: HSMProvider,
    *,
    keks: tuple[str, str],
    mac: str,
    signer: str,
) -> None:
    kek, kek2 = keks

    def key_attributes() -> None:
        info = provider.describe_key(kek)
        if not (info.sensitive and info.extractable is False and info.never_extractable):
            raise HSMError("the KEK is not sensitive and never-extractable")

    def wrap_round_trip() -> None:
        wrapped = provider.generate_wrapped_key(kek)
        first, again = provider.unwrap_key(wrapped), provider.unwrap_key(wrapped)
        moved = provider.unwrap_key(provider.rewrap_key(wrapped, kek2))
        try:
            if len(first) != 32 or first != again or first != moved:
                raise HSMError("unwrap and rewrap do not return the wrapped key")
        finally:
            for buffer in (first, again, moved):
                wipe(buffer)

    def hmac_checks() -> None:
        one, two = provider.hmac_sha256(mac, b"a"), provider.hmac_sha256(mac, b"a")
        if len(one) != 32 or one != two or provider.hmac_sha256(mac, b"b") == one:
            raise HSMError("HMAC-SHA256 is not deterministic or not per message")

    def signature_checks() -> None:
        public = serialization.load_pem_public_key(provider.public_key_pem(signer))
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise HSMError("the signing key is not an EC key")
        try:
            public.verify(provider.sign(signer, b"head"), b"head", ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise HSMError("the ECDSA signature does not verify") from None

    _check(report, "KEK attributes", key_attributes)
    _check(report, "wrap, unwrap, rewrap", wrap_round_trip)
    _check(report, "HMAC-SHA256", hmac_checks)
    _check(report, "ECDSA P-256 sign and verify", signature_checks)


def render_table(report: SelftestReport) -> str:
    """Return `report` as the text `cofre hsm selftest` prints."""
    token = report.token
    lines = [
        f"token {token['token_label']!r}: {token['manufacturer']} {token['model']} "
        f"(library {token['library']} v{token['library_version']}), "
        f"session pool {report.pool_size}",
        f"key wrap: {report.wrap_algorithm} via {report.wrap_mechanism}",
        "",
    ]
    lines += [
        f"  {'PASS' if c.passed else 'FAIL'}  {c.name}" + (f": {c.detail}" if c.detail else "")
        for c in report.checks
    ]
    if report.timings:
        lines += [
            "",
            f"  {'operation':<26}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'ops/s':>10}"
            f"{'threads':>9}{'ops/s':>10}",
        ]
        lines += [
            f"  {t.operation:<26}{t.count:>6}{t.p50_ms:>9.3f}{t.p95_ms:>9.3f}"
            f"{t.per_second:>10.0f}{t.threads:>9}{t.per_second_threads:>10.0f}"
            for t in report.timings
        ]
    lines += ["", "selftest " + ("PASSED" if report.passed else "FAILED")]
    return "\n".join(lines)
