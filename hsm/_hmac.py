"""HMAC-SHA256 under a token key: one message, or a batch's in chunks (`hsm.provider`'s
base).

IN PCI SCOPE, holds keys: the messages are card numbers, and the key never leaves the
token.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import pkcs11.exceptions as p11e
from pkcs11 import Attribute

from cofre.blocking import may_block
from hsm._native import C_SIGN, C_SIGN_INIT, CKR_OK, ModuleFunctions, error_for
from hsm._pool import CONNECTION_ERRORS
from hsm.aead import AeadOperations

# HMACs per session borrow in `hmac_sha256_many`: the pool's bookkeeping (gate, borrow,
# key lookup, give-back, latency record) is paid once per chunk instead of once per
# message, and a pool of one (SoftHSM2) is never held for a whole batch of 1,000 while
# single calls wait.
HMAC_CHUNK: Final = 64
# A chunk of at least this many messages MACs under a session copy of the key
# (`HSMProvider._session_copy`): the copy and its destruction cost about as much as six
# HMACs under the token key on SoftHSM2.
_COPY_FROM: Final = 16
# The label of those copies. Session objects are visible to every session of the
# process (SoftHSM2), so a copy under the key's own label would be a second key by that
# name to a lookup on another pooled session while it lives.
_COPY_LABEL: Final = "cofre-hmac-chunk-copy"


# PKCS#11 2.40: CKM_SHA256_HMAC, and an output buffer larger than its 32 bytes.
_CKM_SHA256_HMAC: Final = 0x251
_CKR_BUFFER_TOO_SMALL: Final = 0x150
_MAC_BUFFER: Final = 64
_MAC_BYTES: Final = 32


class _Mechanism(ctypes.Structure):
    _fields_ = [
        ("mechanism", ctypes.c_ulong),
        ("parameter", ctypes.c_void_p),
        ("parameter_len", ctypes.c_ulong),
    ]


_C_SIGN_INIT = ctypes.CFUNCTYPE(
    ctypes.c_ulong, ctypes.c_ulong, ctypes.POINTER(_Mechanism), ctypes.c_ulong
)
_C_SIGN = ctypes.CFUNCTYPE(
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_ulong),
)


class _DirectHmac:
    """``C_SignInit`` and one ``C_Sign`` into a buffer of HMAC-SHA256's size, through the
    module's own function list (`hsm._native`).

    Why not python-pkcs11's ``Key.sign``: it calls ``C_Sign`` twice every time, first
    with no buffer to ask the output's length (0.10, `update_resizing_output`). On a
    networked HSM each call may be a round trip, so an HMAC cost three where two do
    (tests/hsm/test_cloudhsm_shim.py counts them through the shim). Errors are raised as
    python-pkcs11 raises them, so the pool translates and retries them the same way."""

    def __init__(self, library: Path) -> None:
        functions = ModuleFunctions(library)
        self._sign_init = functions.function(C_SIGN_INIT, _C_SIGN_INIT)
        self._sign = functions.function(C_SIGN, _C_SIGN)
        self._mechanism = _Mechanism(_CKM_SHA256_HMAC, None, 0)  # read-only: shared

    def sha256(self, session: int, key: int, data: bytes) -> bytes:
        """HMAC-SHA256 of `data` (bytes, or any bytes-like object) under the key object
        `key` on session `session`."""
        # Everything that can raise in Python happens before ``C_SignInit``: once it
        # succeeds, an exception before ``C_Sign`` (ctypes refusing a bytearray or a str
        # as ``c_char_p``) would leave the operation open on a session the pool keeps as
        # sound, and every later signature on it would fail ``CKR_OPERATION_ACTIVE``
        # (review 32). ``bytes(data)`` is `data` itself for bytes; a str raises here.
        message = bytes(data)
        out = ctypes.create_string_buffer(_MAC_BUFFER)
        length = ctypes.c_ulong(_MAC_BUFFER)
        size = len(message)
        rv = self._sign_init(session, ctypes.byref(self._mechanism), key)
        if rv != CKR_OK:
            raise error_for(rv, p11e.PKCS11Error)
        rv = self._sign(session, message, size, out, ctypes.byref(length))
        if rv == _CKR_BUFFER_TOO_SMALL:
            # The operation stays open on the session (PKCS#11 5.12): never reuse it.
            raise p11e.GeneralError()
        if rv != CKR_OK:
            raise error_for(rv, p11e.PKCS11Error)
        if length.value != _MAC_BYTES:
            # Not an HMAC-SHA256: a short one would give many cards one fingerprint, and
            # a convergent tokenize another card's token ("the token refused it").
            raise p11e.PKCS11Error()
        return out.raw[:_MAC_BYTES]


class HmacOperations(AeadOperations):
    """HMACs under token keys (`hsm.provider.HSMProvider`'s base)."""

    _direct: _DirectHmac | None = None

    def _direct_hmac(self) -> _DirectHmac:
        direct = self._direct
        if direct is None:
            with self._lib_lock:
                if self._direct is None:
                    self._direct = _DirectHmac(self._library_path)
                direct = self._direct
        return direct

    # Set once the token cannot copy keys at all (`_session_copy`); HMACs then use the
    # key. `_uncopyable`: labels of keys the token refused to copy (CKA_COPYABLE false).
    _copy_refused: bool = False
    _uncopyable: frozenset[str] = frozenset()

    def hmac_sha256(self, label: str, data: bytes) -> bytes:
        """Return HMAC-SHA256 of `data` under the token's secret key `label` (32 bytes)."""

        def mac(session: Any) -> bytes:
            key = self._find_secret(session, label)
            return self._direct_hmac().sha256(session.handle, key.handle, data)

        return self._run(mac, name="hmac")

    def hmac_sha256_many(self, label: str, messages: Sequence[bytes]) -> list[bytes]:
        """HMAC-SHA256 of each of `messages` under the token's secret key `label`, in
        order: what `hmac_sha256` returns for each, with one session borrow per
        `HMAC_CHUNK` messages. The key stays in the token: each message is still one
        ``C_SignInit`` + ``C_Sign`` there (`_DirectHmac`; PKCS#11 2.40 has no call that
        MACs several messages; 3.0's message-based signing is in neither SoftHSM2 nor
        python-pkcs11).
        A chunk whose session is lost is rerun whole on a fresh one (an HMAC is
        idempotent). On a networked HSM the chunks run side by side (`_hmac_width`);
        the first error of any chunk is raised, and nothing is returned."""
        if len(messages) == 1:  # a single tokenize: the same call (and metric) as ever
            return [self.hmac_sha256(label, messages[0])]

        def macs(session: Any, chunk: Sequence[bytes]) -> list[bytes]:
            key = self._find_secret(session, label)
            copy = self._session_copy(key, label) if len(chunk) >= _COPY_FROM else None
            signer = key if copy is None else copy
            direct = self._direct_hmac()
            try:
                sha256, session_handle, key_handle = direct.sha256, session.handle, signer.handle
                return [sha256(session_handle, key_handle, m) for m in chunk]
            finally:
                if copy is not None:
                    with contextlib.suppress(p11e.PKCS11Error):
                        copy.destroy()  # a lost session takes its objects with it

        def run(chunk: Sequence[bytes]) -> list[bytes]:
            return self._run(lambda session: macs(session, chunk), name="hmac_many")

        chunks = [messages[at : at + HMAC_CHUNK] for at in range(0, len(messages), HMAC_CHUNK)]
        width = self._hmac_width(len(chunks))
        if width == 1:
            return [mac for chunk in chunks for mac in run(chunk)]
        # A networked HSM (CloudHSM): every HMAC is round trips, so a batch's chunks run
        # side by side on several pooled sessions (bench/levers.md, session 32: 1,000
        # HMACs at 1 ms a call took ~3.8 s one chunk after another).
        may_block()  # the calling thread's own rule; the chunks' threads cannot see it
        # Once a chunk failed, no chunk starts: the batch raises anyway, and each chunk
        # that meets a failing HSM costs two sessions and a re-initialisation (a
        # reconnection). `pool.map` cancels the chunks not started only when the caller
        # reaches the failed chunk in order, after every earlier one ended (review 32).
        # A chunk skipped here never reaches the result: the failed one raises first or
        # later in order, and no chunk is skipped unless one failed.
        failed = threading.Event()

        def run_unless_failed(chunk: Sequence[bytes]) -> list[bytes]:
            if failed.is_set():
                return []
            try:
                return run(chunk)
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="cofre-hmac") as pool:
            done = list(pool.map(run_unless_failed, chunks))
        return [mac for macs in done for mac in macs]

    def _hmac_width(self, chunks: int) -> int:
        """How many of a batch's HMAC chunks run at once: one where each call is
        in-process (SoftHSM2: the chunks would only share the cores) or inside a
        session this thread already holds (a pool of one would wait for itself); on a
        networked HSM, up to half the pool, so single calls still find sessions."""
        if self.local or chunks < 2 or getattr(self._local, "pooled", None) is not None:
            return 1
        return max(1, min(chunks, self.pool_size // 2))

    def _session_copy(self, key: Any, label: str) -> Any | None:
        """A session object copy of the token key `key` for one chunk of HMACs, or None
        where the token cannot copy it (CloudHSM's SDK 5 has no ``C_CopyObject``).

        Why: SoftHSM2's file object store re-reads a token object's file (open, lock,
        read, close) at every ``C_SignInit`` on it, about half the CPU of an HMAC; a
        session object lives in memory. The copy is made in the token by
        ``C_CopyObject`` with ``CKA_TOKEN`` false and a label of its own: PKCS#11 keeps
        it sensitive and non-extractable like the key (a copy cannot weaken those), its
        value never leaves the token, and the caller destroys it after the chunk (a
        lost session destroys it too). The token key is looked up and copied again for
        every chunk, so a destroyed key stops working as before."""
        if self._copy_refused or label in self._uncopyable:
            return None
        try:
            return key.copy({Attribute.TOKEN: False, Attribute.LABEL: _COPY_LABEL})
        except CONNECTION_ERRORS:
            raise  # the session or token is gone: rebuilt and retried like any call
        except p11e.FunctionNotSupported:  # CloudHSM SDK 5: no C_CopyObject at all
            self._copy_refused = True
            return None
        except p11e.PKCS11Error:
            # This key may not be copied (CKR_ACTION_PROHIBITED for CKA_COPYABLE false,
            # which python-pkcs11 0.10 raises as a bare PKCS11Error) or the template is
            # refused: MAC under the key, and do not ask again for it.
            self._uncopyable = self._uncopyable | {label}
            return None
