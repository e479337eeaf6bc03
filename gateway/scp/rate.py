"""How fast one peer may open associations: a token bucket per calling host and per calling AE title.

A peer reconnecting in a loop (a PACS gone wrong, a fuzzer) costs the node a thread, the decoding of its request
and a negotiation each time, whatever the answer. ``node.association_rate_per_peer`` new associations a second
(a bucket holding one second's worth, so a PACS opening several at once is served at once) are admitted from each
host and each AE title; past that the request is refused in the negotiation gate's thread, with an
A-ASSOCIATE-RJ written straight to the socket (rejected-transient, local-limit-exceeded), before pynetdicom
makes an association of it (``gateway.scp.server.GatedRequestHandler``). Only admitted requests take a token: a
peer refused for its rate gets in again as soon as its bucket has refilled a little, never shut out for long.

Each process that accepts on the port (the node, its receiving processes) keeps its own buckets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

MAX_PEERS = 10_000  # buckets kept; past it the full ones (peers idle for a second or more) are forgotten


class AssociationRate:
    """Token buckets by peer key (``host:…``, ``ae:…``): ``per_s`` tokens a second, ``per_s`` at most."""

    def __init__(self, per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s = float(per_s)
        self.capacity = max(1.0, self.per_s)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)
        self._lock = threading.Lock()

    def take(self, keys: Sequence[str]) -> str | None:
        """Take a token from the bucket of each of ``keys`` if every one has one, and return None; else take none
        and return the first key whose peer is over its rate."""
        now = self._clock()
        with self._lock:
            levels = {key: self._level(key, now) for key in keys}
            for key, tokens in levels.items():
                if tokens < 1.0:
                    self._buckets[key] = (tokens, now)
                    return key
            for key, tokens in levels.items():
                self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_PEERS:
                self._forget_full(now)
        return None

    def _level(self, key: str, now: float) -> float:
        tokens, counted = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - counted) * self.per_s)

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: a peer absent from the map starts full, which is the same."""
        for key in [key for key in self._buckets if self._level(key, now) >= self.capacity]:
            del self._buckets[key]

    def peers(self) -> int:
        with self._lock:
            return len(self._buckets)
