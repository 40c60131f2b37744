"""`cbmir bench ...` subcommands: search (latency / QPS / recall vs size per engine and index) and vectors."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
from pathlib import Path

from bench.engines import ENGINES

log = logging.getLogger(__name__)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(float(x)) for x in text.split(",") if x)


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def cmd_bench_search(args: argparse.Namespace) -> int:
    from bench import report
    from bench.search import FULL_SIZES, QUICK_SIZES, SearchBenchConfig, run

    sizes = args.sizes or (FULL_SIZES if args.full else QUICK_SIZES)
    out_dir = Path(args.out) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = SearchBenchConfig(
        sizes=sizes, dim=args.dim, vectors=args.embeddings or args.vectors, engines=args.engines,
        index_types=args.index_types, queries=args.queries, budget_s=args.budget, clients=args.clients,
        qps_seconds=args.qps_seconds, with_filter=not args.no_filter, lite_max_rows=args.lite_max_rows,
        seed=args.seed, workdir=str(out_dir / "work"), server_uri=args.server_uri,
    )
    record = {"machine": report.machine(), "versions": report.versions()}
    print(f"cbmir bench search -> {out_dir}  sizes={list(sizes)} engines={list(config.engines)} "
          f"indexes={list(config.index_types)} vectors={config.vectors} dim={config.dim}", flush=True)
    record.update(run(config, progress=lambda line: print(line, flush=True)))
    record["machine"]["load_average_after"] = report.machine()["load_average"]
    json_path = report.write_json(record, out_dir)
    pngs = report.plots(record, out_dir)
    if not args.keep_work:
        import shutil

        shutil.rmtree(out_dir / "work", ignore_errors=True)
    print()
    print(report.table(record))
    for line in record["skipped"]:
        print(f"note: {line}")
    for line in record["errors"]:
        print(f"error: {line}")
    print(f"\nwrote {json_path} and {', '.join(str(p) for p in pngs)}")
    return 0


def cmd_bench_vectors(args: argparse.Namespace) -> int:
    """Embed real images, save them, and compare their statistics with the synthetic generator's."""
    from bench import vectors
    from bench.real_embeddings import embed_folder

    path = Path(args.out)
    if not path.exists():
        embed_folder(args.images, path, backbone=args.backbone, limit=args.limit)
    real, _ = vectors.load_embeddings(path)
    rows = {"real": vectors.vector_statistics(real)}
    for kind in vectors.SYNTHETIC_KINDS:
        rows[kind] = vectors.vector_statistics(vectors.synthetic(kind, len(real), real.shape[1])[0])
    print(json.dumps({"embeddings": str(path), "n": len(real), "dim": real.shape[1], "statistics": rows}, indent=2))
    return 0


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: search latency / QPS / recall vs size, per engine and index")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")

    search = bench_sub.add_parser(
        "search", help="recall@10 vs exact, latency p50/p95/p99, QPS at 1/4/16 clients, build and insert time",
        description="For each collection size: exact ground truth by FAISS brute force, then for each engine (raw "
                    "FAISS in process, Milvus Lite, a real Milvus server started on 127.0.0.1) and index type, "
                    "insert, build, sweep ef / nprobe, and time searches with and without a label filter "
                    "(the partition key). Writes results/bench/<timestamp>/search.json, PNGs and a table.")
    search.add_argument("--full", action="store_true", help="sizes 10^4, 10^5, 10^6 (default quick: 10^4, 10^5)")
    search.add_argument("--sizes", type=_ints, default=None, help="explicit sizes, e.g. 2000,20000 or 1e6")
    search.add_argument("--dim", type=int, default=1280,
                        help="vector dim (efficientnet_lite0: 1280; densenet121: 1024; default %(default)s)")
    search.add_argument("--vectors", default="cnn", choices=["cnn", "uniform"],
                        help="synthetic vectors: cnn = CNN-embedding-like (default), uniform = worst case")
    search.add_argument("--embeddings", default=None, metavar="FILE",
                        help="real embeddings (.npy, or .npz with embeddings and labels) instead of synthetic")
    search.add_argument("--engines", type=_words, default=ENGINES, help="comma list of faiss,lite,server")
    search.add_argument("--index-types", type=_words, default=("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW"),
                        help="comma list of FLAT,IVF_FLAT,IVF_SQ8,HNSW")
    search.add_argument("--queries", type=int, default=200, help="query vectors (default %(default)s)")
    search.add_argument("--budget", type=float, default=4.0,
                        help="seconds of serial queries per setting, at least 20 queries (default %(default)s)")
    search.add_argument("--clients", type=_ints, default=(1, 4, 16), help="concurrent clients for QPS")
    search.add_argument("--qps-seconds", type=float, default=2.0, help="seconds per QPS level (default %(default)s)")
    search.add_argument("--no-filter", action="store_true", help="skip the label-filtered searches")
    search.add_argument("--lite-max-rows", type=int, default=100_000,
                        help="largest N run on Milvus Lite (its search is O(N) in Python; default %(default)s)")
    search.add_argument("--server-uri", default="", help="benchmark this Milvus server instead of starting one")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--out", default="results/bench", help="output root (default %(default)s)")
    search.add_argument("--keep-work", action="store_true", help="keep the Lite files and server data")
    search.add_argument("--log-level", default="WARNING")
    search.add_argument("--log-json", action="store_true")
    search.set_defaults(func=cmd_bench_search)

    vec = bench_sub.add_parser("vectors", help="embed real images and compare their statistics with synthetic ones")
    vec.add_argument("--images", default="../shared/data/brain-mri", help="folder with labels.csv (image,label)")
    vec.add_argument("--limit", type=int, default=500)
    vec.add_argument("--backbone", default="efficientnet_lite0")
    vec.add_argument("--out", default="results/bench/brain-mri-efficientnet_lite0-500.npz")
    vec.add_argument("--log-level", default="WARNING")
    vec.add_argument("--log-json", action="store_true")
    vec.set_defaults(func=cmd_bench_vectors)
