"""Decode memory in flight, bounded: a query image is admitted by what its header says decoding will cost.

Without it, 40 concurrent calls of a 10000x10000 PNG under the byte limits each take ~1-3 GiB and kill the pod.
Admission never waits (a waiting request still holds its bytes and a worker): over the budget the call is refused
with RESOURCE_EXHAUSTED at once and the client retries with backoff.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_DECODE_BUDGET_BYTES = 1024 * 1024 * 1024


class BudgetExceeded(Exception):
    def __init__(self, cost: int, in_flight: int, budget: int) -> None:
        super().__init__(f"decoding this image needs ~{cost / 2**20:.0f} MiB and {in_flight / 2**20:.0f} MiB of "
                         f"the server's {budget / 2**20:.0f} MiB decode budget are in use: retry later")
        self.cost, self.in_flight, self.budget = cost, in_flight, budget


class DecodeBudget:
    """Bytes of decode memory held by requests in flight, never more than `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_DECODE_BUDGET_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"decode budget must be >= 1 byte, got {max_bytes}")
        self.max_bytes = max_bytes
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def acquire(self, cost: int) -> None:
        """Hold `cost` bytes, or raise BudgetExceeded at once."""
        with self._lock:
            if self._in_flight + cost > self.max_bytes:
                raise BudgetExceeded(cost, self._in_flight, self.max_bytes)
            self._in_flight += cost

    def release(self, cost: int) -> None:
        with self._lock:
            self._in_flight -= cost

    @contextmanager
    def admit(self, cost: int) -> Iterator[None]:
        self.acquire(cost)
        try:
            yield
        finally:
            self.release(cost)
