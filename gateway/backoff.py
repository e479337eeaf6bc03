"""The one back-off of the gateway: waits that double from a first one up to a ceiling, optionally jittered.

Every place that waits longer after each failure uses it (delivery retries, a failing case in the stage
loop, a receiving process that keeps exiting, the PostgreSQL wake-up listener reconnecting), each with its
own first wait and ceiling, so that the growth rule is written once and tested once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Wait ``initial_s * 2**(attempt-1)`` seconds after failed attempt ``attempt`` (1-based), at most ``max_s``
    (a ``max_s`` below ``initial_s`` is allowed: every wait is then ``max_s``).

    With ``jitter``, the wait is drawn uniformly from the upper half of that, ``[ceiling/2, ceiling]``: cases
    that failed together (a peer down for all of them) then do not all retry in the same second, and the wait
    never drops below half its nominal value.
    """

    initial_s: float
    max_s: float
    jitter: bool = False

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s <= 0:
            raise ValueError(f"back-off waits must be positive, got initial_s={self.initial_s}, max_s={self.max_s}")

    def ceiling_s(self, attempt: int) -> float:
        """The nominal wait after failed attempt ``attempt``; attempts below 1 count as the first."""
        exponent = max(attempt - 1, 0)
        if exponent >= 64:  # 2**64 times any first wait is past every ceiling; keeps the float finite
            return self.max_s
        return min(self.max_s, self.initial_s * 2 ** exponent)

    def wait_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (jittered when ``jitter``; ``rng`` for tests)."""
        ceiling = self.ceiling_s(attempt)
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(ceiling / 2, ceiling)
