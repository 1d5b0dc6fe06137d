"""A networked HSM (issue 19): single tokenize over mutual TLS at 32 keep-alive connections
(wrk through the haproxy mTLS originator, `bench._load`; `cofre serve` with one worker),
through the CloudHSM-behaviour shim (tests/support/cloudhsm_shim.c, our reading of AWS's
documentation, not CloudHSM) with 0 and 1 ms slept before every PKCS#11 call it
forwards, in the same run, on SQLite. An HMAC fingerprint is two calls (C_SignInit,
C_Sign), so a tokenize pays at least 2 ms of "network". Goal: with 1 ms per call the
rate keeps >= 70% of the no-latency rate. A third row runs the same latency with a
session pool of one, which is what the node had before the pool; the fourth, no latency
and a pool of one, shows what SoftHSM2's own locking (CKF_OS_LOCKING_OK, which the shim
asks for) costs or buys on this machine.

Run: .venv/bin/python -m bench.hsm_latency [--seconds 5] [--pool 16]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from bench._load import MTLSProxy, Result, wrk
from bench._setup import LOAD_POLICY, bench_token
from bench.api import _cofre, _stop, _wait
from tests.support.cloudhsm_shim import build_shim
from tests.support.postgres import free_port

CLIENTS = 32


def main(seconds: float, pool: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        from api.pki import ensure_dev_pki

        tmp = Path(tmp_name)
        pki = ensure_dev_pki(tmp / "pki")
        shim = build_shim(tmp / "shim")
        conf = bench_token(tmp)
        policy = tmp / "policy.toml"
        policy.write_text(LOAD_POLICY)
        port = free_port()
        config = tmp / "cofre.toml"
        config.write_text(
            f'data_dir = "{tmp}"\npolicy_file = "{policy}"\n'
            f'[hsm]\nlibrary = "{shim.library}"\ntoken_label = "bench"\n'
            f'pin_file = "{tmp / "pin"}"\nsofthsm_conf = "{conf}"\n'
            f'[server]\nport = {port}\nca_bundle = "{pki.ca}"\ncert_file = "{pki.server_cert}"\n'
            f'key_file = "{pki.server_key}"\n'
        )
        (tmp / "pin").chmod(0o600)
        base_env = shim.env()
        for step in (["db", "migrate"], ["hsm", "init"]):
            if _cofre(config, *step, extra_env=base_env, stdout=subprocess.DEVNULL).wait():
                raise SystemExit(f"cofre {' '.join(step)} failed")
        url = f"https://127.0.0.1:{port}"
        rows: list[tuple[int, int, Result]] = []
        for index, (latency_us, pool_size) in enumerate(
            ((0, pool), (1000, pool), (1000, 1), (0, 1))
        ):
            env = {
                **base_env,
                **shim.env(latency_us=latency_us),
                "COFRE_HSM__SESSION_POOL_SIZE": str(pool_size),
                "COFRE_SERVER__WORKERS": "1",
                "COFRE_LOG_LEVEL": "WARNING",
            }
            server = _cofre(config, "serve", extra_env=env)
            proxy = None
            try:
                _wait(pki, url, server)
                proxy = MTLSProxy(pki, port)
                result = wrk(
                    proxy,
                    "tokenize",
                    connections=CLIENTS,
                    seconds=seconds,
                    args=[str((index + 1) * 100_000)],
                )
            finally:
                if proxy is not None:
                    proxy.close()
                _stop(server)
            rows.append((latency_us, pool_size, result))
    base = rows[0][2].req_per_s
    print(f"single tokenize over mTLS, {CLIENTS} connections (wrk), SQLite, CloudHSM shim:")
    print(
        f"{'ms/call':>8} {'pool':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7} {'vs 0 ms':>8}"
    )
    for latency_us, pool_size, row in rows:
        print(
            f"{latency_us / 1000:>8.1f} {pool_size:>5} {row.req_per_s:>9,.0f} "
            f"{row.p50_ms:>8.1f} {row.p99_ms:>8.1f} {row.errors:>7.0f} "
            f"{row.req_per_s / base:>7.0%}"
        )
    kept = rows[1][2].req_per_s / base
    print(
        f"goal: with 1 ms per HSM call, >= 70% of the no-latency rate: {kept:.0%} "
        + ("(met)" if kept >= 0.70 else "(NOT met)")
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pool", type=int, default=16)
    args = parser.parse_args()
    main(args.seconds, args.pool)
