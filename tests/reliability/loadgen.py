"""Load generator: N concurrent clients query a running cbmir service for S seconds; QPS, p50/p99, errors.

    python tests/reliability/loadgen.py --target 127.0.0.1:50051 --clients 16 --seconds 60 IMAGE [IMAGE ...]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from cbmir.services.query.client import RetrievalClient


def run_load(target: str, images: Sequence[bytes], clients: int = 16, seconds: float = 60.0, top_k: int = 10,
             timeout: float = 30.0, **client_kwargs) -> dict:
    """Each client sends image queries back to back (a closed loop) until the time is up."""
    deadline = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[dict[str, int]] = [{} for _ in range(clients)]

    def worker(index: int) -> None:
        with RetrievalClient(target, timeout=timeout, **client_kwargs) as client:
            n = index
            while time.monotonic() < deadline:
                image = images[n % len(images)]
                n += clients
                started = time.perf_counter()
                try:
                    client.search(image=image, top_k=top_k)
                    latencies[index].append(time.perf_counter() - started)
                except grpc.RpcError as error:
                    errors[index][error.code().name] = errors[index].get(error.code().name, 0) + 1

    threads = [threading.Thread(target=worker, args=(i,), name=f"load-{i}") for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    flat = np.array([x for per in latencies for x in per]) * 1000
    by_code: dict[str, int] = {}
    for per in errors:
        for code, count in per.items():
            by_code[code] = by_code.get(code, 0) + count
    return {
        "clients": clients, "seconds": round(elapsed, 1), "requests": int(flat.size), "errors": sum(by_code.values()),
        "errors_by_code": by_code, "qps": round(flat.size / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(float(np.percentile(flat, 50)), 1) if flat.size else None,
        "p99_ms": round(float(np.percentile(flat, 99)), 1) if flat.size else None,
        "max_ms": round(float(flat.max()), 1) if flat.size else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="query image files (PNG, JPEG, DICOM)")
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    images = [Path(p).read_bytes() for p in args.images]
    print(json.dumps(run_load(args.target, images, args.clients, args.seconds, args.k), indent=2))


if __name__ == "__main__":
    main()
