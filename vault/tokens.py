"""Drawing and computing tokens to a `policies.formats.FormatSpec`.

IN PCI SCOPE, holds card data. Random tokens come from `secrets` only. The Luhn setting
is met exactly, with no bias, by choosing one free digit last:

- ``pass``: the last free digit is the one value that makes the token Luhn-valid;
- ``fail``: it is drawn uniformly from the nine values that make the token invalid;
- ``any``: every free digit is uniform.

FF1 tokens (`FormatType.FPE`) encrypt the free middle digits with the token domain, the
kept digits and the Luhn setting as the tweak (so the same PAN gives unrelated tokens in
two domains, and in two formats that differ only in their Luhn setting).
With ``luhn = "any"`` that is plain FF1. With ``pass`` or ``fail`` the PAN must be
Luhn-valid, and FF1 is cycle-walked over the middles that keep the number Luhn-valid
(10^(m-1) of the 10^m values, exactly the PANs that can exist in that BIN/last-four
bucket), which is a permutation of that set; for ``fail`` the last free digit of the
result is then moved to one of the nine failing values, chosen from the token's other
digits, so the step can be undone. Decryption reverses both steps.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from typing import Final

from policies.formats import FormatSpec, FormatType, LuhnMode
from vault.errors import FormatNotApplicable, InvalidPan
from vault.fpe.ff1 import FF1
from vault.pan import Pan, luhn_sum, luhn_valid

# How many random draws before declaring a bucket full, for spaces too large to list.
MAX_RANDOM_DRAWS: Final = 64
# How many re-issues of a card's FF1 token are tried, each under a random re-issue
# number, before its BIN/last-four bucket is declared full (`FpeTokenizer.candidates`).
FPE_REISSUES: Final = MAX_RANDOM_DRAWS
# Spaces at most this large are listed in full (in random order) once this many draws
# from them met tokens already issued.
ENUMERATE_LIMIT: Final = 4096
DRAWS_BEFORE_LISTING: Final = 4
_SYSTEM_RANDOM: Final = secrets.SystemRandom()
# The Luhn contribution of digit d at a doubled position, and its inverse.
_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
_UNDOUBLE: Final = {value: digit for digit, value in enumerate(_DOUBLED)}


def check_applicable(spec: FormatSpec, pan: Pan) -> None:
    """Raise `FormatNotApplicable` when `spec` does not accept a PAN of this length."""
    if spec.type is not FormatType.UUID and len(pan) not in spec.pan_lengths:
        raise FormatNotApplicable(
            f"this format accepts PANs of {', '.join(map(str, sorted(spec.pan_lengths)))} "
            f"digits, not {len(pan)}"
        )


def _digit_for_residue(digits: list[str], position: int, residue: int) -> str:
    """Return the digit that, placed at `position`, makes the Luhn sum ≡ `residue` (mod 10)."""
    digits[position] = "0"
    current = luhn_sum("".join(digits))
    needed = (residue - current) % 10
    doubled = (len(digits) - 1 - position) % 2 == 1
    return str(_UNDOUBLE[needed] if doubled else needed)


def _apply_luhn(digits: list[str], position: int, mode: LuhnMode, choice: int) -> None:
    """Set `digits[position]` so the number meets `mode`; `choice` (0..8) picks which of
    the nine failing values ``fail`` uses."""
    if mode is LuhnMode.ANY:
        return
    passing = int(_digit_for_residue(digits, position, 0))
    if mode is LuhnMode.PASS:
        digits[position] = str(passing)
    else:
        failing = [d for d in range(10) if d != passing]
        digits[position] = str(failing[choice % 9])


def _space_size(spec: FormatSpec, free: int) -> int:
    if spec.luhn is LuhnMode.ANY:
        return int(10**free)
    if spec.luhn is LuhnMode.PASS:
        return int(10 ** (free - 1))
    return int(9 * 10 ** (free - 1))


class RandomDraws:
    """`secrets.randbelow`'s draws, read from the OS's generator a block at a time: the
    same rejection sampling over the same number of bits (``getrandbits(k)`` until
    below the bound), each byte used once. For one call's many draws (a batch's first
    candidates, issue 21: a ``getrandom`` per card was ~2-4 us of its ~6-11 us draw);
    owned by that call's thread and dropped with it, never shared."""

    def __init__(self, block: int = 256) -> None:
        self._block = max(block, 32)
        self._buffer = b""
        self._at = 0

    def randbelow(self, bound: int) -> int:
        """An integer uniform over ``[0, bound)``; raises `ValueError` for ``bound <= 0``."""
        if bound <= 0:
            raise ValueError("the bound must be positive")
        bits = bound.bit_length()
        size = (bits + 7) // 8
        while True:
            if self._at + size > len(self._buffer):
                self._buffer, self._at = secrets.token_bytes(max(self._block, size)), 0
            value = int.from_bytes(self._buffer[self._at : self._at + size]) >> (size * 8 - bits)
            self._at += size
            if value < bound:
                return value


def uuid4_strings(count: int) -> list[str]:
    """`count` random UUID4s as text, as ``str(uuid.uuid4())`` spells them (122 random
    bits each from the OS CSPRNG, version 4, RFC 4122 variant), from one read of the
    generator: ``uuid4()`` read it once per id (~4 of its ~6 us, issue 21)."""
    raw = secrets.token_bytes(16 * count)
    out = []
    for at in range(0, 16 * count, 16):
        b = raw[at : at + 16]
        h = bytes((*b[:6], (b[6] & 0x0F) | 0x40, b[7], (b[8] & 0x3F) | 0x80, *b[9:])).hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def _draw(spec: FormatSpec, pan: str, randbelow: Callable[[int], int] = secrets.randbelow) -> str:
    lead, trail = spec.keep_leading, spec.keep_trailing
    free = len(pan) - lead - trail
    # One draw for both choices (the free digits and, under `fail`, which of the nine
    # failing check digits): uniform over their product, so each is uniform and the two
    # independent, with one call to the OS's generator per candidate instead of two.
    failing = 9 if spec.luhn is LuhnMode.FAIL else 1
    value, choice = divmod(randbelow(10**free * failing), failing)
    digits = [*pan[:lead], *f"{value:0{free}d}", *pan[len(pan) - trail :]]
    _apply_luhn(digits, lead + free - 1, spec.luhn, choice)
    return "".join(digits)


def _enumerate(spec: FormatSpec, pan: str) -> list[str]:
    lead, trail = spec.keep_leading, spec.keep_trailing
    free = len(pan) - lead - trail
    prefix, suffix = pan[:lead], pan[len(pan) - trail :]
    candidates = [f"{prefix}{value:0{free}d}{suffix}" for value in range(10**free)]
    if spec.luhn is LuhnMode.PASS:
        candidates = [c for c in candidates if luhn_valid(c)]
    elif spec.luhn is LuhnMode.FAIL:
        candidates = [c for c in candidates if not luhn_valid(c)]
    _SYSTEM_RANDOM.shuffle(candidates)
    return candidates


def lists_space(spec: FormatSpec, pan_length: int) -> bool:
    """Whether `random_token_candidates` lists the whole space of a `pan_length`-digit
    card (up to 10^4 strings, Luhn-checked and shuffled: milliseconds of CPU) instead of
    drawing candidates."""
    if spec.type is not FormatType.RANDOM:
        return False
    return _space_size(spec, spec.free_digits(pan_length)) <= ENUMERATE_LIMIT


def random_token_candidates(
    spec: FormatSpec, pan: Pan, randbelow: Callable[[int], int] = secrets.randbelow
) -> Iterator[str]:
    """Yield candidate tokens for `pan`, best first, and stop when the space is used up.

    The caller keeps the first candidate that storage does not hold yet; when the
    iterator ends it raises `TokenSpaceExhausted`. Never yields the PAN itself.
    Raises `FormatNotApplicable` for a PAN length the format does not accept.
    `randbelow`: where the draws come from (`RandomDraws.randbelow` for a call's many).
    """
    if spec.type is not FormatType.RANDOM:
        raise ValueError("random_token_candidates needs a random format")
    check_applicable(spec, pan)
    digits = pan.reveal()
    if lists_space(spec, len(digits)):
        # Drawn first, as in a large space: listing costs ~3-18 ms of CPU, which a batch
        # of short cards multiplied by 1,000 within its rate (the batch review). A draw
        # and the head of a shuffled list are both uniform over the space, and the first
        # free one of either uniform over the free tokens. Only a space whose draws met
        # issued tokens is listed, so that a nearly full one is still found out.
        if spec.free_digits(len(digits)):
            for _ in range(DRAWS_BEFORE_LISTING):
                candidate = _draw(spec, digits, randbelow)
                if candidate != digits:
                    yield candidate
        yield from (c for c in _enumerate(spec, digits) if c != digits)
        return
    for _ in range(MAX_RANDOM_DRAWS):
        candidate = _draw(spec, digits, randbelow)
        if candidate != digits:
            yield candidate


def uuid_token() -> str:
    """Return a random UUID4 token (122 random bits from the OS CSPRNG)."""
    return str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))


class FpeTokenizer:
    """FF1 tokens for one FF1 key: `encrypt` a PAN to its token and `decrypt` it back."""

    def __init__(self, ff1: FF1) -> None:
        if ff1.radix != 10:
            raise ValueError("PAN tokens need a radix-10 FF1")
        self._ff1 = ff1

    @staticmethod
    def _split(spec: FormatSpec, digits: str, domain: str) -> tuple[str, str, str, bytes]:
        lead, trail = spec.keep_leading, spec.keep_trailing
        prefix, middle, suffix = (
            digits[:lead],
            digits[lead : len(digits) - trail],
            digits[len(digits) - trail :],
        )
        # The domain, the kept digits and the Luhn setting are the tweak, so the same
        # middle in another domain, under another BIN or last four, or in a format of
        # the same shape with another Luhn setting, encrypts differently. Without the
        # setting a ``fail`` token was the ``pass`` token of the same card with one
        # digit moved: two formats' tokens showed they were one card (session 36,
        # tests/vault/test_token_format_links.py). The kept digits' lengths are the
        # format's, so its shape is bound too. The domain comes last, after a separator
        # neither digits nor a setting's name can hold.
        tweak = f"{prefix}:{suffix}:{spec.luhn.value}|{domain}"
        return prefix, middle, suffix, tweak.encode()

    def _walk(self, prefix: str, middle: str, suffix: str, tweak: bytes, *, forward: bool) -> str:
        step = self._ff1.encrypt if forward else self._ff1.decrypt
        value = step(middle, tweak)
        while not luhn_valid(prefix + value + suffix):
            value = step(value, tweak)
        return value

    def encrypt(self, spec: FormatSpec, pan: Pan, *, domain: str) -> str:
        """Return the FF1 token of `pan` under `spec` in token domain `domain`.

        Raises `FormatNotApplicable` for a PAN length the format does not accept and
        `InvalidPan` for a Luhn-invalid PAN under ``luhn = pass|fail``.
        """
        check_applicable(spec, pan)
        prefix, middle, suffix, tweak = self._split(spec, pan.reveal(), domain)
        if spec.luhn is LuhnMode.ANY:
            return prefix + self._ff1.encrypt(middle, tweak) + suffix
        if not pan.luhn_valid():
            raise InvalidPan(
                f"format with luhn={spec.luhn.value} needs a Luhn-valid PAN; use luhn='any'"
            )
        walked = self._walk(prefix, middle, suffix, tweak, forward=True)
        if spec.luhn is LuhnMode.PASS:
            return prefix + walked + suffix
        digits = list(prefix + walked + suffix)
        position = len(prefix) + len(walked) - 1
        choice = int(walked[:-1] or "0") % 9
        _apply_luhn(digits, position, LuhnMode.FAIL, choice)
        return "".join(digits)

    def candidates(self, spec: FormatSpec, pan: Pan, *, domain: str) -> Iterator[str]:
        """`pan`'s FF1 token in `domain`, then its re-issues: the same under the tweak
        of `domain` and a random re-issue number (after a NUL, which no domain name
        holds). A deleted or expired token's row keeps its value, so a card whose token
        was shredded needs another one (the batch review: it got 409
        token_space_exhausted for good). Numbered 1, 2, 3... they were each taken by
        the card's own earlier tombstones in turn, so the k-th re-issue computed k+1
        tokens in the commit group's transaction, and none was left after 1,023
        (review 43); a random one is almost always free. Nothing decrypts a token: a
        re-issue is found by its fingerprint, as the first one is."""
        yield self.encrypt(spec, pan, domain=domain)
        for _ in range(FPE_REISSUES):
            reissue = secrets.randbits(64)
            yield self.encrypt(spec, pan, domain=f"{domain}\x00{reissue:016x}")

    def decrypt(self, spec: FormatSpec, token: str, *, domain: str) -> Pan:
        """Return the PAN whose token under `spec` in `domain` is `token`.

        Raises `InvalidPan` when `token` is not a well-formed token of this format.
        """
        candidate = Pan(token)
        check_applicable(spec, candidate)
        prefix, middle, suffix, tweak = self._split(spec, token, domain)
        if spec.luhn is LuhnMode.ANY:
            return Pan(prefix + self._ff1.decrypt(middle, tweak) + suffix)
        digits = list(token)
        if spec.luhn is LuhnMode.FAIL:
            position = len(prefix) + len(middle) - 1
            digits[position] = _digit_for_residue(digits, position, 0)
            middle = "".join(digits[len(prefix) : len(prefix) + len(middle)])
        elif not luhn_valid(token):
            raise InvalidPan("this is not a token of a luhn='pass' format")
        return Pan(prefix + self._walk(prefix, middle, suffix, tweak, forward=False) + suffix)
