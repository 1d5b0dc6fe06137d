"""Errors of the hsm package: every `pkcs11` exception is translated into one of these.

IN PCI SCOPE. Messages name the library path, token label or key label involved, and
never a PIN or key material.

    CofreError
    └── HSMError
        ├── HSMUnavailable            code hsm_unavailable  (library, token or session gone)
        │   ├── HSMAuthFailed         code hsm_unavailable  (wrong or locked PIN)
        │   ├── HSMOpenFilesExhausted code hsm_unavailable  (this process is out of descriptors)
        │   └── HSMKeyUnavailable     code hsm_unavailable  (key not yet usable: new on CloudHSM)
        ├── HSMKeyNotFound            code hsm_key_not_found
        ├── HSMKeyNotRegistered       code hsm_key_unregistered (not the key the registry records)
        ├── HSMMechanismUnsupported   code hsm_mechanism_unsupported
        ├── HSMKeyNotExtractable      code hsm_key_not_extractable (the token refused export)
        ├── HSMTokenInService         code hsm_token_in_service (selftest on a serving token)
        └── HSMOperationFailed        code hsm_operation_failed (bad wrapped key, bad input)
"""

from __future__ import annotations

from cofre.errors import CofreError


class HSMError(CofreError):
    code = "hsm_error"


class HSMUnavailable(HSMError):
    """The PKCS#11 library, the token or the session cannot be reached right now."""

    code = "hsm_unavailable"


class HSMAuthFailed(HSMUnavailable):
    """The token refused the user PIN (wrong, locked or expired). Its API code is
    ``hsm_unavailable`` like its parent's: a client can do nothing different about it,
    and the message tells the operator what happened."""


class HSMOpenFilesExhausted(HSMUnavailable):
    """This process cannot open a file (its ``RLIMIT_NOFILE`` or the host's table is used
    up), so the token library cannot read its objects or reach its HSM: SoftHSM then
    finds no key, which is not the key's absence (`hsm._open_files`). Its API code is
    ``hsm_unavailable`` like its parent's; the message names the limit."""


class HSMKeyUnavailable(HSMUnavailable):
    """The token knows the key but refuses its handle: on CloudHSM a new token key must
    reach a quorum of HSMs first. Retried with backoff for a bounded time
    (``COFRE_HSM__KEY_AVAILABILITY_TIMEOUT_SECONDS``) before this is raised."""


class HSMKeyNotFound(HSMError):
    code = "hsm_key_not_found"


class HSMKeyNotRegistered(HSMError):
    """A key found under a label the key registry records is another key than the
    record's (another ``CKA_ID`` or check value, or a private half that does not sign
    for the recorded public one): a substitute, never used (`hsm._identity`). The code
    is the registry's own for a key it does not know (`vault.errors.KeyNotRegistered`)."""

    code = "hsm_key_unregistered"


class HSMMechanismUnsupported(HSMError):
    code = "hsm_mechanism_unsupported"


class HSMKeyNotExtractable(HSMError):
    code = "hsm_key_not_extractable"


class HSMOperationFailed(HSMError):
    code = "hsm_operation_failed"


class HSMTokenInService(HSMError):
    """`cofre hsm selftest` was pointed at a token that already holds Cofre's keys: its
    temporary keys would be keys the registry does not know, on a token in service."""

    code = "hsm_token_in_service"
