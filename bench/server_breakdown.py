"""`cbmir bench server-breakdown`: where one Milvus server search spends its time, part by part, at one N.

Every part is a real call against the same loaded collection: the pymilvus request encode alone (no network), a
trivial RPC (GetVersion: gRPC + proxy, no search), a prebuilt search request sent on the raw gRPC stub (wire +
proxy + query node, no pymilvus), then `MilvusClient.search` per consistency level, with / without output fields,
per limit, per ef, with the label filter (one partition: fewer segments), and the store's own `search`. Parts are
timed round-robin (one call of each per round) so that a shared machine's load falls on all of them alike. The
server's own histograms (/metrics: proxy and query-node stages, per query) are read around the Bounded rounds.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cbmir.bench import metrics
from cbmir.bench.engines import MilvusEngine, index_config, label_name
from cbmir.bench.search import SearchBenchConfig, dataset
from cbmir.services.store import schema as store_schema

LEVELS = ("Strong", "Session", "Bounded", "Eventually")
# Strong waits for the next time tick (up to proxy.timeTickInterval) on every call: a few rounds say enough.
STRONG_ROUNDS = 30
# Server-side stages (Prometheus histograms, sums in ms), proxy then query node, read around the Bounded rounds.
STAGE_PARTS = ("search_strong", "search_session", "search_bounded", "search_eventually", "search_ef_16",
               "search_label_filter", "one_partition", "one_partition_label")
SERVER_METRICS = (
    "milvus_proxy_sq_latency", "milvus_proxy_sq_wait_result_latency", "milvus_proxy_sq_reduce_result_latency",
    "milvus_proxy_sq_decode_result_latency", "milvus_querynode_sq_req_latency",
    "milvus_querynode_sq_wait_tsafe_latency", "milvus_querynode_sq_queue_latency",
    "milvus_querynode_sq_core_latency", "milvus_querynode_sq_segment_latency",
    "milvus_querynode_sq_reduce_latency",
)


@dataclass
class BreakdownConfig:
    uri: str
    n: int = 20_000
    dim: int = 1024
    ef: int = 64
    k: int = 10
    rounds: int = 200
    metrics_url: str = ""                    # the server's /metrics (cbmir milvus-server: its healthz port)
    seed: int = 0
    store_consistency: str = "Session"       # what MilvusStore.search is asked for in the `store_search` part


@dataclass
class Part:
    name: str
    what: str
    latency: dict[str, float] = field(default_factory=dict)


def run(config: BreakdownConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Load (or reuse) bench_<N> with HNSW on the server, then time every part; a JSON-able record."""
    from pymilvus.client import ts_utils
    from pymilvus.client.prepare import Prepare

    base, labels, queries, _ = dataset(SearchBenchConfig(sizes=(config.n,), dim=config.dim, seed=config.seed),
                                       config.n)
    engine = MilvusEngine("server", config.uri, collection=f"bench_{config.n}", reuse=True)
    started = time.perf_counter()
    engine.load(base, labels)
    engine.build(index_config("HNSW", config.n))
    progress(f"N={config.n}: collection ready in {time.perf_counter() - started:.1f} s "
             f"(reused rows: {engine.reused_rows}, index: {engine.reused_index}); segments {engine.segments()}")
    # The same rows in a collection whose partition key hashes into one partition: segments by size, not by label.
    single = MilvusEngine("server", config.uri, collection=f"bench_{config.n}_p1", reuse=True, num_partitions=1)
    started = time.perf_counter()
    single.load(base, labels)
    single.build(index_config("HNSW", config.n))
    progress(f"N={config.n}, one partition: ready in {time.perf_counter() - started:.1f} s; segments "
             f"{single.segments()}")
    client, store, name = engine.client, engine.store, engine.collection
    handler = client._get_connection()  # noqa: SLF001 - the raw gRPC stub isolates the wire from pymilvus
    rows = [np.ascontiguousarray(q, dtype=np.float32) for q in queries]
    some_label = label_name(int(labels[0]))
    blobs = [r.tobytes() for r in rows]
    fields = list(store_schema.OUTPUT_FIELDS)
    schema_dict = handler._get_schema(name)[0]  # noqa: SLF001 - what pymilvus caches to send float32 bytes as is

    def search(i: int, level: str = "Bounded", ef: int = config.ef, limit: int = config.k,
               output_fields: list[str] | None = None, expr: str = "", data: Any = None) -> Any:
        return client.search(name, data=[blobs[i % len(blobs)]] if data is None else data, limit=limit,
                             anns_field=store_schema.EMBEDDING, filter=expr, output_fields=output_fields or [],
                             search_params={"metric_type": "COSINE", "params": {"ef": max(ef, limit)}},
                             consistency_level=level)

    def search_single(i: int, expr: str = "") -> Any:
        return client.search(single.collection, data=[blobs[i % len(blobs)]], limit=config.k,
                             anns_field=store_schema.EMBEDDING, filter=expr, output_fields=[],
                             search_params={"metric_type": "COSINE", "params": {"ef": config.ef}},
                             consistency_level="Bounded")

    def request(i: int, data: Any) -> Any:
        level: dict[str, Any] = {"consistency_level": "Bounded", "schema": schema_dict}
        ts_utils.construct_guarantee_ts(name, level)  # what MilvusClient.search does before encoding
        return Prepare.search_requests_with_expr(
            collection_name=name, anns_field=store_schema.EMBEDDING,
            param={"metric_type": "COSINE", "params": {"ef": config.ef}}, limit=config.k, data=data, expr="",
            output_fields=[], use_default_consistency=False, **level)

    prebuilt = [request(i, [r]) for i, r in enumerate(rows)]
    parts: dict[str, tuple[str, Callable[[int], Any]]] = {
        "encode_tolist": ("pymilvus request encode, vector as a Python list (ndarray.tolist())",
                          lambda i: request(i, [rows[i % len(rows)].tolist()])),
        "encode_numpy": ("pymilvus request encode, vector as a float32 ndarray (packed float by float)",
                         lambda i: request(i, [rows[i % len(rows)]])),
        "encode_bytes": ("pymilvus request encode, vector as float32 bytes (ndarray.tobytes(), no float loop)",
                         lambda i: request(i, [rows[i % len(rows)].tobytes()])),
        "rpc_get_version": ("GetVersion RPC: gRPC round trip + proxy, no search",
                            lambda i: handler._stub.GetVersion(_get_version_request(), timeout=10)),  # noqa: SLF001
        "stub_search": ("prebuilt SearchRequest on the raw gRPC stub (Bounded): wire + proxy + query node",
                        lambda i: handler._stub.Search(prebuilt[i % len(prebuilt)], timeout=10)),  # noqa: SLF001
        **{f"search_{level.lower()}": (f"MilvusClient.search, consistency {level}, ids only, float32 bytes",
                                       lambda i, level=level: search(i, level)) for level in LEVELS},
        "search_list_input": ("MilvusClient.search, Bounded, vector passed as ndarray.tolist()",
                              lambda i: search(i, data=[rows[i % len(rows)].tolist()])),
        "search_numpy_input": ("MilvusClient.search, Bounded, vector passed as a float32 ndarray",
                               lambda i: search(i, data=[rows[i % len(rows)]])),
        "search_output_fields": (f"MilvusClient.search, Bounded, with the {len(fields)} scalar output fields",
                                 lambda i: search(i, output_fields=fields)),
        "search_limit_1": ("MilvusClient.search, Bounded, limit 1", lambda i: search(i, limit=1)),
        "search_limit_100": ("MilvusClient.search, Bounded, limit 100 (ef 100)", lambda i: search(i, limit=100)),
        "search_ef_16": ("MilvusClient.search, Bounded, ef 16", lambda i: search(i, ef=16)),
        "search_ef_256": ("MilvusClient.search, Bounded, ef 256", lambda i: search(i, ef=256)),
        "search_label_filter": ("MilvusClient.search, Bounded, label == one class (its partition's segments only)",
                                lambda i: search(i, expr=f'label == "{some_label}"')),
        "one_partition": ("MilvusClient.search, Bounded, same rows in a collection of 1 partition (fewer segments)",
                          search_single),
        "one_partition_label": ("the same with label == one class (a filter inside the one partition)",
                                lambda i: search_single(i, f'label == "{some_label}"')),
        "store_search": (f"MilvusStore.search (consistency {config.store_consistency}, output fields as the "
                         "service needs them)",
                         lambda i: store.search(name, rows[i % len(rows)][None, :], config.k,
                                                consistency_level=config.store_consistency)),
    }
    for call in (v[1] for v in parts.values()):
        call(0)  # warm-up: connections, lazy loads, caches
    times: dict[str, list[float]] = {key: [] for key in parts}
    for r in range(config.rounds):
        for key, (_, call) in parts.items():
            if key == "search_strong" and r >= STRONG_ROUNDS:
                continue
            t0 = time.perf_counter()
            call(r)
            times[key].append(time.perf_counter() - t0)
    result = [asdict(Part(key, what, metrics.latency_summary(times[key]))) for key, (what, _) in parts.items()]
    # The server's own stage histograms, per part: each part's calls in a block between two scrapes.
    stages = {}
    if config.metrics_url:
        for key in STAGE_PARTS:
            call = parts[key][1]
            count = STRONG_ROUNDS if key == "search_strong" else config.rounds // 2
            before = _server_metrics(config.metrics_url)
            for r in range(count):
                call(r)
            stages[key] = _per_search(before, _server_metrics(config.metrics_url), count)
    return {"config": asdict(config), "segments": engine.segments(), "segments_one_partition": single.segments(),
            "parts": result,
            "server_stages_ms_per_search": stages}


def _get_version_request() -> Any:
    from pymilvus.grpc_gen import milvus_pb2

    return milvus_pb2.GetVersionRequest()


def _server_metrics(url: str) -> dict[str, tuple[float, float]]:
    """(sum ms, count) per stage of search requests, per label set (scope, segment state) but the node's."""
    with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - the local server's metrics
        text = reply.read().decode()
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = re.match(r"(milvus_\w+)_(sum|count)\{([^}]*)\} (\S+)", line)
        if not match or match.group(1) not in SERVER_METRICS or 'query_type="search"' not in match.group(3):
            continue
        extra = ",".join(f"{k}={v}" for k, v in re.findall(r'(\w+)="([^"]*)"', match.group(3))
                         if k not in ("node_id", "query_type"))
        key = match.group(1).removeprefix("milvus_") + (f"[{extra}]" if extra else "")
        entry = out.setdefault(key, [0.0, 0.0])
        entry[0 if match.group(2) == "sum" else 1] += float(match.group(4))
    return {k: (v[0], v[1]) for k, v in out.items()}


def _per_search(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                searches: int) -> dict[str, dict[str, float]]:
    """Mean ms per observation and observations per search request, from two scrapes of the histograms."""
    out = {}
    for metric, (total, count) in after.items():
        d_sum = total - before.get(metric, (0.0, 0.0))[0]
        d_count = count - before.get(metric, (0.0, 0.0))[1]
        if d_count:
            out[metric] = {"mean_ms": d_sum / d_count, "per_search": d_count / searches}
    return out


def table(record: dict[str, Any]) -> str:
    lines = [f"{'part':22s} {'p50 ms':>8s} {'p99 ms':>8s} {'n':>5s}  what", "-" * 110]
    for part in record["parts"]:
        lat = part["latency"]
        lines.append(f"{part['name']:22s} {lat['p50_ms']:8.3f} {lat['p99_ms']:8.3f} {lat['n']:5d}  {part['what']}")
    stages = record.get("server_stages_ms_per_search") or {}
    for part, values in stages.items():
        lines += ["", f"server stages of {part} (histograms, ms resolution)   mean ms  per search"]
        for metric, value in values.items():
            lines.append(f"  {metric:50s} {value['mean_ms']:8.2f} {value['per_search']:10.2f}")
    return "\n".join(lines)


def plot(record: dict[str, Any], out_dir: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = record["parts"]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(parts) + 1.2))
    names = [p["name"] for p in parts]
    ax.barh(names, [p["latency"]["p50_ms"] for p in parts], label="p50")
    ax.scatter([p["latency"]["p99_ms"] for p in parts], names, color="black", marker="|", s=120, label="p99")
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("ms per call (log)")
    cfg = record["config"]
    ax.set_title(f"Milvus server: one search, part by part (N={cfg['n']}, dim {cfg['dim']}, HNSW ef {cfg['ef']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = out_dir / f"server_breakdown_{cfg['n']}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
