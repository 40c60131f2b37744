"""Timing: serial latency percentiles and throughput at a number of concurrent clients."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def latency_summary(seconds: list[float] | np.ndarray) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"n": 0}
    return {"n": int(ms.size), "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def serial(call: Callable[[int], object], count: int, budget_s: float, min_count: int = 20
           ) -> tuple[list[float], list[object]]:
    """Run call(i) for i = 0.. one at a time; stop after `count`, or after `budget_s` once `min_count` are done."""
    times: list[float] = []
    results: list[object] = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        results.append(call(i))
        times.append(time.perf_counter() - t0)
        if i + 1 >= min_count and time.perf_counter() - started > budget_s:
            break
    return times, results


def throughput(call: Callable[[int], object], clients: int, seconds: float, queries: int) -> dict[str, float]:
    """Queries per second with `clients` threads each issuing one query after another for `seconds`, and the
    latency percentiles of those calls (what one client sees under that load)."""
    done = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()

    def client(c: int) -> None:
        i = c
        while not stop.is_set():
            t0 = time.perf_counter()
            call(i % queries)
            latencies[c].append(time.perf_counter() - t0)
            done[c] += 1
            i += clients

    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        futures = [pool.submit(client, c) for c in range(clients)]
        time.sleep(seconds)
        stop.set()
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - started
    under_load = latency_summary([t for per_client in latencies for t in per_client])
    return {"clients": clients, "qps": sum(done) / elapsed, "queries": sum(done), "seconds": elapsed,
            **{k: v for k, v in under_load.items() if k.endswith("_ms")}}
