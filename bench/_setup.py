"""What every bench run that starts `cofre serve` sets up the same way: a fresh SoftHSM2
token and the dev policy opened up for load."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Final

from cofre_cli.devenv import DEV_POLICY
from hsm.softhsm import init_softhsm_token, write_softhsm_conf

# No rate limit, and `detokenize` (masked: payments' reveal stays "masked") for the
# detokenize load. The oracle guard stays at its default (10 cards a BIN and last four a
# day): the loads spread their cards over BINs (`bench/wrk/pan.lua`), as traffic does.
_OPENED: Final = (
    ("per_second = 2000, burst = 4000", "per_second = 1000000, burst = 1000000"),
    (
        '"tokenize", "detokenize_masked", "lookup"',
        '"tokenize", "detokenize", "detokenize_masked", "lookup"',
    ),
)


def _opened_for_load(policy: str) -> str:
    """`policy` (the dev policy) with `_OPENED`'s changes; raises if one no longer
    applies. Session 29 wrapped payments' operations over lines, the grant of
    `detokenize` silently stopped applying, and every detokenize of that run's load was
    403."""
    for old, new in _OPENED:
        if old not in policy:
            raise RuntimeError(f"bench: the dev policy no longer holds {old!r}")
        policy = policy.replace(old, new, 1)
    return policy


LOAD_POLICY: Final = _opened_for_load(DEV_POLICY)


def bench_token(work: Path) -> Path:
    """Create a SoftHSM2 token labelled ``bench`` under `work`; return its
    ``softhsm2.conf`` (the user PIN is in ``work / "pin"``)."""
    conf = work / "softhsm2.conf"
    write_softhsm_conf(conf, work / "tokens")
    pin = "bench-cu:" + secrets.token_urlsafe(12)  # CloudHSM's shape: the shim needs it
    init_softhsm_token(conf, "bench", so_pin=secrets.token_urlsafe(12), user_pin=pin)
    (work / "pin").write_text(pin)
    return conf
