"""Spreading a node's requests across its worker processes when the kernel does not.

IN PCI SCOPE (transport). Each worker of `cofre serve` listens on its own SO_REUSEPORT
socket, and the kernel hashes each new connection to one of them. Over hundreds of
connections the hash evens out; over the handful a payment service's pool holds, it
does not: with 4 keep-alive connections, one worker of two gets all of them one time in
eight, and 3 of 4 half the time, and keeps them for the connections' lives. That worker
then serves everything on one core (one GIL) while the other idles (issue 21: the
profiles of a batch load showed one worker holding the GIL 47% of the time and the
other 1%). A client's pool that keeps idle connections and reuses some of them (haproxy,
most HTTP client libraries) makes it worse: the open connections may be even while the
busy ones are not.

`WorkerLoads` is the remedy a keep-alive load balancer without a shared accept queue
uses (gRPC's max connection age, Envoy's drain of an overloaded host): each worker
publishes its requests in flight in a shared array, and a worker with at least two
more in flight than the least busy worker of the node answers one request with
``Connection: close``. The client opens a new connection for its next request, which
the kernel hashes afresh: half the time onto another worker, and the worker repeats
until the node is even. Nothing is cut short: the request is answered in full first,
and an HTTP/1.1 client does not send another request on a connection it was told is
closing. One worker closes at most one connection per `COOLDOWN_SECONDS`, so a node
pays at most that many TLS handshakes for it (a full mutual-TLS handshake is ~1-2 ms of
CPU) however its load swings, and a new connection has time to land before the next
decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol

# One connection closed per worker per this many seconds at most.
COOLDOWN_SECONDS: Final = 0.5
# A worker whose listener is not serving (starting, or stopped): left out of the
# comparison, since the kernel sends it nothing.
NOT_LISTENING: Final = -1


class Counts(Protocol):
    """The node's shared array (`multiprocessing.RawArray` of C longs): worker N's slot
    holds its requests in flight, or `NOT_LISTENING`. Each worker writes only its own
    slot (from its event loop), so no lock is needed; a reader sees some recent value of
    each slot, which is all a balancing decision needs."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> int: ...
    def __setitem__(self, index: int, value: int, /) -> None: ...


def not_listening(counts: Counts) -> None:
    """Mark every slot of a new array as not serving (the supervisor, before spawning)."""
    for index in range(len(counts)):
        counts[index] = NOT_LISTENING


class WorkerLoads:
    """Worker `index`'s slot in the node's `Counts`, kept by its API listener's
    connections (`api.connections`): `started` once a request is in whole and
    `finished` when it is answered, `should_close` as an answer starts."""

    def __init__(
        self,
        counts: Counts,
        index: int,
        *,
        cooldown: float = COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counts = counts
        self._index = index
        self._cooldown = cooldown
        self._clock = clock
        self._in_flight = 0
        self._listening = False
        self._closed_at = -cooldown

    def listening(self, serving: bool) -> None:
        """Whether this worker's API listener is serving: only then do the others
        compare themselves with it (it is publishing a real count)."""
        self._listening = serving
        self._counts[self._index] = self._in_flight if serving else NOT_LISTENING

    def started(self) -> None:
        self._in_flight += 1
        self._publish()

    def finished(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._publish()

    def should_close(self) -> bool:
        """Whether the answer starting (its request already `started`) should carry
        ``Connection: close``: this worker holds at least two more requests in
        flight than the least busy serving worker, and has not closed one within the
        cooldown."""
        if not self._listening:
            return False
        mine = self._in_flight
        counts, index = self._counts, self._index
        least = min(
            (
                count
                for other in range(len(counts))
                if other != index and (count := counts[other]) != NOT_LISTENING
            ),
            default=mine,
        )
        if mine < least + 2:
            return False
        now = self._clock()
        if now - self._closed_at < self._cooldown:
            return False
        self._closed_at = now
        return True

    def _publish(self) -> None:
        if self._listening:
            self._counts[self._index] = self._in_flight
