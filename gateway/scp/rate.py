"""How fast one peer may open associations: a token bucket per calling host and per calling AE title.

A peer reconnecting in a loop (a PACS gone wrong, a fuzzer) costs the node a thread, the decoding of its request
and a negotiation each time, whatever the answer. ``node.association_rate_per_peer`` new associations a second
(a bucket holding one second's worth, so a PACS opening several at once is served at once) are admitted from each
host and each AE title; past that the request is refused in the negotiation gate's thread, with an
A-ASSOCIATE-RJ written straight to the socket (rejected-transient, local-limit-exceeded), before pynetdicom
makes an association of it (``gateway.scp.server.GatedRequestHandler``). Only admitted requests take a token: a
peer refused for its rate gets in again as soon as its bucket has refilled a little, never shut out for long.

The buckets are the node's, not a process's: where receiving processes accept on the port too, they are kept in
the node's shared association file (``gateway.scp.slots.AssociationSlots.rate_buckets``), so a peer gets the
rate once however many processes take its connections; a node accepting alone keeps them in memory.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

MAX_PEERS = 10_000  # buckets kept in memory; past it the full ones (peers idle for a second or more) are forgotten

Bucket = tuple[float, float]  # (tokens, when counted), on the monotonic clock every process of the node shares


class Buckets(Protocol):
    """Where the buckets are kept: ``get``/``put`` only inside ``locked()``. ``put`` may forget buckets for which
    ``forgettable`` is true (refilled to the full: a peer with no bucket starts full, which is the same)."""

    def locked(self) -> contextlib.AbstractContextManager[None]: ...

    def get(self, key: str) -> Bucket | None: ...

    def put(self, key: str, bucket: Bucket, forgettable: Callable[[Bucket], bool]) -> None: ...


class MemoryBuckets:
    """One process's buckets, at most ``MAX_PEERS`` of them beyond those still refilling."""

    def __init__(self) -> None:
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            yield

    def get(self, key: str) -> Bucket | None:
        return self._buckets.get(key)

    def put(self, key: str, bucket: Bucket, forgettable: Callable[[Bucket], bool]) -> None:
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_PEERS:
            for other in [other for other, kept in self._buckets.items() if forgettable(kept)]:
                del self._buckets[other]

    def __len__(self) -> int:
        return len(self._buckets)


class AssociationRate:
    """Token buckets by peer key (``host:…``, ``ae:…``): ``per_s`` tokens a second, ``per_s`` at most."""

    def __init__(self, per_s: float, clock: Callable[[], float] = time.monotonic,
                 buckets: Buckets | None = None) -> None:
        self.per_s = float(per_s)
        self.capacity = max(1.0, self.per_s)
        self._clock = clock
        self.buckets: Buckets = buckets if buckets is not None else MemoryBuckets()

    def take(self, keys: Sequence[str]) -> str | None:
        """Take a token from the bucket of each of ``keys`` if every one has one, and return None; else take none
        and return the first key whose peer is over its rate."""
        now = self._clock()

        def forgettable(bucket: Bucket) -> bool:
            return self._level(bucket, now) >= self.capacity

        with self.buckets.locked():
            levels = {key: self._level(self.buckets.get(key), now) for key in keys}
            for key, tokens in levels.items():
                if tokens < 1.0:
                    self.buckets.put(key, (tokens, now), forgettable)
                    return key
            for key, tokens in levels.items():
                self.buckets.put(key, (tokens - 1.0, now), forgettable)
        return None

    def _level(self, bucket: Bucket | None, now: float) -> float:
        if bucket is None:
            return self.capacity
        tokens, counted = bucket
        return min(self.capacity, tokens + max(0.0, now - counted) * self.per_s)
