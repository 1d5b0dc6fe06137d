"""A batch's fingerprints on a networked HSM (session 32): `HSMProvider.hmac_sha256_many`
of 1,000 card numbers through the CloudHSM-behaviour shim (tests/support/cloudhsm_shim.c,
our reading of AWS's documentation, not CloudHSM) with 1 ms slept before every PKCS#11
call it forwards, in one process. python-pkcs11 makes each HMAC three calls
(`C_SignInit`, `C_Sign` to ask the length, `C_Sign`). The baseline, measured in the same
run, is the same provider given one chunk of 64 cards at a time (one chunk is one
session borrow, so its HMACs run one after another): what a batch paid before the chunks
ran side by side on the session pool.

Run: .venv/bin/python -m bench.hsm_batch [--pool 8,16] [--cards 1000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from pathlib import Path

from bench._setup import bench_token
from hsm._hmac import HMAC_CHUNK
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import build_shim, configure

LATENCY_US = 1000


def _timed(provider: HSMProvider, label: str, messages: list[bytes], chunked: bool) -> float:
    started = time.perf_counter()
    if chunked:
        for at in range(0, len(messages), HMAC_CHUNK):
            provider.hmac_sha256_many(label, messages[at : at + HMAC_CHUNK])
    else:
        provider.hmac_sha256_many(label, messages)
    return (time.perf_counter() - started) * 1000


def main(pools: list[int], cards: int) -> None:
    from cofre.settings import HSMSettings
    from hsm.provider import provider_from_settings

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        shim = build_shim(tmp / "shim")
        conf = bench_token(tmp)
        os.environ.update(shim.env())
        messages = [f"4{secrets.randbelow(10**15):015d}".encode() for _ in range(cards)]
        print(
            f"{cards:,} HMACs in one call through the CloudHSM shim, {LATENCY_US / 1000:.0f} ms "
            "per PKCS#11 call, best of 2:"
        )
        print(f"{'pool':>5} {'chunk after chunk ms':>21} {'side by side ms':>16} {'ratio':>6}")
        for pool in pools:
            settings = HSMSettings(
                library=shim.library,
                token_label="bench",
                pin_file=tmp / "pin",
                softhsm_conf=conf,
                session_pool_size=pool,
            )
            provider = provider_from_settings(settings)
            label = f"bench-fp-{pool}"
            provider.generate_hmac_key(label)
            provider.hmac_sha256_many(label, messages[:HMAC_CHUNK])  # sessions open
            configure(shim, latency_us=LATENCY_US)
            one = min(_timed(provider, label, messages, chunked=True) for _ in range(2))
            side = min(_timed(provider, label, messages, chunked=False) for _ in range(2))
            configure(shim, latency_us=0)
            provider.destroy_key(label)
            provider.close()
            print(f"{pool:>5} {one:>21,.0f} {side:>16,.0f} {one / side:>5.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", default="8,16")
    parser.add_argument("--cards", type=int, default=1000)
    args = parser.parse_args()
    main([int(p) for p in args.pool.split(",")], args.cards)
