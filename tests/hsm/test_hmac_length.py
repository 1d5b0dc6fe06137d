"""A module that answers ``CKR_OK`` with an HMAC-SHA256 of the wrong length is refused.

The fingerprint is the card's identity in the vault: a module that handed back a short
MAC (16 bytes, or none) would give many cards one fingerprint, and a convergent tokenize
would then answer another card's token. python-pkcs11's `Key.sign` returned whatever
length the module said; `hsm._hmac._DirectHmac` checks it (review 32's residual). The
module here is a stub built for the test, not a vendor's behaviour."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pkcs11.exceptions as p11e
import pytest

from hsm._hmac import _DirectHmac
from tests.support.cloudhsm_shim import PKCS11_INCLUDE

_STUB = r"""
#include <p11-kit/pkcs11.h>
#include <string.h>
static CK_RV sign_init(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) {
    (void)s; (void)m; (void)k;
    return CKR_OK;
}
static CK_RV sign(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR o,
                  CK_ULONG_PTR ol) {
    (void)s; (void)d; (void)l;
    if (o != NULL) memset(o, 0xAB, MAC_LEN);
    *ol = MAC_LEN;
    return CKR_OK;
}
static CK_FUNCTION_LIST list;
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
    list.C_SignInit = sign_init;
    list.C_Sign = sign;
    *out = &list;
    return CKR_OK;
}
"""


def _stub(tmp_path: Path, mac_len: int) -> Path:
    gcc = shutil.which("gcc")
    assert gcc is not None, "gcc is needed: run `make test-deps`"
    source = tmp_path / "stub.c"
    source.write_text(_STUB)
    library = tmp_path / f"libmac{mac_len}.so"
    flags = ["-shared", "-fPIC", f"-I{PKCS11_INCLUDE}", f"-DMAC_LEN={mac_len}"]
    subprocess.run(
        [gcc, *flags, str(source), "-o", str(library)],
        check=True,
        timeout=120,
    )
    return library


@pytest.mark.parametrize("mac_len", [0, 16, 31, 33, 64])
def test_a_mac_of_another_length_than_32_bytes_is_refused(tmp_path: Path, mac_len: int) -> None:
    direct = _DirectHmac(_stub(tmp_path, mac_len))
    with pytest.raises(p11e.PKCS11Error):
        direct.sha256(1, 1, b"4111111111111111")


def test_a_mac_of_32_bytes_is_answered(tmp_path: Path) -> None:
    direct = _DirectHmac(_stub(tmp_path, 32))
    assert direct.sha256(1, 1, b"4111111111111111") == b"\xab" * 32
