"""FF1 format-preserving encryption, NIST SP 800-38G Rev. 1, section 5.1.

IN PCI SCOPE, holds card data and key material. The block cipher is AES from
`cryptography` (OpenSSL); nothing here is a home-made primitive. The code follows the
standard's Algorithms 7 and 8 step by step; what differs is representation only:

- The numeral strings A and B are carried between rounds as integers (NUM_radix(A) and
  NUM_radix(B)) instead of being re-encoded as strings ten times.
- PRF(P || Q) is CBC-MAC. P depends only on radix, u, n and the tweak length, and every
  block of Q except the last depends only on the tweak, so the chaining value after those
  blocks is computed once per call; each round then costs one AES block call (for the
  common case 1 + b <= 16, that is up to 36 decimal digits in the half).
- One ECB encryptor per key per thread, reused (constructing a cipher context costs more
  than the block encryption itself).

Public interface (other tools call it): ``FF1(key, radix=10, alphabet=None)``,
``.encrypt(text, tweak=b"") -> str``, ``.decrypt(text, tweak=b"") -> str``. Invalid input
raises `vault.errors.FPEError`, a `CofreError` that is also a `ValueError`; its messages
describe the input (length, which character class) and never repeat it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from vault.errors import FPEError

_DEFAULT_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
_ROUNDS: Final = 10
_MIN_DOMAIN: Final = 1_000_000  # SP 800-38G Rev. 1: radix^minlen >= 1,000,000
_MAX_RADIX: Final = 1 << 16
_MAX_LEN: Final = (1 << 32) - 1
_SETUP_CACHE: Final = 256  # distinct (length, tweak length) pairs kept per key


class FF1:
    """FF1 under one AES key (16, 24 or 32 bytes) over one alphabet of `radix` symbols.

    `alphabet` defaults to the first `radix` characters of ``0-9a-z`` and must be given
    for a radix above 36. Raises `FPEError` for a bad key, radix or alphabet.
    """

    __slots__ = (
        "_alphabet",
        "_charset",
        "_decode",
        "_key",
        "_local",
        "_min_len",
        "_radix",
        "_setups",
        "_std_map",
    )

    def __init__(self, key: bytes, radix: int = 10, alphabet: str | None = None) -> None:
        # Other tools call this without a type checker: check what arrives, as `object`.
        raw_key: object = key
        raw_radix: object = radix
        raw_alphabet: object = alphabet
        if not isinstance(raw_key, bytes | bytearray) or len(raw_key) not in (16, 24, 32):
            raise FPEError("the FF1 key must be 16, 24 or 32 bytes")
        if (
            not isinstance(raw_radix, int)
            or isinstance(raw_radix, bool)
            or not 2 <= raw_radix <= _MAX_RADIX
        ):
            raise FPEError(f"radix must be an integer from 2 to {_MAX_RADIX}")
        if raw_alphabet is not None and not isinstance(raw_alphabet, str):
            raise FPEError("the alphabet must be a string")
        if alphabet is None:
            if radix > len(_DEFAULT_ALPHABET):
                raise FPEError(f"radix {radix} needs an explicit alphabet")
            alphabet = _DEFAULT_ALPHABET[:radix]
        if len(alphabet) != radix:
            raise FPEError(f"the alphabet must have exactly {radix} characters")
        if len(set(alphabet)) != radix:
            raise FPEError("the alphabet must not repeat a character")
        self._key = bytes(key)
        self._radix = radix
        self._alphabet = alphabet
        self._decode = {char: value for value, char in enumerate(alphabet)}
        self._charset = frozenset(alphabet)
        self._setups: dict[tuple[int, int], _Setup] = {}
        # For radix <= 36, int(text, radix) and a translation table do the numeral work in C.
        self._std_map: dict[int, int] | None = None
        if radix <= len(_DEFAULT_ALPHABET) and alphabet != _DEFAULT_ALPHABET[:radix]:
            self._std_map = str.maketrans(alphabet, _DEFAULT_ALPHABET[:radix])
        min_len = 1
        while int(radix**min_len) < _MIN_DOMAIN:
            min_len += 1
        self._min_len = max(2, min_len)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"FF1(radix={self._radix}, key=<{len(self._key) * 8}-bit, hidden>)"

    @property
    def radix(self) -> int:
        return self._radix

    @property
    def min_length(self) -> int:
        """The shortest input allowed: the least n with radix**n >= 1,000,000."""
        return self._min_len

    # ------------------------------------------------------------------ numerals
    def _to_num(self, text: str) -> int:
        radix = self._radix
        if radix <= len(_DEFAULT_ALPHABET):
            if self._std_map is not None:
                text = text.translate(self._std_map)
            return int(text, radix)
        decode = self._decode
        value = 0
        for char in text:
            value = value * radix + decode[char]
        return value

    def _to_str(self, value: int, length: int) -> str:
        radix = self._radix
        if radix == 10 and self._std_map is None:
            return f"{value:0{length}d}"
        alphabet = self._alphabet
        chars = []
        for _ in range(length):
            value, digit = divmod(value, radix)
            chars.append(alphabet[digit])
        return "".join(reversed(chars))

    def _check_text(self, text: str) -> None:
        if not isinstance(text, str):
            raise FPEError(f"FF1 input must be a string, not {type(text).__name__}")
        if not self._min_len <= len(text) <= _MAX_LEN:
            raise FPEError(
                f"FF1 input must have at least {self._min_len} symbols for radix {self._radix} "
                f"(domain of at least {_MIN_DOMAIN:,}); this one has {len(text)}"
            )
        if not self._charset.issuperset(text):
            raise FPEError(f"FF1 input holds characters outside its radix-{self._radix} alphabet")

    # ------------------------------------------------------------------ AES
    def _block_encryptor(self) -> CipherContext:
        encryptor = getattr(self._local, "encryptor", None)
        if encryptor is None:
            encryptor = Cipher(algorithms.AES(self._key), modes.ECB()).encryptor()  # noqa: S305 - ECB of single blocks is how SP 800-38G defines CIPH
            self._local.encryptor = encryptor
        return encryptor

    def _p_block(self, n: int, u: int, t: int) -> bytes:
        # Step 5: P = [1]^1 || [2]^1 || [1]^1 || [radix]^3 || [10]^1 || [u mod 256]^1
        #             || [n]^4 || [t]^4
        return (
            bytes((1, 2, 1))
            + self._radix.to_bytes(3, "big")
            + bytes((10, u % 256))
            + n.to_bytes(4, "big")
            + t.to_bytes(4, "big")
        )

    def _round_function(self, n: int, u: int, tweak: bytes) -> Callable[[int, int], int]:
        """Return ``y(i, num)``: steps 6.i to 6.iv for round `i` with NUM_radix(B) = `num`."""
        v = n - u
        t = len(tweak)
        # ceil(v * log2(radix)) computed exactly: the bit length of radix^v - 1.
        b = ((int(self._radix**v) - 1).bit_length() + 7) // 8
        d = 4 * ((b + 3) // 4) + 4
        q_prefix = tweak + bytes((-t - b - 1) % 16)  # T || [0]^((-t-b-1) mod 16)
        p_block = self._p_block(n, u, t)
        update = self._block_encryptor().update

        def expand(r: int) -> int:
            if d <= 16:
                return r >> (8 * (16 - d))
            # Step 6.iii: S = R || CIPH(R xor [1]^16) || CIPH(R xor [2]^16) ..., first d bytes.
            parts = [r.to_bytes(16, "big")]
            parts.extend(update((r ^ j).to_bytes(16, "big")) for j in range(1, (d + 15) // 16))
            return int.from_bytes(b"".join(parts)[:d], "big")

        def cbc_mac(chain: int, data: bytes) -> int:
            for offset in range(0, len(data), 16):
                block = int.from_bytes(data[offset : offset + 16], "big")
                chain = int.from_bytes(update((chain ^ block).to_bytes(16, "big")), "big")
            return chain

        p_chain = int.from_bytes(update(p_block), "big")
        if 1 + b > 16:
            # NUM(B) spills over the last block (more than 36 decimal digits in a half):
            # run the whole CBC-MAC over Q each round.
            def general_round(i: int, num: int) -> int:
                return expand(cbc_mac(p_chain, q_prefix + bytes((i,)) + num.to_bytes(b, "big")))

            return general_round

        # Every block of Q but the last depends on the tweak only: chain through them once.
        head = len(q_prefix) + 1 + b - 16
        chain = cbc_mac(p_chain, q_prefix[:head])
        tail_fixed = int.from_bytes(q_prefix[head:], "big") << (8 * (1 + b))
        shift_b = 8 * b

        def fast_round(i: int, num: int) -> int:
            block = chain ^ (tail_fixed | (i << shift_b) | num)
            return expand(int.from_bytes(update(block.to_bytes(16, "big")), "big"))

        return fast_round

    # ------------------------------------------------------------------ FF1
    def _check_tweak(self, tweak: bytes) -> bytes:
        if not isinstance(tweak, bytes | bytearray):
            raise FPEError(f"the FF1 tweak must be bytes, not {type(tweak).__name__}")
        if len(tweak) > _MAX_LEN:
            raise FPEError("the FF1 tweak is too long")
        return bytes(tweak)

    def _setup(self, n: int, t: int) -> _Setup:
        """Return the per-(n, t) constants, computed once per key (steps 1-5, and the
        CBC-MAC of P, which is the same for every round and every call)."""
        setup = self._setups.get((n, t))
        if setup is None:
            u = n // 2
            v = n - u
            b = ((int(self._radix**v) - 1).bit_length() + 7) // 8
            pad = (-t - b - 1) % 16
            p_chain = int.from_bytes(self._block_encryptor().update(self._p_block(n, u, t)), "big")
            setup = _Setup(
                u=u,
                v=v,
                mod_u=int(self._radix**u),
                mod_v=int(self._radix**v),
                b=b,
                d=4 * ((b + 3) // 4) + 4,
                pad=pad,
                p_chain=p_chain,
                one_block=t + pad + 1 + b == 16,
            )
            if len(self._setups) >= _SETUP_CACHE:
                self._setups.clear()
            self._setups[(n, t)] = setup
        return setup

    def _crypt(self, text: str, tweak: bytes, *, decrypt: bool) -> str:
        self._check_text(text)
        tweak = self._check_tweak(tweak)
        n = len(text)
        setup = self._setup(n, len(tweak))
        u, mod_u, mod_v = setup.u, setup.mod_u, setup.mod_v
        num_a = self._to_num(text[:u])
        num_b = self._to_num(text[u:])
        rounds = range(_ROUNDS - 1, -1, -1) if decrypt else range(_ROUNDS)
        if setup.one_block and setup.d <= 16:
            # The common case (PANs): Q is one block, so each round is one AES call on
            # CBC-MAC(P) xor (T || 0* || [i] || [NUM(B)]^b), and S is the top d bytes of R.
            update = self._block_encryptor().update
            shift_b = 8 * setup.b
            high = setup.p_chain ^ (int.from_bytes(tweak, "big") << (8 * (setup.pad + 1 + setup.b)))
            drop = 8 * (16 - setup.d)
            for i in rounds:
                num = num_a if decrypt else num_b
                block = high ^ ((i << shift_b) | num)
                y = int.from_bytes(update(block.to_bytes(16, "big")), "big") >> drop
                if decrypt:
                    num_a, num_b = (num_b - y) % (mod_u if i % 2 == 0 else mod_v), num_a
                else:
                    num_a, num_b = num_b, (num_a + y) % (mod_u if i % 2 == 0 else mod_v)
        else:
            round_fn = self._round_function(n, u, tweak)
            for i in rounds:
                if decrypt:
                    y = round_fn(i, num_a)
                    num_a, num_b = (num_b - y) % (mod_u if i % 2 == 0 else mod_v), num_a
                else:
                    y = round_fn(i, num_b)
                    num_a, num_b = num_b, (num_a + y) % (mod_u if i % 2 == 0 else mod_v)
        return self._to_str(num_a, u) + self._to_str(num_b, setup.v)

    def encrypt(self, text: str, tweak: bytes = b"") -> str:
        """Return FF1.Encrypt(K, T, X): a string of the same length over the same alphabet.

        Raises `FPEError` for text outside the alphabet or shorter than `min_length`, or a
        tweak that is not bytes.
        """
        return self._crypt(text, tweak, decrypt=False)

    def decrypt(self, text: str, tweak: bytes = b"") -> str:
        """Return FF1.Decrypt(K, T, Y), the inverse of `encrypt` under the same tweak.

        Raises `FPEError` as `encrypt` does.
        """
        return self._crypt(text, tweak, decrypt=True)


@dataclass(frozen=True, slots=True)
class _Setup:
    u: int
    v: int
    mod_u: int
    mod_v: int
    b: int
    d: int
    pad: int
    p_chain: int
    one_block: bool
