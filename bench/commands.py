"""`cbmir bench ...` subcommands: search (latency / QPS / recall vs size per engine and index), vectors, query,
ingest, migrate."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbmir.bench import ENGINES
from cbmir.services.flags import add_logging_flags

log = logging.getLogger(__name__)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(float(x)) for x in text.split(",") if x)


def _positive_int(text: str) -> int:
    value = int(float(text))  # 1e6 as well as 1000000
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_ints(text: str) -> tuple[int, ...]:
    """A comma list of positive integers, as an argparse type (a bad one is a usage error, not a traceback)."""
    values = tuple(_positive_int(x) for x in _words(text))
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def cmd_bench_search(args: argparse.Namespace) -> int:
    from cbmir.bench import report, run_record
    from cbmir.bench.search import FULL_SIZES, QUICK_SIZES, SearchBenchConfig, run
    from cbmir.services.store.milvus_server import parse_settings

    sizes = args.sizes or (FULL_SIZES if args.full else QUICK_SIZES)
    out_dir = Path(args.out) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = SearchBenchConfig(
        sizes=sizes, dim=args.dim, vectors=args.embeddings or args.vectors, engines=args.engines,
        index_types=args.index_types, queries=args.queries, budget_s=args.budget, clients=args.clients,
        qps_seconds=args.qps_seconds, with_filter=not args.no_filter, lite_max_rows=args.lite_max_rows,
        seed=args.seed, workdir=str(out_dir / "work"), server_uri=args.server_uri,
        server_settings=parse_settings(args.server_setting), reuse=args.reuse, partitions=args.partitions,
        faiss_cache=str(Path(args.out) / "faiss-index") if args.reuse else "",
        filter_sweep=args.filter_sweep, passes=args.passes,
    )
    record = {"machine": run_record.machine(), "versions": run_record.versions()}
    print(f"cbmir bench search -> {out_dir}  sizes={list(sizes)} engines={list(config.engines)} "
          f"indexes={list(config.index_types)} vectors={config.vectors} dim={config.dim}", flush=True)
    record.update(run(config, progress=lambda line: print(line, flush=True)))
    record["machine"]["load_average_after"] = run_record.machine()["load_average"]
    record["cheapest_at_recall"] = {"recall": args.target_recall,
                                    "rows": report.cheapest_at_recall(record, args.target_recall)}
    json_path = report.write_json(record, out_dir)
    pngs = report.plots(record, out_dir)
    if not args.keep_work:
        import shutil

        shutil.rmtree(out_dir / "work", ignore_errors=True)
    print()
    print(report.table(record))
    print()
    print(report.sweep_table(record))
    print()
    print(report.cheapest_table(record, args.target_recall))
    for line in record["skipped"]:
        print(f"note: {line}")
    for line in record["errors"]:
        print(f"error: {line}")
    print(f"\nwrote {json_path} and {', '.join(str(p) for p in pngs)}")
    return 0


def cmd_bench_vectors(args: argparse.Namespace) -> int:
    """Embed real images, save them, and compare their statistics with the synthetic generator's."""
    from cbmir.bench import vectors
    from cbmir.bench.real_embeddings import embed_folder

    path = Path(args.out)
    if not path.exists():
        embed_folder(args.images, path, backbone=args.backbone, limit=args.limit)
    real, _ = vectors.load_embeddings(path)
    rows = {"real": vectors.vector_statistics(real)}
    for kind in vectors.SYNTHETIC_KINDS:
        rows[kind] = vectors.vector_statistics(vectors.synthetic(kind, len(real), real.shape[1])[0])
    print(json.dumps({"embeddings": str(path), "n": len(real), "dim": real.shape[1], "statistics": rows}, indent=2))
    return 0


def _out_dir(root: str) -> Path:
    out_dir = Path(root) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def cmd_bench_query(args: argparse.Namespace) -> int:
    """gRPC round trip per stage (decode, embed, search, service overhead) and QPS, on the real service."""
    from cbmir.bench import run_record
    from cbmir.bench.pipeline import QueryBenchConfig, default_source, query_plot, query_table, run_query_bench

    source, split = (args.source, args.split) if args.source else default_source()
    out_dir = _out_dir(args.out)
    config = QueryBenchConfig(source=source, split=split, queries=args.queries, top_k=args.k,
                              clients=_ints(args.clients), qps_seconds=args.qps_seconds, milvus_uri=args.milvus_uri,
                              index_type=args.index, **_source_columns(args))
    print(f"cbmir bench query -> {out_dir}  source={source} split={split}", flush=True)
    record = {"machine": run_record.machine(), "versions": run_record.versions(), **run_query_bench(config)}
    return _write_outputs(record, out_dir / "query.json", query_plot, query_table)


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    """Ray pipeline images/s for 1..N actors and batch sizes, beside the bare model's images/s in the same run."""
    from cbmir.bench import run_record
    from cbmir.bench.pipeline import IngestBenchConfig, default_source, ingest_plot, ingest_table, run_ingest_bench

    source, split = (args.source, args.split) if args.source else default_source()
    out_dir = _out_dir(args.out)
    config = IngestBenchConfig(source=source, split=split, actors=_ints(args.actors),
                               batch_sizes=_ints(args.batch_sizes), limit=args.limit or None,
                               marginal_from=args.marginal_from,
                               read_cpus=tuple(float(x) for x in _words(args.read_cpus)) if args.read_cpus
                               else (None,),
                               device=args.device, precision=args.precision, gpus_per_actor=args.gpus_per_actor,
                               **_source_columns(args))
    print(f"cbmir bench ingest -> {out_dir}  source={source} split={split} limit={config.limit}", flush=True)
    record = {"machine": run_record.machine(), "versions": run_record.versions(),
              **run_ingest_bench(config, progress=lambda line: print(line, flush=True))}
    return _write_outputs(record, out_dir / "ingest.json", ingest_plot, ingest_table)


def cmd_bench_server_breakdown(args: argparse.Namespace) -> int:
    """One server search, part by part (client encode, RPC, consistency, fields, limit, ef, segments)."""
    from cbmir.bench import run_record, server_breakdown

    out_dir = _out_dir(args.out)
    record: dict[str, Any] = {"machine": run_record.machine(), "versions": run_record.versions(), "runs": []}
    for n in args.sizes:
        config = server_breakdown.BreakdownConfig(uri=args.server_uri, n=n, dim=args.dim, ef=args.ef,
                                                  rounds=args.rounds, metrics_url=args.metrics_url)
        print(f"cbmir bench server-breakdown -> {out_dir}  N={n} dim={args.dim} ef={args.ef}", flush=True)
        run = server_breakdown.run(config, progress=lambda line: print(line, flush=True))
        record["runs"].append(run)
        print(server_breakdown.table(run), flush=True)
        server_breakdown.plot(run, out_dir)
    record["machine"]["load_average_after"] = run_record.machine()["load_average"]
    json_path = out_dir / "server_breakdown.json"
    json_path.write_text(json.dumps(record, indent=2, default=float))
    print(f"\nwrote {json_path} and {len(record['runs'])} PNG(s) beside it")
    return 0


def cmd_bench_tail(args: argparse.Namespace) -> int:
    """Serial searches of an existing server collection: the client's tail beside the server's own histograms."""
    from cbmir.bench import run_record, tail_latency
    from cbmir.bench.engines import label_name
    from cbmir.bench.search import SearchBenchConfig, dataset

    out_dir = _out_dir(args.out)
    size = args.size
    # The queries of `bench search` for this size: never in the collection, same generator and seed.
    _, _, queries, query_labels = dataset(SearchBenchConfig(dim=args.dim, queries=args.queries, seed=args.seed), size)
    labels = [label_name(c) for c in query_labels] if args.filter else None
    config = tail_latency.TailConfig(server_uri=args.server_uri, collection=args.collection or f"bench_{size}",
                                     queries=queries, labels=labels, ef=args.ef, passes=args.passes,
                                     metrics_url=args.metrics_url)
    record = {"machine": run_record.machine(), "versions": run_record.versions(), **tail_latency.run(config)}
    record["machine"]["load_average_after"] = run_record.machine()["load_average"]
    json_path = out_dir / "tail.json"
    json_path.write_text(json.dumps(record, indent=2, default=float))
    print(tail_latency.table(record))
    print(f"\nwrote {json_path}")
    return 0


def cmd_bench_migrate(args: argparse.Namespace) -> int:
    """`cbmir migrate` rows/s from a Milvus Lite file of synthetic CNN-like vectors to a real Milvus server."""
    from cbmir.bench import run_record
    from cbmir.bench.migrate import MigrateBenchConfig, migrate_plot, migrate_table, run_migrate_bench

    out_dir = _out_dir(args.out)
    config = MigrateBenchConfig(sizes=args.sizes, dim=args.dim, batch_rows=args.batch_rows, seed=args.seed,
                                workdir=str(out_dir / "work"), server_uri=args.server_uri)
    print(f"cbmir bench migrate -> {out_dir}  sizes={list(config.sizes)} dim={config.dim}", flush=True)
    record = {"machine": run_record.machine(), "versions": run_record.versions(),
              **run_migrate_bench(config, progress=lambda line: print(line, flush=True))}
    record["machine"]["load_average_after"] = run_record.machine()["load_average"]
    import shutil

    shutil.rmtree(out_dir / "work", ignore_errors=True)
    return _write_outputs(record, out_dir / "migrate.json", migrate_plot, migrate_table)

def cmd_bench_corpus(args: argparse.Namespace) -> int:
    """Write the clinical-size speed corpus (resumable)."""
    from cbmir.bench.corpus import build_corpus

    out = Path(args.out)
    print(f"cbmir bench corpus -> {out}  count={args.count} seed={args.seed}", flush=True)
    report = build_corpus(out, count=args.count, seed=args.seed, data=Path(args.data), workers=args.workers or None,
                          formats=args.formats)
    print(f"wrote {report.written} image(s), kept {report.skipped} already there; manifest {out / 'manifest.csv'}")
    return 0


def cmd_bench_decode(args: argparse.Namespace) -> int:
    """Decoder candidates per format: ms/image, images/s one process per core, embedding agreement."""
    from cbmir.bench import run_record
    from cbmir.bench.decode import DecodeBenchConfig, decode_plot, decode_table, run_decode_bench

    out_dir = _out_dir(args.out)
    config = DecodeBenchConfig(source=args.source, images_per_format=args.images,
                               agreement_per_format=args.agreement_images, processes=args.processes,
                               backbone=args.backbone, parallel_all=args.parallel_all)
    print(f"cbmir bench decode -> {out_dir}  source={args.source}", flush=True)
    record = {"machine": run_record.machine(), "versions": run_record.versions(),
              **run_decode_bench(config, progress=lambda line: print(line, flush=True))}
    record["machine"]["load_average_after"] = run_record.machine()["load_average"]
    return _write_outputs(record, out_dir / "decode.json", decode_plot, decode_table)


def cmd_bench_fuzz(args: argparse.Namespace) -> int:
    """Every class of bad input against a real `cbmir serve`: statuses per class, leaks, server alive, RSS."""
    from cbmir.bench import run_record
    from cbmir.bench.fuzz import FuzzConfig, fuzz_plot, fuzz_table, run_fuzz

    out_dir = _out_dir(args.out)
    config = FuzzConfig(requests=args.requests, clients=args.clients, seed=args.seed, rows=args.rows,
                        deadline_s=args.deadline, audit_log=args.audit_log, bombs=not args.no_bombs,
                        workers=args.workers, max_message_mb=args.max_message_mb, workdir=str(out_dir / "work"),
                        classes=args.classes, decode_budget_mb=args.decode_memory_budget_mb)
    print(f"cbmir bench fuzz -> {out_dir}  requests={config.requests} clients={config.clients}", flush=True)
    record = {"machine": run_record.machine(), "versions": run_record.versions(),
              **run_fuzz(config, progress=lambda line: print(line, flush=True))}
    record["machine"]["load_average_after"] = run_record.machine()["load_average"]
    if not args.keep_work:
        import shutil

        shutil.rmtree(out_dir / "work", ignore_errors=True)
    _write_outputs(record, out_dir / "fuzz.json", fuzz_plot, fuzz_table)
    totals, server = record["totals"], record["server"]
    failed = (totals["internal_or_unknown"] or totals["hangs"] or totals["path_in_reply"]
              or totals["traceback_in_reply"] or not server["alive"] or server["health_after"] != "SERVING")
    return 1 if failed else 0


def cmd_bench_service(args: argparse.Namespace) -> int:
    """Vector queries over the real gRPC service on an existing collection: serial and at 1/4/16 clients."""
    from cbmir.bench import run_record
    from cbmir.bench.service import ServiceBenchConfig, run_service_bench, service_plot, service_table

    out_dir = _out_dir(args.out)
    config = ServiceBenchConfig(milvus_uri=args.milvus_uri, collection=args.collection, clients=_ints(args.clients),
                                queries=args.queries, top_k=args.k, qps_seconds=args.qps_seconds,
                                search_params=tuple(args.search_param), workers=args.workers)
    print(f"cbmir bench service -> {out_dir}  {args.milvus_uri} {args.collection}", flush=True)
    record = {"machine": run_record.machine(), "versions": run_record.versions(),
              **run_service_bench(config, progress=lambda line: print(line, flush=True))}
    return _write_outputs(record, out_dir / "service.json", service_plot, service_table)


def cmd_bench_precision(args: argparse.Namespace) -> int:
    """mAP@10 with the archive embedded at one precision and the queries at another, per data set, with CIs."""
    from cbmir.bench.quality.precision import precision_grid, precision_plot, precision_table

    return _per_dataset_bench(args, "precision", lambda spec: precision_grid(
        spec, _words(args.precisions), limit=args.limit or None, progress=not args.no_progress),
        precision_plot, precision_table)


def cmd_bench_features(args: argparse.Namespace) -> int:
    """mAP@10 of S1's pooling / input-size variants beside the default, per data set, with paired CIs."""
    from cbmir.bench.quality.features import feature_grid, feature_plot, feature_table

    return _per_dataset_bench(args, "features", lambda spec: feature_grid(
        spec, args.sizes, limit=args.limit or None, progress=not args.no_progress, dba_ks=args.dba_k),
        feature_plot, feature_table)


def _per_dataset_bench(args: argparse.Namespace, name: str, grid: Callable[[Any], dict[str, Any]],
                       plot: Callable[[dict[str, Any], Path], Path], table: Callable[[dict[str, Any]], str]) -> int:
    """A quality benchmark run once per data set preset: one record with a `datasets` list, its plot and tables."""
    from cbmir.bench import run_record
    from cbmir.bench.quality.datasets import PRESETS

    unknown = [dataset for dataset in args.datasets if dataset not in PRESETS]
    if unknown:
        raise SystemExit(f"cbmir bench {name}: unknown data set {', '.join(unknown)}: choose from "
                         f"{', '.join(PRESETS)}")
    out_dir = _out_dir(args.out)
    print(f"cbmir bench {name} -> {out_dir}  datasets={','.join(args.datasets)} limit={args.limit or 'all'}",
          flush=True)
    record: dict[str, Any] = {"machine": run_record.machine(), "versions": run_record.versions(), "datasets": []}
    json_path = out_dir / f"{name}.json"
    for dataset in args.datasets:
        record["datasets"].append(grid(PRESETS[dataset]))
        # Written after each data set: a long run that is stopped keeps what it measured.
        json_path.write_text(json.dumps(record, indent=2, default=float))
    return _write_outputs(record, json_path, plot, lambda r: "\n\n".join(table(d) for d in r["datasets"]))


def _write_outputs(record: dict[str, Any], json_path: Path, plot: Callable[[dict[str, Any], Path], Path],
                   table: Callable[[dict[str, Any]], str]) -> int:
    """A benchmark's three outputs: its JSON record, its PNG plot beside it, its table on stdout."""
    json_path.write_text(json.dumps(record, indent=2, default=float))
    png = plot(record, json_path.parent)
    print(table(record))
    print(f"\nwrote {json_path} and {png}")
    return 0


def _source_columns(args: argparse.Namespace) -> dict[str, Any]:
    return {"manifest": args.manifest, "image_column": args.image_column, "label_column": args.label_column}


def _add_source_flags(parser: argparse.ArgumentParser, source_help: str) -> None:
    """The archive flags of `cbmir ingest`, so a benchmark reads any source ingest reads."""
    parser.add_argument("--source", default=None, help=source_help)
    parser.add_argument("--split", default=None, help="index split; queries come from the others")
    parser.add_argument("--manifest", default=None, help="CSV manifest (default: SOURCE/labels.csv if present)")
    parser.add_argument("--image-column", default="image", help="manifest column with the image path")
    parser.add_argument("--label-column", default="label", help="manifest column with the label (MIAS: tissue)")


def _add_out_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results/bench", help="output root (default %(default)s)")


def _add_running_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server-uri", required=True, help="the Milvus server (http://127.0.0.1:PORT)")
    parser.add_argument("--metrics-url", default="",
                        help="its Prometheus /metrics (cbmir milvus-server: http://127.0.0.1:HEALTHZ_PORT/metrics)")


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
    search.add_argument("--filter-sweep", action="store_true",
                        help="time the label-filtered search at every ef / nprobe of the sweep, not only the "
                             "default: a filter may reach the recall at another setting than the plain search")
    search.add_argument("--passes", type=_positive_int, default=1,
                        help="time each setting's queries this many times over (recall from the first pass): "
                             "a p99 of 200 queries is their 2nd-worst; 5 passes make it the 10th of 1000 "
                             "(default %(default)s)")
    search.add_argument("--target-recall", type=float, default=0.95,
                        help="the last table names, per engine and filter, the fastest setting reaching this "
                             "recall@10 (default %(default)s)")
    search.add_argument("--lite-max-rows", type=int, default=100_000,
                        help="largest N run on Milvus Lite (its search is O(N) in Python; default %(default)s)")
    search.add_argument("--server-uri", default="", help="benchmark this Milvus server instead of starting one")
    search.add_argument("--reuse", action="store_true",
                        help="keep each size's server collection (bench_<N>, with --server-uri) and FAISS index "
                             "(OUT/faiss-index/) and, on a later run, re-use them when they hold the same vectors: "
                             "re-time the searches of a 10^6 run without re-inserting and re-building")
    search.add_argument("--server-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="milvus.yaml setting of the started server, repeatable (e.g. "
                             "dataCoord.segment.maxSize=2048)")
    search.add_argument("--partitions", type=int, default=None,
                        help="Milvus: partitions the label partition key hashes into (default: Milvus's 16); each "
                             "holds its own segments and an unfiltered search visits them all")
    search.add_argument("--seed", type=int, default=0)
    _add_out_flag(search)
    search.add_argument("--keep-work", action="store_true", help="keep the Lite files and server data")
    add_logging_flags(search, "WARNING")
    search.set_defaults(func=cmd_bench_search)

    breakdown = bench_sub.add_parser(
        "server-breakdown", help="where one Milvus server search spends its time: encode, RPC, consistency, ...",
        description="Against a running Milvus server (cbmir milvus-server), create or re-use bench_<N> (HNSW, the "
                    "vectors of `bench search`), then time each part of a search round-robin: pymilvus encode, a "
                    "trivial RPC, the raw gRPC search, each consistency level, output fields, limit, ef, the label "
                    "filter and MilvusStore.search; with --metrics-url also the server's own stage histograms.")
    _add_running_server_flags(breakdown)
    breakdown.add_argument("--sizes", type=_ints, default=(20_000,), help="collection sizes (default 20000)")
    breakdown.add_argument("--dim", type=int, default=1024)
    breakdown.add_argument("--ef", type=int, default=64, help="HNSW ef of the base parts (default %(default)s)")
    breakdown.add_argument("--rounds", type=int, default=200, help="calls of each part (default %(default)s)")
    _add_out_flag(breakdown)
    add_logging_flags(breakdown, "WARNING")
    breakdown.set_defaults(func=cmd_bench_server_breakdown)

    tail = bench_sub.add_parser(
        "tail", help="where a Milvus server's slow searches come from: the client's tail beside the server's",
        description="Time --passes x --queries serial searches of an existing collection (the vectors of `bench "
                    "search --sizes N`, e.g. kept with --reuse), then print how many calls the client saw over "
                    "1, 2, 4 ... 64 ms beside what the server's proxy and query node histograms saw over the same "
                    "bounds, and whether the slow calls are a few hard queries or scattered over many "
                    "(interference).")
    _add_running_server_flags(tail)
    tail.add_argument("--size", type=_positive_int, required=True, help="N of the `bench search` collection (e.g. 1e6)")
    tail.add_argument("--collection", default="", help="default bench_<N> (bench search --partitions 1: bench_<N>_p1)")
    tail.add_argument("--dim", type=int, default=1024)
    tail.add_argument("--seed", type=int, default=0)
    tail.add_argument("--queries", type=int, default=200, help="as bench search's --queries (default %(default)s)")
    tail.add_argument("--ef", type=int, default=96, help="HNSW ef (default %(default)s)")
    tail.add_argument("--passes", type=_positive_int, default=10, help="times over the queries (default %(default)s)")
    tail.add_argument("--filter", action="store_true", help="each query filtered to its own label")
    _add_out_flag(tail)
    add_logging_flags(tail, "WARNING")
    tail.set_defaults(func=cmd_bench_tail)

    vec = bench_sub.add_parser("vectors", help="embed real images and compare their statistics with synthetic ones")
    vec.add_argument("--images", default="../shared/data/brain-mri", help="folder with labels.csv (image,label)")
    vec.add_argument("--limit", type=int, default=500)
    vec.add_argument("--backbone", default="efficientnet_lite0")
    vec.add_argument("--out", default="results/bench/brain-mri-efficientnet_lite0-500.npz")
    add_logging_flags(vec, "WARNING")
    vec.set_defaults(func=cmd_bench_vectors)

    source_help = "image archive (default: ../shared/data/brain-mri if present, else the shipped DICOM sample)"
    query = bench_sub.add_parser("query", help="end to end over gRPC: latency per stage, service overhead, QPS",
                                 description="Ingest SOURCE (skipped if present), serve it on 127.0.0.1, send "
                                             "--queries images one at a time, then QPS at --clients.")
    _add_source_flags(query, source_help)
    query.add_argument("--queries", type=int, default=100)
    query.add_argument("-k", type=int, default=10)
    query.add_argument("--clients", default="1,4", help="concurrent clients for QPS (default %(default)s)")
    query.add_argument("--qps-seconds", type=float, default=10.0)
    query.add_argument("--index", default="HNSW", choices=["HNSW", "IVF_FLAT", "IVF_SQ8", "FLAT"])
    query.add_argument("--milvus-uri", default="", help="store (default: a fresh Lite file in a temp dir)")
    _add_out_flag(query)
    add_logging_flags(query, "WARNING")
    query.set_defaults(func=cmd_bench_query)

    ingest = bench_sub.add_parser("ingest", help="Ray ingestion images/s vs actors and batch size, vs the bare model",
                                  description="Ingest the same images into a fresh collection per configuration "
                                              "and compare with the bare model's images/s measured in the same run.")
    _add_source_flags(ingest, source_help)
    ingest.add_argument("--actors", default="1,2", help="(default %(default)s)")
    ingest.add_argument("--batch-sizes", default="16,32", help="(default %(default)s)")
    ingest.add_argument("--limit", type=int, default=400, help="images per run, 0 = all (default %(default)s)")
    ingest.add_argument("--marginal-from", type=int, default=0, metavar="N",
                        help="also run each configuration on its first N images: the difference is the rate with "
                             "Ray's and the actors' start-up taken out, what an archive of millions runs at (default "
                             "off)")
    ingest.add_argument("--read-cpus", default="",
                        help="CPUs per read+decode task to compare, comma list (e.g. 0.5,0.25; default: the plan's "
                             "own, as `cbmir ingest` runs)")
    ingest.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: the bare model and the actors on the GPU, decode on the CPUs; GPU utilisation "
                             "sampled (torch.cuda.utilization or nvidia-smi). Run it on the GPU node "
                             "(docs/scaling.md) (default %(default)s)")
    ingest.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="(default %(default)s: fp16 on CUDA)")
    ingest.add_argument("--gpus-per-actor", type=float, default=1.0, help="with --device cuda (default %(default)s)")
    _add_out_flag(ingest)
    add_logging_flags(ingest, "WARNING")
    ingest.set_defaults(func=cmd_bench_ingest)

    mig = bench_sub.add_parser("migrate", help="cbmir migrate rows/s, Milvus Lite -> a real Milvus server",
                               description="Fill a Milvus Lite file with N synthetic CNN-like vectors, start a Milvus "
                                           "server on 127.0.0.1 (or use --server-uri), migrate, check every id "
                                           "arrived, then re-run (it must copy nothing).")
    mig.add_argument("--sizes", type=_ints, default=(20_000,), help="rows, comma list (default 20000)")
    mig.add_argument("--dim", type=int, default=1280, help="vector dim (default %(default)s)")
    mig.add_argument("--batch-rows", type=int, default=1000, help="rows per page and write (default %(default)s)")
    mig.add_argument("--server-uri", default="", help="migrate into this Milvus server instead of starting one")
    mig.add_argument("--seed", type=int, default=0)
    _add_out_flag(mig)
    add_logging_flags(mig, "WARNING")
    mig.set_defaults(func=cmd_bench_migrate)

    service = bench_sub.add_parser(
        "service", help="vector queries over cbmir's gRPC service on an existing collection: QPS at 1/4/16 clients",
        description="Start `cbmir serve --vectors-only` on an existing collection (e.g. bench_1000000_p1, kept by "
                    "`cbmir bench search --reuse` on a Milvus server), time serial vector queries (round trip, "
                    "Milvus search, service overhead), then QPS and p50/p99 at each client count. Writes "
                    "results/bench/<timestamp>/service.json, a PNG and a table.")
    service.add_argument("--milvus-uri", required=True, help="the store holding the collection")
    service.add_argument("--collection", required=True)
    service.add_argument("--clients", default="1,4,16", help="concurrent clients (default %(default)s)")
    service.add_argument("--queries", type=int, default=200, help="query vectors (default %(default)s)")
    service.add_argument("-k", type=int, default=10)
    service.add_argument("--qps-seconds", type=float, default=10.0, help="seconds per client count")
    service.add_argument("--search-param", action="append", default=[], metavar="KEY=N",
                         help="cbmir serve --search-param (e.g. ef=128)")
    service.add_argument("--workers", type=int, default=8, help="cbmir serve --workers (default %(default)s)")
    _add_out_flag(service)
    add_logging_flags(service, "WARNING")
    service.set_defaults(func=cmd_bench_service)

    fuzz = bench_sub.add_parser(
        "fuzz", help="bad inputs of every class against a real cbmir serve: statuses, leaks, server alive, RSS",
        description="Build a small real collection, start `cbmir serve` on 127.0.0.1 in its own process and send "
                    "--requests generated requests from --clients threads: random bytes as the image and as the "
                    "whole protobuf, mutated PNG / JPEG / DICOM (compressed syntaxes included), DICOM header edits, "
                    "bombs, nonsense vectors, k, filters with injection attempts, 10^5-character ids / collection "
                    "names / filter keys, unknown enum values and fields, oversized messages. Records per class the "
                    "status histogram, INTERNAL/UNKNOWN replies, replies carrying a path or a traceback; the "
                    "server's health at the end, resting and peak RSS, and audit log growth with --audit-log. "
                    "Writes results/bench/<timestamp>/fuzz.json, fuzz.png and a table; exits 1 on any crash, hang, "
                    "leak or a dead server.")
    fuzz.add_argument("--requests", type=int, default=10_000, help="requests in all (default %(default)s)")
    fuzz.add_argument("--clients", type=int, default=8, help="concurrent clients (default %(default)s)")
    fuzz.add_argument("--rows", type=int, default=40, help="rows of the collection served (default %(default)s)")
    fuzz.add_argument("--deadline", type=float, default=30.0,
                      help="seconds per call; slower counts as a hang (default %(default)s)")
    fuzz.add_argument("--audit-log", action="store_true", help="serve with --audit-log and record its growth")
    fuzz.add_argument("--no-bombs", action="store_true", help="leave out the decompression bombs")
    fuzz.add_argument("--workers", type=int, default=8, help="cbmir serve --workers (default %(default)s)")
    fuzz.add_argument("--max-message-mb", type=int, default=64,
                      help="cbmir serve --max-message-mb; the oversized class sends just over it "
                           "(default %(default)s, serve's default)")
    fuzz.add_argument("--decode-memory-budget-mb", type=int, default=1024,
                      help="cbmir serve --decode-memory-budget-mb (default %(default)s, serve's default)")
    fuzz.add_argument("--classes", type=_words, default=(),
                      help="comma list: only these request classes; largest_image (images at the pixel limit, "
                           "seconds of decode each) runs only when named, e.g. --classes largest_image --clients 40")
    fuzz.add_argument("--seed", type=int, default=0)
    _add_out_flag(fuzz)
    fuzz.add_argument("--keep-work", action="store_true", help="keep the collection, server log and audit log")
    add_logging_flags(fuzz, "WARNING")
    fuzz.set_defaults(func=cmd_bench_fuzz)

    from cbmir.bench.corpus import FORMAT_NAMES, SHARED_DATA

    corpus = bench_sub.add_parser(
        "corpus", help="write a clinical-size SPEED corpus: JPEG, 16-bit PNG, DICOM (uncompressed, JPEG, JPEG-LS, "
                       "JPEG 2000)",
        description="Upscale the real images on disk (MIAS, brain MRI, pydicom's DICOM test files) to 2400x3000 .. "
                    "3328x4096 and re-encode them; deterministic for a seed, resumable (files already there are "
                    "kept). Writes DIR/images/, DIR/manifest.csv (path,label,format,width,height,bits,source) and "
                    "DIR/README.md. For speed benchmarks only: the pixels are upscaled, the labels inherited.")
    corpus.add_argument("--out", required=True, help="corpus directory")
    corpus.add_argument("--count", type=int, default=500, help="images (default %(default)s)")
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--data", default=str(SHARED_DATA), help="shared data folder with mias/ and brain-mri/ "
                                                                 "(default %(default)s)")
    corpus.add_argument("--formats", type=_words, default=FORMAT_NAMES,
                        help=f"comma list (default all: {','.join(FORMAT_NAMES)})")
    corpus.add_argument("--workers", type=int, default=0, help="encoding processes (default: one per core)")
    add_logging_flags(corpus, "WARNING")
    corpus.set_defaults(func=cmd_bench_corpus)

    decode = bench_sub.add_parser(
        "decode", help="decoder candidates per format: ms/image, images/s per core, embedding agreement",
        description="For each format of a corpus (`cbmir bench corpus`; or any folder, by suffix): ms/image to a "
                    "224x224 input for cbmir's decoder (what ingest does) and each installed alternative (Pillow "
                    "full / draft / reduce, simplejpeg, pydicom and its plugins, JPEG 2000 resolution levels), "
                    "images/s with one process per core, and the median / min cosine of each candidate's embeddings "
                    "to cbmir's. Writes results/bench/<timestamp>/decode.json, a PNG and a table.")
    decode.add_argument("--source", required=True, help="corpus folder (manifest.csv with a format column)")
    decode.add_argument("--images", type=int, default=12, help="images timed per format (default %(default)s)")
    decode.add_argument("--agreement-images", type=int, default=5,
                        help="images per format for the embedding agreement (default %(default)s)")
    decode.add_argument("--processes", type=int, default=0, help="processes for img/s (default: one per core)")
    decode.add_argument("--parallel-all", action="store_true",
                        help="img/s per core for every candidate (default: cbmir's decoder and the fastest one)")
    decode.add_argument("--backbone", default="efficientnet_lite0", help="model of the agreement check")
    _add_out_flag(decode)
    add_logging_flags(decode, "WARNING")
    decode.set_defaults(func=cmd_bench_decode)

    precision = bench_sub.add_parser(
        "precision", help="retrieval quality with the archive and the queries embedded at different precisions",
        description="Embed each data set once per precision on this CPU (fp16 / bf16 by autocast) and score every "
                    "(archive precision, query precision) pair by exact cosine search: mAP@10 and P@10 with 95% "
                    "bootstrap CIs, the paired mAP@10 difference to the archive's own precision, and the cosine of "
                    "each precision's vectors to fp32. Writes results/bench/<timestamp>/precision.json, a PNG and "
                    "a table (docs/scaling.md quotes it).")
    precision.add_argument("datasets", nargs="+", help="presets of `cbmir eval` (brain-mri, mias-tissue, ...)")
    precision.add_argument("--precisions", default="fp32,bf16,fp16", help="(default %(default)s)")
    precision.add_argument("--limit", type=int, default=0, help="index images per data set, 0 = all")
    precision.add_argument("--no-progress", action="store_true")
    _add_out_flag(precision)
    add_logging_flags(precision, "WARNING")
    precision.set_defaults(func=cmd_bench_precision)

    features = bench_sub.add_parser(
        "features", help="retrieval quality of S1's feature variants (GeM, larger input, two scales, CLAHE, padding, "
                         "database-side augmentation)",
        description="Embed each data set with the ImageNet backbone at each --sizes, pooled by average and by GeM "
                    "(p = 3), plus the sum of the unit vectors over the sizes (multi-scale), and score every variant "
                    "by exact cosine search with `cbmir eval`'s queries: mAP@10 and P@10 with 95% bootstrap CIs and "
                    "the paired mAP@10 difference to the default (average pooling at the backbone's input size, "
                    "what ingest stores); also CLAHE and an aspect-preserving (padded) resize at the input size, and "
                    "database-side augmentation of the default vectors (each indexed vector replaced by the "
                    "cosine^3-weighted sum of its --dba-k nearest indexed neighbours; queries unchanged). "
                    "Label-free, no training. Writes results/bench/<timestamp>/features.json, "
                    "a PNG and a table (docs/quality.md quotes it).")
    features.add_argument("datasets", nargs="+", help="presets of `cbmir eval` (brain-mri, mias-tissue, ...)")
    features.add_argument("--sizes", type=_positive_ints, default=(224, 320),
                          help="input sizes, comma list (default 224,320)")
    features.add_argument("--dba-k", type=_positive_ints, default=(3, 5),
                          help="neighbours (self included) of database-side augmentation, comma list (default 3,5)")
    features.add_argument("--limit", type=int, default=0, help="index images per data set, 0 = all")
    features.add_argument("--no-progress", action="store_true")
    _add_out_flag(features)
    add_logging_flags(features, "WARNING")
    features.set_defaults(func=cmd_bench_features)
