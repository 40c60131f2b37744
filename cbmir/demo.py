"""`cbmir demo`: the main job end to end on the embedded default, archive -> Ray -> Milvus Lite -> gRPC -> top-k."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from cbmir.services.commands import print_hits
from cbmir.services.flags import add_logging_flags, add_model_flags, load_model_for


def cmd_demo(args: argparse.Namespace) -> int:
    from cbmir.ingestion.config import IngestConfig
    from cbmir.ingestion.runner import run_ingestion
    from cbmir.ingestion.samples import build_dicom_archive
    from cbmir.services.query.client import RetrievalClient
    from cbmir.services.query.engine import RetrievalEngine
    from cbmir.services.query.server import start_server
    from cbmir.services.store import MilvusStore

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.source:
        source = Path(args.source)
    else:
        source = build_dicom_archive(workdir / "dicom-archive")
        print(f"[1/4] built a real DICOM archive from pydicom/pydicom-data: {source}")
    uri = str(workdir / "cbmir.db")
    print(f"[2/4] ingesting {source} with {args.actors} Ray actors into Milvus Lite {uri}")
    report = run_ingestion(IngestConfig(
        source=str(source), milvus_uri=uri, collection=args.collection, backbone=args.backbone,
        weights=args.weights, random_init=args.random_init, precision=args.precision, actors=args.actors,
        batch_size=args.batch_size, label_column=args.label_column, split=args.split, limit=args.limit,
        report_path=str(workdir / "ingest-report.json"), tta=args.tta,
    ))
    print(report.summary())

    query = Path(args.query) if args.query else _pick_query_image(source)
    store = MilvusStore(uri)
    model = load_model_for(args, store, args.collection)
    engine = RetrievalEngine(store, model, args.collection)
    warm_ms = engine.warm_up()
    running = start_server(engine, host="127.0.0.1", port=0)
    print(f"[3/4] gRPC service up on 127.0.0.1:{running.port} (model warmed up in {warm_ms:.0f} ms)")
    try:
        with RetrievalClient(f"127.0.0.1:{running.port}") as client:
            print(f"      health: {client.health()}")
            info = client.describe(args.collection)
            print(f"      collection {info.name}: {info.row_count} rows, dim {info.dim}, {info.metric}/"
                  f"{info.index_type}, model {info.model.architecture} {info.model.model_id}")
            print(f"[4/4] query: {query}")
            started = time.perf_counter()
            reply = client.search(image=query, top_k=args.k)
            t = reply.timings
            print(f"      first query: round trip {(time.perf_counter() - started) * 1000:.1f} ms = decode "
                  f"{t.decode_ms:.1f} + embed {t.embed_ms:.1f} + search {t.search_ms:.1f} ms + transport")
            print_hits(reply)
            started = time.perf_counter()
            again = client.search(image=query, top_k=args.k)
            t = again.timings
            print(f"      again: round trip {(time.perf_counter() - started) * 1000:.1f} ms = decode {t.decode_ms:.1f}"
                  f" + embed {t.embed_ms:.1f} + search {t.search_ms:.1f} ms + transport")
    finally:
        running.stop()
        store.close()
    print("stopped cleanly")
    return 0


def _pick_query_image(source: Path) -> Path:
    """A decodable image of the archive, preferring an MR slice (the sample's most interesting modality)."""
    from cbmir.services.embedding import ImageDecodeError, decode_image

    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() != ".csv")
    files.sort(key=lambda p: "MR" not in p.name)
    for path in files:
        try:
            decode_image(path.read_bytes())
            return path
        except ImageDecodeError:
            continue
    raise SystemExit(f"no decodable image in {source}")


def add_demo_command(sub: Any) -> None:
    """Register `cbmir demo` on the `cbmir` subparsers."""
    demo = sub.add_parser("demo", help="the whole job on the embedded default: ingest, serve, query, stop",
                          description="Build a real DICOM archive from installed packages (or use --source), "
                                      "ingest it with Ray into Milvus Lite, start the gRPC service, query one "
                                      "image, print the top-k hits and stop.")
    demo.add_argument("--workdir", default="cbmir-demo", help="where the archive, db and report go")
    demo.add_argument("--source", default=None,
                      help="use this archive instead (e.g. ../shared/data/brain-mri with --split train)")
    demo.add_argument("--query", default=None, help="query image (default: one image of the archive)")
    demo.add_argument("--label-column", default="label")
    demo.add_argument("--split", default=None)
    demo.add_argument("--limit", type=int, default=None)
    demo.add_argument("--actors", type=int, default=2)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("-k", type=int, default=5)
    demo.add_argument("--collection", default="cbmir_demo")
    add_model_flags(demo)
    add_logging_flags(demo, level="WARNING")
    demo.set_defaults(func=cmd_demo)
