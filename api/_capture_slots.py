"""The capture listener's share of its worker's database pool (`api.capture` uses it).

IN PCI SCOPE (the capture listener receives card data). Anyone on the internet reaches
the listener without a client certificate, and every page, preflight and capture
takes a database connection for its rate charge before any limit can refuse it. The
pool is the mTLS API's too (`pool_size` and as many again, 10 s to wait for one), and
the listener's thread pool (40 threads) is larger: requests from many addresses, each
within its own limit, could hold every connection and make the payments services'
tokenize and detokenize wait, then fail 503 (review 34). So the listener's database
work holds a place here first, and a request that finds none is refused at once
(`CaptureBusy`, 503 ``capture_busy``): it waits for nothing, so it holds no thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from api.errors import CaptureBusy
from api.observability import Telemetry

__all__ = ["RETRY_AFTER_SECONDS", "CaptureSlots"]

# A place comes back as soon as one operation ends (milliseconds): a second is the
# least `Retry-After` says anyway.
RETRY_AFTER_SECONDS: Final = 1.0


class CaptureSlots:
    """`places` database operations of the capture listener at once, in one worker
    process (the listener runs on its own event loop; its operations in threads). Each
    refusal is counted in ``cofre.capture.busy`` when `telemetry` is given."""

    def __init__(self, places: int, telemetry: Telemetry | None = None) -> None:
        self.places = places
        self._free = threading.BoundedSemaphore(places)
        self._busy = (
            telemetry.meter.create_counter(
                "cofre.capture.busy",
                description="capture listener work refused: its share of the pool in use",
            )
            if telemetry is not None
            else None
        )

    @contextmanager
    def place(self) -> Iterator[None]:
        """Hold a place for the block, taken at once or not at all.

        Raises `CaptureBusy` (nothing done) when every place is held."""
        if not self._free.acquire(blocking=False):
            if self._busy is not None:
                self._busy.add(1)
            raise CaptureBusy("the capture listener is busy; retry shortly", RETRY_AFTER_SECONDS)
        try:
            yield
        finally:
            self._free.release()
