"""The de-identification workers' time budget (issue 28): a batch past its budget has its workers killed and
raises ``TimeBudgetExceeded``; the pool goes on with new workers. Real worker processes (spawn), no mocks."""

from __future__ import annotations

import os
import time

import pytest

from gateway.deid.errors import TimeBudgetExceeded
from gateway.deid.work import WorkPool

pytestmark = pytest.mark.slow  # starts de-identification worker processes and waits out their budget


def _nothing() -> None:
    return None


def _nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_a_batch_past_its_budget_kills_the_workers_and_the_pool_goes_on():
    pool = WorkPool(1, _nothing, ())
    try:
        (first_worker,) = pool.run(_nap, [0.0], timeout_s=60)
        started = time.monotonic()
        with pytest.raises(TimeBudgetExceeded, match="time budget exceeded"):
            pool.run(_nap, [60.0], timeout_s=1.0)
        assert time.monotonic() - started < 30, "stopped at the budget, not when the work ended"
        with pytest.raises(ProcessLookupError):
            for _ in range(100):  # the killed worker is reaped by the old pool's thread
                os.kill(first_worker, 0)
                time.sleep(0.1)
        (second_worker,) = pool.run(_nap, [0.0], timeout_s=60)
        assert second_worker != first_worker and pool.rebuilt == 1
    finally:
        pool.shutdown()
