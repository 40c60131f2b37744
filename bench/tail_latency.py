"""`cbmir bench tail`: where a Milvus server's slow searches come from (the client's side, or the server's).

Times many serial searches of one existing collection, then reads three things side by side: the client's latency
percentiles; the server's own latency histograms over the same calls (proxy, query node: a slow call the server
also saw as slow is the server's); and, per query vector, the spread over passes (a slow query every pass is a hard
query; slow calls scattered over queries are interference: other work on the cores at that moment).
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cbmir.bench import metrics
from cbmir.bench.engines import MilvusEngine, index_config

# The server's histograms of a search: proxy (whole request inside Milvus) and query node (the leader's search
# over its segments). Bucket bounds are the server's (ms: 1, 2, 4, 8, 16, 32, ...).
SERVER_HISTOGRAMS = {"proxy": ("milvus_proxy_sq_latency", ""),
                     "query_node": ("milvus_querynode_sq_req_latency", 'scope="OnLeader"')}
BOUNDS_MS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class TailConfig:
    server_uri: str
    collection: str
    queries: np.ndarray
    labels: list[str] | None = None     # a label filter per query (label == ...), or None: unfiltered
    ef: int = 96
    k: int = 10
    passes: int = 10
    metrics_url: str = ""               # the server's /metrics (healthz port); "" skips the server's view
    slow_factor: float = 2.0            # a call slower than this × the client's p50 is "slow"


def run(config: TailConfig) -> dict[str, Any]:
    # The search `bench search` times (ids only, Bounded), on the collection it kept: reuse=True never drops it.
    engine = MilvusEngine("server", config.server_uri, collection=config.collection, reuse=True)
    engine.config = index_config("HNSW", 0)
    count = len(config.queries)

    def call(i: int) -> Any:
        q = i % count
        label = config.labels[q] if config.labels else None
        return engine.search(config.queries[q], config.k, {"ef": config.ef}, label)

    for i in range(min(count, 20)):  # warm-up: connection and first-touch costs are not the tail
        call(i)
    before = server_histograms(config.metrics_url) if config.metrics_url else {}
    calls = count * config.passes
    times, _ = metrics.serial(call, calls, budget_s=float("inf"))
    after = server_histograms(config.metrics_url) if config.metrics_url else {}
    engine.close()
    ms = np.asarray(times) * 1000.0
    p50 = float(np.median(ms))
    slow = ms > config.slow_factor * p50
    per_query = ms.reshape(config.passes, count)
    slow_queries = np.unique(np.nonzero(slow)[0] % count)
    server = {name: _over_bounds(before.get(name, {}), after.get(name, {})) for name in SERVER_HISTOGRAMS
              if after.get(name)}
    return {
        "config": {k: v for k, v in asdict(config).items() if k not in ("queries", "labels")}
                  | {"queries": count, "filtered": bool(config.labels)},
        "client": metrics.latency_summary(times) | {"p99_9_ms": float(np.percentile(ms, 99.9)),
                                                   "max_ms": float(ms.max())},
        "slow_calls": int(slow.sum()), "slow_threshold_ms": config.slow_factor * p50,
        # Interference scatters slow calls over many queries; a hard query is slow on every pass.
        "distinct_queries_among_slow_calls": int(len(slow_queries)),
        "per_query_median_ms": {"p50": float(np.median(np.median(per_query, axis=0))),
                                "max": float(np.max(np.median(per_query, axis=0)))},
        # The same bounds as the server's buckets: a call the client saw over 8 ms that neither the proxy nor the
        # query node did was slow outside Milvus (client, gRPC, the network stack).
        "client_calls_over_ms": {"calls": int(ms.size)} | {f">{b:g}": int((ms > b).sum()) for b in BOUNDS_MS},
        "server_calls_over_ms": server,
    }


def server_histograms(url: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts (upper bound ms -> calls) of each SERVER_HISTOGRAMS entry, summed over nodes."""
    with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - the local server's metrics
        text = reply.read().decode()
    out: dict[str, dict[float, float]] = {}
    for name, (metric, selector) in SERVER_HISTOGRAMS.items():
        for line in text.splitlines():
            match = re.match(rf"{metric}_bucket\{{([^}}]*)\}} (\S+)", line)
            if not match or 'query_type="search"' not in match.group(1) or selector not in match.group(1):
                continue
            bound = re.search(r'le="([^"]+)"', match.group(1)).group(1)
            upper = float("inf") if bound == "+Inf" else float(bound)
            out.setdefault(name, {})
            out[name][upper] = out[name].get(upper, 0.0) + float(match.group(2))
    return out


def _over_bounds(before: dict[float, float], after: dict[float, float]) -> dict[str, int]:
    """Calls between two scrapes slower than each bucket bound (ms): total minus those within the bound."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    return {"calls": int(total)} | {f">{bound:g}": int(total - (after[bound] - before.get(bound, 0.0)))
                                    for bound in sorted(after) if bound in BOUNDS_MS}


def table(record: dict[str, Any]) -> str:
    c = record["client"]
    lines = [f"{c['n']} serial searches (ef {record['config']['ef']}, "
             f"{'label-filtered' if record['config']['filtered'] else 'unfiltered'}): client p50 {c['p50_ms']:.2f} "
             f"p95 {c['p95_ms']:.2f} p99 {c['p99_ms']:.2f} p99.9 {c['p99_9_ms']:.2f} max {c['max_ms']:.1f} ms",
             f"slow calls (> {record['slow_threshold_ms']:.1f} ms): {record['slow_calls']}, over "
             f"{record['distinct_queries_among_slow_calls']} distinct queries; per-query median ms: p50 "
             f"{record['per_query_median_ms']['p50']:.2f}, slowest query {record['per_query_median_ms']['max']:.2f}"]
    views = {"client": record["client_calls_over_ms"]} | {
        f"server {name}": over for name, over in record["server_calls_over_ms"].items()}
    lines.append(f"{'calls slower than':22s}" + "".join(f"{f'>{b} ms':>9s}" for b in BOUNDS_MS) + f"{'of':>8s}")
    for name, over in views.items():
        lines.append(f"{name:22s}" + "".join(f"{over.get(f'>{b}', '-')!s:>9s}" for b in BOUNDS_MS)
                     + f"{over['calls']:>8d}")
    return "\n".join(lines)
