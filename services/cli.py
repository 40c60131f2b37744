"""`cbmir` command line: ingest, serve, search, info, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from services.logs import configure_logging

log = logging.getLogger("cbmir")

DESCRIPTION = """\
cbmir: content-based medical image retrieval.
Images (DICOM, PNG, JPEG, PGM, TIFF, MedMNIST npz) are embedded by a CNN, stored in Milvus, and searched over gRPC.
Default store: Milvus Lite, a local file (./cbmir.db). A Milvus server: --milvus-uri http://host:19530.
"""


# -- shared flags ------------------------------------------------------------------------------------------


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    from services.store import DEFAULT_COLLECTION, DEFAULT_URI

    parser.add_argument("--milvus-uri", default=os.environ.get("CBMIR_MILVUS_URI", DEFAULT_URI),
                        help="Milvus Lite file (path ending in .db) or server URI http://host:19530 "
                             "(env CBMIR_MILVUS_URI; default %(default)s)")
    parser.add_argument("--milvus-token", default=os.environ.get("CBMIR_MILVUS_TOKEN", ""),
                        help="Milvus server token 'user:password' (env CBMIR_MILVUS_TOKEN; never logged)")
    parser.add_argument("--collection", default=DEFAULT_COLLECTION,
                        help="collection name; one collection per embedding model (default %(default)s)")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="CNN backbone: efficientnet_lite0 (ships ImageNet weights), densenet121, resnet50, "
                             "resnet18, vgg16, squeezenet1_1 (these need --weights or --random-init) "
                             "(default %(default)s)")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="a state_dict file for the backbone or a `cbmir train` checkpoint (sha256 recorded in "
                             "the model identity); A.pt+B.pt joins trained checkpoints into one concatenated "
                             "ensemble (unit embeddings side by side, class probabilities averaged)")
    parser.add_argument("--random-init", action="store_true",
                        help="allow a randomly initialised backbone (seeded; for tests and plumbing only)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default %(default)s)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="auto = bf16 autocast where the CPU has AMX/AVX512-BF16, else fp32; serve: the precision "
                             "the collection was written with. Part of the model identity (default auto)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: each vector (and class probability) is the mean over the image "
                             "and its horizontal mirror; twice the embedding cost, part of the model identity. "
                             "serve: on by itself when the collection was ingested with it")


def _add_logging_flags(parser: argparse.ArgumentParser, level: str = "INFO") -> None:
    parser.add_argument("--log-level", default=level, help="DEBUG, INFO, WARNING (default %(default)s)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")


def _load_model(args: argparse.Namespace, store: Any = None, collection: str = "") -> Any:
    """The model of the flags; with --precision auto, the precision the collection was written with."""
    from services.embedding import EmbeddingModel, ModelIdentity
    from services.embedding.model import TTA_SUFFIX

    precision, tta = args.precision, bool(getattr(args, "tta", False))
    if store is not None and store.has_collection(collection):
        stored = store.model_identity_json(collection)
        if stored:
            identity = ModelIdentity.from_json(stored)
            precision = identity.precision if precision == "auto" else precision
            # A collection of mirrored-and-averaged vectors is only searchable by the same model.
            tta = tta or identity.architecture.endswith(TTA_SUFFIX)
    return EmbeddingModel.load(args.backbone, weights=args.weights, random_init=args.random_init,
                               device=args.device, precision=precision, tta=tta)


# -- subcommands -------------------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from ingestion.config import IngestConfig
    from ingestion.runner import run_ingestion

    config = IngestConfig(
        source=args.source, milvus_uri=args.milvus_uri, collection=args.collection, backbone=args.backbone,
        weights=args.weights, random_init=args.random_init, device=args.device,
        gpus_per_actor=args.gpus_per_actor, precision=args.precision, actors=args.actors,
        batch_size=args.batch_size, ray_address=args.ray_address, index_type=args.index, metric=args.metric,
        dataset=args.dataset, manifest=args.manifest, image_column=args.image_column,
        label_column=args.label_column, split=args.split, limit=args.limit, report_path=args.report,
        progress=not args.no_progress, rerank_descriptor=args.rerank_descriptor, id_salt=args.id_salt,
        flush_rows=args.flush_rows, tta=args.tta,
    )
    report = run_ingestion(config)
    print(report.summary())
    return 0


def _server_options(args: argparse.Namespace) -> Any:
    """TLS, tokens, audit and limits of `cbmir serve`; refuses unsafe combinations before anything loads."""
    from services.query.auth import Authenticator, load_tokens
    from services.query.server import ServerOptions
    from services.query.tls import check_plaintext_allowed, server_tls_from_flags

    tls = server_tls_from_flags(args.tls_cert, args.tls_key, args.tls_client_ca)
    authenticator = Authenticator(load_tokens(args.auth_tokens_file))
    check_plaintext_allowed(args.host, tls, authenticator.enabled, args.insecure)
    return ServerOptions(tls=tls, authenticator=authenticator, insecure=args.insecure, audit_log=args.audit_log,
                         max_concurrent_rpcs=args.max_concurrent_rpcs, store_check_seconds=args.store_check_seconds)


def cmd_serve(args: argparse.Namespace) -> int:
    from services.embedding import id_salt_digest
    from services.query.engine import RetrievalEngine
    from services.query.metrics import serve_metrics
    from services.query.server import serve_forever, start_server
    from services.store import MilvusStore

    options = _server_options(args)
    store = MilvusStore(args.milvus_uri, token=args.milvus_token, timeout=args.store_timeout)
    model = _load_model(args, store, args.collection)
    engine = RetrievalEngine(store, model, args.collection, max_top_k=args.max_top_k,
                             max_image_bytes=args.max_image_mb * 1024 * 1024,
                             min_confidence=args.prefilter_min_confidence)
    engine.collection_dim(args.collection)  # refuse to start on a missing collection or another model's
    if args.id_salt:
        store.check_id_salt(args.collection, id_salt_digest(args.id_salt))
    serve_metrics(args.metrics_port, args.metrics_host)
    running = start_server(engine, host=args.host, port=args.port, max_message_mb=args.max_message_mb,
                           workers=args.workers, options=options)
    transport = "mutual TLS" if options.tls and options.tls.mutual else "TLS" if options.tls else "plain text"
    print(f"cbmir serving {args.collection} on {args.host}:{running.port} over {transport}"
          f"{', token auth' if options.authenticator.enabled else ''} "
          f"(model {model.identity.architecture} {model.identity.model_id}); Ctrl-C stops", file=sys.stderr)
    serve_forever(running)
    store.close()
    return 0


def _parse_filters(items: list[str]) -> dict[str, str]:
    filters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--filter takes FIELD=VALUE, got {item!r}")
        filters[key.strip()] = value
    return filters


def print_hits(reply: Any, out: Any = sys.stdout) -> None:
    t = reply.timings
    print(f"collection {reply.collection}  model {reply.model_id}  "
          f"decode {t.decode_ms:.1f} ms  embed {t.embed_ms:.1f} ms  search {t.search_ms:.1f} ms  "
          f"server total {t.total_ms:.1f} ms", file=out)
    if reply.predicted_class:
        print(f"predicted class {reply.predicted_class} (p={reply.predicted_probability:.2f})", file=out)
    if reply.prefilter_note:
        print(f"prefilter: {reply.prefilter_note}", file=out)
    if reply.reranked:
        print("re-ranked by HOG", file=out)
    print(f"{'rank':>4}  {'score':>8}  {'label':<16} {'modality':<8} {'id':<14} source", file=out)
    for hit in reply.hits:
        print(f"{hit.rank:>4}  {hit.score:8.4f}  {hit.label[:16]:<16} {hit.metadata.get('modality', '')[:8]:<8} "
              f"{hit.id[:12]:<14} {hit.source}", file=out)


def cmd_search(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from services.query.client import RetrievalClient

    token = _read_token(args.token_file)
    with RetrievalClient(args.target, timeout=args.timeout, tls=args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                         tls_key=args.tls_key, tls_server_name=args.tls_server_name, token=token) as client:
        try:
            kwargs: dict[str, Any] = {"id": args.id} if args.id else {"image": Path(args.image)}
            reply = client.search(top_k=args.k, collection=args.collection, filters=_parse_filters(args.filter),
                                  prefilter=args.prefilter, prefilter_class=args.prefilter_class,
                                  min_confidence=args.min_confidence, rerank=args.rerank, k_prep=args.k_prep,
                                  **kwargs)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
    else:
        print_hits(reply)
    return 0


def _read_token(path: str | None) -> str | None:
    """The bearer token: first line of --token-file, else $CBMIR_TOKEN (never a flag value: `ps` would show it)."""
    if path:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
        token = lines[0].strip()
        if ":" in token:  # a line of the server's tokens file, name:token
            token = token.partition(":")[2].strip()
        return token or None
    return os.environ.get("CBMIR_TOKEN") or None


def cmd_info(args: argparse.Namespace) -> int:
    from services.embedding import BACKBONES
    from services.store import MilvusStore

    print("backbones:")
    for name, spec in BACKBONES.items():
        weights = spec.bundled_weights or "needs --weights PATH (or --random-init)"
        print(f"  {name:<18} dim {spec.dim:<5} input {spec.input_size}px  weights: {weights}")
    store = MilvusStore(args.milvus_uri, token=args.milvus_token)
    names = [args.collection] if args.only else [n for n in store.list_collections() if "__" not in n]
    print(f"store {args.milvus_uri}: {len(names)} collection(s)")
    for name in names:
        info = store.describe(name)
        identity = json.loads(info.model_identity_json or "{}")
        print(f"  {info.name}: {info.row_count} rows, dim {info.dim}, {info.metric}, {info.index_type} "
              f"{json.dumps(info.index_params)}; model {identity.get('architecture')} "
              f"weights {str(identity.get('weights_sha256'))[:12]}")
    store.close()
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from services.embedding.training import TrainConfig, train

    config = TrainConfig(
        source=args.source, out_dir=args.out, split=args.split or None, val_split=args.val_split,
        val_fraction=args.val_fraction, label_column=args.label_column, image_column=args.image_column,
        manifest=args.manifest, group_column=args.group_column, folds=args.folds, fold=args.fold, limit=args.limit,
        backbone=args.backbone, weights=args.weights, random_init=args.random_init, input_size=args.input_size,
        loss=args.loss, embedding_dim=args.embedding_dim, epochs=args.epochs, batch_size=args.batch_size,
        lr_backbone=args.lr_backbone, lr_head=args.lr_head, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, margin=args.margin, patience=args.patience, select=args.select,
        freeze_blocks=args.freeze_blocks, views=args.views, precision=args.precision, seed=args.seed,
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = train(config, resume=args.resume, progress=not args.no_progress)
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    print(f"trained {result.epochs_run} epochs; best epoch {result.best_epoch}: val acc {best.get('val_acc', 0):.4f}, "
          f"val mAP@10 {best.get('val_map10', 0):.4f}")
    print(f"checkpoint: {result.best_path}  (use: --weights {result.best_path} --backbone {config.backbone})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end on the embedded default: archive → Ray → Milvus Lite → gRPC → top-k."""
    from ingestion.config import IngestConfig
    from ingestion.runner import run_ingestion
    from ingestion.samples import build_dicom_archive
    from services.query.client import RetrievalClient
    from services.query.engine import RetrievalEngine
    from services.query.server import start_server
    from services.store import MilvusStore

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
    model = _load_model(args, store, args.collection)
    engine = RetrievalEngine(store, model, args.collection)
    running = start_server(engine, host="127.0.0.1", port=0)
    print(f"[3/4] gRPC service up on 127.0.0.1:{running.port}")
    try:
        with RetrievalClient(f"127.0.0.1:{running.port}") as client:
            print(f"      health: {client.health()}")
            info = client.describe(args.collection)
            print(f"      collection {info.name}: {info.row_count} rows, dim {info.dim}, {info.metric}/"
                  f"{info.index_type}, model {info.model.architecture} {info.model.model_id}")
            print(f"[4/4] query: {query}")
            started = time.perf_counter()
            reply = client.search(image=query, top_k=args.k)
            print(f"      round trip {(time.perf_counter() - started) * 1000:.1f} ms (first query: warms the index)")
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
    from services.embedding import ImageDecodeError, decode_image

    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() != ".csv")
    files.sort(key=lambda p: "MR" not in p.name)
    for path in files:
        try:
            decode_image(path.read_bytes())
            return path
        except ImageDecodeError:
            continue
    raise SystemExit(f"no decodable image in {source}")


# -- parser ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbmir", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = sub.add_parser("ingest", help="embed an image archive with Ray and upsert it into Milvus",
                            description="Embed every image of SOURCE with Ray actors and upsert it into Milvus. "
                                        "Idempotent: re-running adds no rows; a crash loses nothing (run again).")
    ingest.add_argument("source", help="a directory (PNG/JPEG/PGM/TIFF/DICOM, optionally with labels.csv), "
                                       "a CSV manifest, or a MedMNIST .npz")
    _add_store_flags(ingest)
    _add_model_flags(ingest)
    ingest.add_argument("--actors", type=int, default=2, help="embedding actors (default %(default)s)")
    ingest.add_argument("--batch-size", type=int, default=32, help="images per embedding batch (default %(default)s)")
    ingest.add_argument("--gpus-per-actor", type=float, default=1.0,
                        help="with --device cuda: GPUs per actor, fractions share a GPU (default %(default)s)")
    ingest.add_argument("--ray-address", default=None,
                        help="Ray cluster address (e.g. auto, ray://head:10001); default: a local Ray")
    ingest.add_argument("--index", default="HNSW", choices=["HNSW", "IVF_FLAT", "IVF_SQ8", "FLAT"],
                        help="index of a new collection (default %(default)s)")
    ingest.add_argument("--metric", default="COSINE", choices=["COSINE", "L2", "IP"],
                        help="metric of a new collection (default %(default)s)")
    ingest.add_argument("--dataset", default="", help="dataset name stored with each row (default: source name)")
    ingest.add_argument("--manifest", default=None, help="CSV manifest (default: SOURCE/labels.csv if present)")
    ingest.add_argument("--image-column", default="image", help="manifest column with the image path")
    ingest.add_argument("--label-column", default="label", help="manifest column with the label (MIAS: tissue)")
    ingest.add_argument("--split", default=None, help="only manifest rows / npz split with this split value")
    ingest.add_argument("--limit", type=int, default=None, help="ingest at most this many images")
    ingest.add_argument("--report", default="cbmir-ingest-report.json", help="JSON report path")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    ingest.add_argument("--rerank-descriptor", default="", choices=["", "hog"],
                        help="also store HOG descriptors (1764 floats per image) so searches can --rerank hog")
    ingest.add_argument("--id-salt", default=os.environ.get("CBMIR_ID_SALT", ""),
                        help="secret that keys the image ids (HMAC-SHA256 of the DICOM SOPInstanceUID / pixels); "
                             "prefer env CBMIR_ID_SALT. The collection records a digest of it, and later runs must "
                             "pass the same salt (default: env CBMIR_ID_SALT, else unsalted sha256 ids)")
    ingest.add_argument("--flush-rows", type=int, default=512,
                        help="rows per upsert; what a crash can lose and the rerun redoes (default %(default)s)")
    _add_logging_flags(ingest)
    ingest.set_defaults(func=cmd_ingest)

    serve = sub.add_parser("serve", help="run the gRPC query service",
                           description="Serve RetrievalService, gRPC health checking and reflection, "
                                       "and Prometheus metrics.")
    _add_store_flags(serve)
    _add_model_flags(serve)
    serve.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 for all; default %(default)s)")
    serve.add_argument("--port", type=int, default=50051, help="gRPC port (default %(default)s)")
    serve.add_argument("--workers", type=int, default=8, help="RPC worker threads (default %(default)s)")
    serve.add_argument("--max-top-k", type=int, default=1000, help="largest k a request may ask (default %(default)s)")
    serve.add_argument("--max-message-mb", type=int, default=256,
                       help="largest gRPC message in MiB; a full-field mammogram DICOM is ~50-100 MB "
                            "(default %(default)s)")
    serve.add_argument("--max-image-mb", type=int, default=256, help="largest query image in MiB")
    serve.add_argument("--prefilter-min-confidence", type=float, default=0.5,
                       help="predicted-class prefilter: below this probability search the whole collection "
                            "(default %(default)s)")
    serve.add_argument("--metrics-port", type=int, default=9108,
                       help="Prometheus /metrics port, 0 disables (default %(default)s)")
    serve.add_argument("--metrics-host", default="127.0.0.1", help="Prometheus listen address")
    security = serve.add_argument_group(
        "security", "Plain text is allowed on loopback (127.0.0.1, ::1, localhost) only. Any other --host needs "
                    "--tls-cert/--tls-key and client authentication (--auth-tokens-file or --tls-client-ca), or "
                    "--insecure. Health checks need no token (probes).")
    security.add_argument("--tls-cert", default=None, metavar="PEM", help="server certificate chain (enables TLS)")
    security.add_argument("--tls-key", default=None, metavar="PEM", help="server private key")
    security.add_argument("--tls-client-ca", default=None, metavar="PEM",
                          help="CA bundle for client certificates: enables mutual TLS (clients must present one)")
    security.add_argument("--auth-tokens-file", default=os.environ.get("CBMIR_AUTH_TOKENS_FILE"), metavar="PATH",
                          help="bearer tokens, one per line as name:token (or a bare token); calls must send "
                               "'authorization: Bearer <token>'. Env CBMIR_AUTH_TOKENS (comma separated) adds more")
    security.add_argument("--insecure", action="store_true",
                          help="allow plain text / unauthenticated clients on a non-loopback --host (behind a "
                               "trusted TLS-terminating proxy only)")
    security.add_argument("--audit-log", default=None, metavar="PATH",
                          help="append one JSON line per RPC: time, caller, request kind, k, filters, prefilter, "
                               "result ids, latency, status (never pixels, never tokens)")
    security.add_argument("--id-salt", default=os.environ.get("CBMIR_ID_SALT", ""),
                          help="check that the collection's ids were keyed with this salt (env CBMIR_ID_SALT)")
    limits = serve.add_argument_group("limits and availability")
    limits.add_argument("--max-concurrent-rpcs", type=int, default=None,
                        help="RPCs admitted at once, running or queued; beyond it RESOURCE_EXHAUSTED at once "
                             "(default: 5 x --workers)")
    limits.add_argument("--store-timeout", type=float, default=5.0,
                        help="seconds a Milvus server call may take, retries included, before UNAVAILABLE "
                             "(default %(default)s)")
    limits.add_argument("--store-check-seconds", type=float, default=3.0,
                        help="ping Milvus this often; health is NOT_SERVING while it fails, SERVING again when it "
                             "answers; 0 disables (default %(default)s)")
    _add_logging_flags(serve)
    serve.set_defaults(func=cmd_serve)

    search = sub.add_parser("search", help="query a running service with an image file or a stored id")
    search.add_argument("image", nargs="?", help="image file to query with (DICOM, PNG, JPEG, ...)")
    search.add_argument("--id", default=None, help="query with an image already stored, by its id")
    search.add_argument("-k", type=int, default=10, help="number of hits (default %(default)s)")
    search.add_argument("--target", default="127.0.0.1:50051", help="service address (default %(default)s)")
    search.add_argument("--collection", default="", help="collection (default: the server's)")
    search.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                        help="equality filter on label, modality, body_part, view, dataset, ... (repeatable)")
    search.add_argument("--prefilter", default="off", choices=["off", "predicted", "explicit"])
    search.add_argument("--prefilter-class", default="", help="class to search with --prefilter explicit")
    search.add_argument("--min-confidence", type=float, default=0.0,
                        help="--prefilter predicted: below this probability search everything (0: server default)")
    search.add_argument("--rerank", default="", choices=["", "hog"],
                        help="re-rank CNN candidates by HOG (collection ingested with --rerank-descriptor hog)")
    search.add_argument("--k-prep", type=int, default=0, help="candidates to re-rank (0: max(10, k))")
    search.add_argument("--timeout", type=float, default=30.0, help="seconds (default %(default)s)")
    search.add_argument("--json", action="store_true", help="print the reply as JSON")
    search.add_argument("--tls", action="store_true", help="use TLS with the system's CA roots")
    search.add_argument("--tls-ca", default=None, metavar="PEM", help="CA that signed the server certificate (TLS)")
    search.add_argument("--tls-cert", default=None, metavar="PEM", help="client certificate (mutual TLS)")
    search.add_argument("--tls-key", default=None, metavar="PEM", help="client private key (mutual TLS)")
    search.add_argument("--tls-server-name", default=None,
                        help="name to check the server certificate against (when --target is an IP)")
    search.add_argument("--token-file", default=None, metavar="PATH",
                        help="file whose first line is the bearer token (default: env CBMIR_TOKEN)")
    _add_logging_flags(search)
    search.set_defaults(func=cmd_search)

    info = sub.add_parser("info", help="list backbones, and the collections of a store with their models")
    _add_store_flags(info)
    info.add_argument("--only", action="store_true", help="describe only --collection")
    _add_logging_flags(info)
    info.set_defaults(func=cmd_info)

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
    _add_model_flags(demo)
    _add_logging_flags(demo, level="WARNING")
    demo.set_defaults(func=cmd_demo)

    train_p = sub.add_parser(
        "train", help="fine-tune a classifier / metric-learning head into a checkpoint ingest, serve, eval load",
        description="Train on the index split of SOURCE (validation carved from it, stratified and seed-fixed; "
                    "the test split is never read). Writes OUT/best.pt (load with --weights OUT/best.pt), OUT/last.pt "
                    "(every epoch; --resume continues from it) and OUT/train-log.json. The first --freeze-blocks "
                    "EfficientNet stages keep their ImageNet weights and are computed once per cached view, so an "
                    "epoch only trains the last stage(s): what makes CPU training fit.")
    train_p.add_argument("source", help="a directory with labels.csv, a CSV manifest, or a MedMNIST .npz")
    train_p.add_argument("--out", required=True, help="run directory, e.g. runs/brain-ce")
    train_p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    train_p.add_argument("--backbone", default="efficientnet_lite0",
                         help="efficientnet_lite0 (ImageNet weights offline); others need --weights or --random-init "
                              "and --freeze-blocks 0 (default %(default)s)")
    train_p.add_argument("--weights", default=None, metavar="PATH", help="backbone state_dict to start from")
    train_p.add_argument("--random-init", action="store_true", help="start from a random backbone (plumbing only)")
    train_p.add_argument("--loss", default="ce", choices=["ce", "metric"],
                         help="ce: cross-entropy, embedding = pooled features; metric: 0.6 batch-hard triplet + 0.3 "
                              "cross-entropy + 0.1 center loss into a projection (default %(default)s)")
    train_p.add_argument("--embedding-dim", type=int, default=512, help="projection dim for --loss metric")
    train_p.add_argument("--input-size", type=int, default=192,
                         help="square input side; 192 costs ~0.73x the compute of 224 (default %(default)s)")
    train_p.add_argument("--freeze-blocks", type=int, default=6,
                         help="EfficientNet stages kept frozen and cached (0-7; 0 fine-tunes everything, ~6x slower "
                              "per epoch on CPU) (default %(default)s)")
    train_p.add_argument("--views", type=int, default=4,
                         help="cached views per image: the clean one + augmented ones (default %(default)s)")
    train_p.add_argument("--epochs", type=int, default=12, help="most epochs (default %(default)s)")
    train_p.add_argument("--patience", type=int, default=4,
                         help="early stop after this many epochs without a better --select (default %(default)s)")
    train_p.add_argument("--select", default="val_map10", choices=["val_map10", "val_acc"],
                         help="validation figure best.pt is chosen by (default %(default)s)")
    train_p.add_argument("--batch-size", type=int, default=32, help="(default %(default)s)")
    train_p.add_argument("--lr-backbone", type=float, default=1e-4, help="pretrained layers (default %(default)s)")
    train_p.add_argument("--lr-head", type=float, default=1e-3, help="new layers (default %(default)s)")
    train_p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW (default %(default)s)")
    train_p.add_argument("--label-smoothing", type=float, default=0.1, help="(default %(default)s)")
    train_p.add_argument("--margin", type=float, default=0.3, help="triplet margin (default %(default)s)")
    train_p.add_argument("--split", default="train",
                         help="index split to train on; '' = every row (default %(default)s)")
    train_p.add_argument("--val-split", default=None, help="validate on this existing split instead of carving one")
    train_p.add_argument("--val-fraction", type=float, default=0.15,
                         help="carved validation share (default %(default)s)")
    train_p.add_argument("--group-column", default=None,
                         help="manifest column grouping images (MIAS: patient_id): a group never straddles train/val")
    train_p.add_argument("--folds", type=int, default=0,
                         help="hold one of this many label-stratified group folds out of training entirely "
                              "(cross-fitting for leave-one-patient-out evaluation)")
    train_p.add_argument("--fold", type=int, default=0, help="which fold --folds holds out (default %(default)s)")
    train_p.add_argument("--manifest", default=None, help="CSV manifest (default: SOURCE/labels.csv if present)")
    train_p.add_argument("--image-column", default="image", help="manifest column with the image path")
    train_p.add_argument("--label-column", default="label", help="manifest column with the label (MIAS: tissue)")
    train_p.add_argument("--limit", type=int, default=None, help="use at most this many listed images")
    train_p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                         help="auto = bf16 autocast where the CPU has AMX/AVX512-BF16 (default auto)")
    train_p.add_argument("--seed", type=int, default=0, help="fixes split, order, augmentation, init (default 0)")
    train_p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    train_p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_logging_flags(train_p)
    train_p.set_defaults(func=cmd_train)

    from bench.cli import add_bench_parser
    from services.store.milvus_server import add_milvus_server_parser

    add_bench_parser(sub)
    from bench.quality.cli import add_eval_parser; add_eval_parser(sub)  # noqa: E702, I001
    add_milvus_server_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, json_format=args.log_json)
    if args.command == "search" and not (args.image or args.id):
        raise SystemExit("cbmir search: give an IMAGE file or --id")
    from services.errors import friendly_errors

    with friendly_errors():
        return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
