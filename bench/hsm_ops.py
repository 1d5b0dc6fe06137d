"""HSM operations through our provider beside the same calls through bare python-pkcs11,
in the same run, on a fresh SoftHSM2 token: wrap (generate + wrap a data key), unwrap,
HMAC-SHA256 and ECDSA P-256 sign. Goal (issue 4): provider / bare >= 0.8.

Fair to both sides on a shared machine: each side runs in one thread against a token in
this process, so its cost is this process's CPU time (`time.process_time`), which time
other processes take from it does not inflate; and the two sides' rounds alternate, so
a change of load in the machine falls on both. The best of five rounds each.

Run: .venv/bin/python -m bench.hsm_ops
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_ecdsa_signature

from bench._hsm import fresh_provider
from bench._timing import ops_per_second
from cofre.settings import DEFAULT_SOFTHSM_LIBRARY


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        provider = fresh_provider(Path(tmp))
        wrapped = provider.generate_wrapped_key("cofre-kek-v1")

        token = pkcs11.lib(str(DEFAULT_SOFTHSM_LIBRARY)).get_token(token_label="bench")
        session = token.open(rw=True)  # the provider already logged this process in
        kek = session.get_key(ObjectClass.SECRET_KEY, label="cofre-kek-v1")
        fp = session.get_key(ObjectClass.SECRET_KEY, label="cofre-fp-v1")
        audit = session.get_key(ObjectClass.PRIVATE_KEY, label="cofre-audit-v1")
        # SoftHSM2 implements both wrap algorithms under the standard numbers.
        mech = (
            Mechanism.AES_KEY_WRAP_PAD
            if wrapped.algorithm == "aes-kwp-rfc5649"
            else Mechanism.AES_KEY_WRAP
        )

        def bare_wrap(_: int) -> None:
            key = session.generate_key(
                KeyType.AES,
                256,
                store=False,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
            )
            kek.wrap_key(key, mechanism=mech)
            key.destroy()

        def bare_unwrap(_: int) -> None:
            key = kek.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped.wrapped,
                mechanism=mech,
                store=False,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
            )
            bytearray(key[Attribute.VALUE])
            key.destroy()

        def bare_sign(i: int) -> None:
            digest = hashlib.sha256(i.to_bytes(8, "big")).digest()
            encode_ecdsa_signature(audit.sign(digest, mechanism=Mechanism.ECDSA))

        pan = b"4111111111111111"
        pairs = {
            "wrap": (lambda _: provider.generate_wrapped_key("cofre-kek-v1"), bare_wrap),
            "unwrap": (lambda _: provider.unwrap_key(wrapped), bare_unwrap),
            "hmac": (
                lambda _: provider.hmac_sha256("cofre-fp-v1", pan),
                lambda _: fp.sign(pan, mechanism=Mechanism.SHA256_HMAC),
            ),
            "sign": (lambda i: provider.sign("cofre-audit-v1", i.to_bytes(8, "big")), bare_sign),
        }
        figures: dict[str, float] = {}
        print("per CPU-second of this process, provider and bare rounds alternating")
        print(f"{'operation':<10} {'provider/s':>12} {'bare/s':>12} {'ratio':>7}   (goal >= 0.80)")
        for name, (ours, bare) in pairs.items():
            rounds: tuple[list[float], list[float]] = ([], [])
            for _ in range(5):
                for side, f in zip(rounds, (ours, bare), strict=True):
                    side.append(ops_per_second(f, seconds=0.4, clock=time.process_time))
            a, b = max(rounds[0]), max(rounds[1])
            figures[f"{name}_provider"] = a
            figures[f"{name}_bare"] = b
            figures[f"{name}_ratio"] = a / b
            print(f"{name:<10} {a:>12,.0f} {b:>12,.0f} {a / b:>7.2f}")
        session.close()
        provider.close()
    return figures


if __name__ == "__main__":
    result = main()
    if "--json" in sys.argv:
        print(json.dumps(result))
