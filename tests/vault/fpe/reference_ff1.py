"""A literal, slow transcription of SP 800-38G Rev. 1 Algorithm 7 (FF1.Encrypt), used only
to check the optimised implementation on inputs the NIST samples do not reach (long
strings where NUM(B) spills over a block, d > 16, long tweaks, large radices)."""

from __future__ import annotations

import math

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def _ciph(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(block) + encryptor.finalize()


def _prf(key: bytes, data: bytes) -> bytes:
    y = bytes(16)
    for j in range(0, len(data), 16):
        y = _ciph(key, bytes(a ^ b for a, b in zip(y, data[j : j + 16], strict=True)))
    return y


def _num(x: list[int], radix: int) -> int:
    value = 0
    for digit in x:
        value = value * radix + digit
    return value


def _str(value: int, radix: int, length: int) -> list[int]:
    out = [0] * length
    for i in range(length - 1, -1, -1):
        value, out[i] = divmod(value, radix)
    return out


def reference_encrypt(key: bytes, tweak: bytes, radix: int, x: list[int]) -> list[int]:
    n = len(x)
    t = len(tweak)
    u = n // 2
    v = n - u
    a, b_ = x[:u], x[u:]
    b = math.ceil(math.ceil(v * math.log2(radix)) / 8)
    # math.log2 can round; recompute the ceiling exactly as the standard intends.
    b = (((radix**v) - 1).bit_length() + 7) // 8
    d = 4 * math.ceil(b / 4) + 4
    p = bytes([1, 2, 1]) + radix.to_bytes(3, "big") + bytes([10, u % 256])
    p += n.to_bytes(4, "big") + t.to_bytes(4, "big")
    for i in range(10):
        q = tweak + bytes((-t - b - 1) % 16) + bytes([i]) + _num(b_, radix).to_bytes(b, "big")
        r = _prf(key, p + q)
        s = r
        j = 1
        while len(s) < d:
            s += _ciph(key, bytes(a ^ b for a, b in zip(r, j.to_bytes(16, "big"), strict=True)))
            j += 1
        y = int.from_bytes(s[:d], "big")
        m = u if i % 2 == 0 else v
        c = (_num(a, radix) + y) % (radix**m)
        a, b_ = b_, _str(c, radix, m)
    return a + b_
