"""The gauge of this worker's open files against its limits (session 41).

IN PCI SCOPE (it runs in the vault process); it reads no card data and no key.

A worker out of descriptors answers 503 `hsm_unavailable` with the generic detail every
HSM outage says (`api.problems.GENERIC_DETAILS`): its limits are not a caller's to read.
The on-call reads them here, on the metrics listener, beside the ERROR line
`hsm._open_files` writes: ``cofre.process.open_files`` with ``kind`` ``open`` (the
descriptors this worker holds, skipped while none is left to list them with),
``soft_limit`` and ``hard_limit`` (``RLIMIT_NOFILE``).
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from opentelemetry.metrics import CallbackOptions, Meter, Observation

__all__ = ["OPEN_FILES_GAUGE", "observe_open_files"]

OPEN_FILES_GAUGE: Final = "cofre.process.open_files"
_FDS: Final = Path("/proc/self/fd")


def open_files_now() -> list[Observation]:
    """This process's open descriptors (when they can be listed) and its limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    seen = [
        Observation(soft, {"kind": "soft_limit"}),
        Observation(hard, {"kind": "hard_limit"}),
    ]
    # Listing needs a descriptor itself (not counted): out of them, the limits alone
    # are reported.
    with contextlib.suppress(OSError):
        seen.append(Observation(len(os.listdir(_FDS)) - 1, {"kind": "open"}))
    return seen


def observe_open_files(meter: Meter) -> None:
    """Report `OPEN_FILES_GAUGE` at each metrics collection."""

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        return open_files_now()

    meter.create_observable_gauge(
        OPEN_FILES_GAUGE,
        callbacks=[observe],
        description="open files of this worker (kind=open) and its RLIMIT_NOFILE limits",
    )
