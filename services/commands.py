"""The query side's subcommands: `cbmir serve`, `cbmir search`, `cbmir info`, `cbmir migrate`, `cbmir milvus-server`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cbmir.services.flags import (
    add_logging_flags,
    add_model_flags,
    add_secret_flags,
    add_store_flags,
    load_model_for,
)
from cbmir.services.store.defaults import DEFAULT_COLLECTION, is_server_uri
from cbmir.services.store.milvus_server import add_milvus_server_parser


def _server_options(args: argparse.Namespace) -> Any:
    """TLS, tokens, audit and limits of `cbmir serve`; refuses unsafe combinations before anything loads."""
    from cbmir.services.query.auth import Authenticator, load_tokens
    from cbmir.services.query.server import ServerOptions
    from cbmir.services.query.tls import check_plaintext_allowed, server_tls_from_flags

    tls = server_tls_from_flags(args.tls_cert, args.tls_key, args.tls_client_ca)
    admin_tokens = load_tokens(args.admin_tokens_file, env={}) if args.admin_tokens_file else {}
    # An admin token is also a caller's token: it passes the token check, then Erase checks it is an admin's.
    authenticator = Authenticator({**load_tokens(args.auth_tokens_file), **admin_tokens})
    check_plaintext_allowed(args.host, tls, authenticator.enabled, args.insecure)
    return ServerOptions(tls=tls, authenticator=authenticator, insecure=args.insecure, audit_log=args.audit_log,
                         max_concurrent_rpcs=args.max_concurrent_rpcs, store_check_seconds=args.store_check_seconds,
                         health_port=args.health_port, health_host=args.health_host,
                         admin=Authenticator(admin_tokens), id_salt=args.id_salt)


def cmd_serve(args: argparse.Namespace) -> int:
    from cbmir.services.embedding import id_salt_digest
    from cbmir.services.embedding.id_salt import warn_if_unsalted
    from cbmir.services.query.engine import RetrievalEngine
    from cbmir.services.query.memory import limit_malloc_arenas
    from cbmir.services.query.metrics import serve_metrics
    from cbmir.services.query.server import serve_forever, start_server
    from cbmir.services.query.tls import is_loopback
    from cbmir.services.query.vector_only import StoredVectorsModel
    from cbmir.services.store import MilvusStore
    from cbmir.services.store.index import parse_search_overrides
    from cbmir.services.store.lite_limit import warn_if_past_lite_limit

    options = _server_options(args)
    limit_malloc_arenas()  # before the RPC threads exist: each would otherwise get an arena of its own
    try:
        overrides = parse_search_overrides(args.search_param)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    store = MilvusStore(args.milvus_uri, token=args.milvus_token, timeout=args.store_timeout,
                        search_consistency=args.search_consistency, search_overrides=overrides)
    if args.vectors_only:
        if not store.has_collection(args.collection):
            raise SystemExit(f"error: collection {args.collection!r} not found: --vectors-only serves an existing "
                             "collection (ingest it first, or pass --collection)")
        try:
            model = StoredVectorsModel.of_collection(store.model_identity_json(args.collection))
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
    else:
        model = load_model_for(args, store, args.collection)
    engine = RetrievalEngine(store, model, args.collection, max_top_k=args.max_top_k,
                             max_image_bytes=args.max_image_mb * 1024 * 1024,
                             min_confidence=args.prefilter_min_confidence, return_source=args.return_source,
                             max_image_pixels=args.max_image_pixels,
                             decode_budget_bytes=args.decode_memory_budget_mb * 1024 * 1024)
    engine.collection_dim(args.collection)  # refuse to start on a missing collection or another model's
    store.load(args.collection)  # loaded before the first queries, which would otherwise all meet "released"
    warn_if_past_lite_limit(store, args.collection)
    warm_ms = engine.warm_up()
    if args.id_salt:
        store.check_id_salt(args.collection, id_salt_digest(args.id_salt))
    else:
        # Serving computes no id (a query by id sends a stored one), so it needs no salt file: it only flags legacy ids.
        warn_if_unsalted(store.id_salt_digest(args.collection), args.collection)
    if args.metrics_port and not is_loopback(args.metrics_host):
        logging.getLogger("cbmir.serve").warning(
            "Prometheus metrics are plain HTTP without authentication on %s:%d%s: bind them to the pod or a "
            "private network only", args.metrics_host, args.metrics_port,
            " while the gRPC service is TLS-only" if options.tls else "")
    serve_metrics(args.metrics_port, args.metrics_host)
    running = start_server(engine, host=args.host, port=args.port, max_message_mb=args.max_message_mb,
                           workers=args.workers, options=options)
    transport = "mutual TLS" if options.tls and options.tls.mutual else "TLS" if options.tls else "plain text"
    print(f"cbmir serving {args.collection} on {args.host}:{running.port} over {transport}"
          f"{', token auth' if options.authenticator.enabled else ''}"
          f"{f', health also on {args.health_host}:{running.health_port}' if running.health_port else ''} "
          f"(model {model.identity.architecture} {model.identity.model_id}, warmed up in {warm_ms:.0f} ms); "
          "Ctrl-C stops", file=sys.stderr)
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


RERANK_SHOWN = {"hog": "HOG", "kreciprocal": "k-reciprocal neighbourhoods"}


def print_hits(reply: Any, out: Any = sys.stdout, rerank: str = "hog") -> None:
    t = reply.timings
    print(f"collection {reply.collection}  model {reply.model_id}  "
          f"decode {t.decode_ms:.1f} ms  embed {t.embed_ms:.1f} ms  search {t.search_ms:.1f} ms  "
          f"server total {t.total_ms:.1f} ms", file=out)
    if reply.predicted_class:
        print(f"predicted class {reply.predicted_class} (p={reply.predicted_probability:.2f})", file=out)
    if reply.prefilter_note:
        print(f"prefilter: {reply.prefilter_note}", file=out)
    if reply.reranked:
        print(f"re-ranked by {RERANK_SHOWN.get(rerank, rerank)}", file=out)
    # The server sends `source` only with `serve --return-source`: no empty column otherwise.
    sourced = any(hit.source for hit in reply.hits)
    print(f"{'rank':>4}  {'score':>8}  {'label':<16} {'modality':<8} {'id':<14}{' source' if sourced else ''}".rstrip(),
          file=out)
    for hit in reply.hits:
        print(f"{hit.rank:>4}  {hit.score:8.4f}  {hit.label[:16]:<16} {hit.metadata.get('modality', '')[:8]:<8} "
              f"{hit.id[:12]:<14}{' ' + hit.source if sourced else ''}".rstrip(), file=out)


def cmd_search(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from cbmir.services.query.client import RetrievalClient

    if not (args.image or args.id):
        raise SystemExit("cbmir search: give an IMAGE file or --id")
    sheet = None
    if args.sheet:
        from cbmir.services.query.sheet import check_sheet_path

        sheet = check_sheet_path(args.sheet)
    token = _read_token(args.token_file)
    with RetrievalClient(args.target, timeout=args.timeout, tls=args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                         tls_key=args.tls_key, tls_server_name=args.tls_server_name, token=token) as client:
        try:
            kwargs: dict[str, Any] = {"id": args.id} if args.id else {"image": Path(args.image)}
            reply = client.search(top_k=args.k, collection=args.collection, filters=_parse_filters(args.filter),
                                  prefilter=args.prefilter, prefilter_class=args.prefilter_class,
                                  min_confidence=args.min_confidence, rerank=args.rerank, k_prep=args.k_prep,
                                  query_expansion=args.query_expansion, soft_weight=args.soft_weight,
                                  thumbnails=sheet is not None, **kwargs)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2
    if sheet is not None:
        from cbmir.services.query.sheet import query_thumbnail, write_sheet

        query_jpeg = query_thumbnail(Path(args.image)) if args.image else b""
        written = write_sheet(sheet, reply, Path(args.image).name if args.image else f"id {args.id}", query_jpeg)
        print(f"contact sheet: {written}", file=sys.stderr)
        for hit in reply.hits:
            hit.ClearField("thumbnail")  # the sheet has them; a terminal or JSON does not want kilobytes of base64
    if args.json:
        print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
    else:
        print_hits(reply, rerank=args.rerank)
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
    from cbmir.services.embedding import BACKBONES
    from cbmir.services.store import MilvusStore

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
              f"weights {str(identity.get('weights_sha256'))[:12]} {_precision_line(identity)}")
    store.close()
    return 0


def _precision_line(identity: dict[str, Any]) -> str:
    """The collection's precision and the query precisions a service may embed at (the measured tolerance)."""
    from cbmir.services.embedding.precision import MEASURED

    stored = identity.get("precision", "fp32")
    accepted = sorted(queries for archive, queries in MEASURED if archive == stored)
    return (f"precision {stored}" + (f" (queries also accepted at {', '.join(accepted)}: within the measured "
                                     "tolerance, docs/scaling.md)" if accepted else ""))


def cmd_migrate(args: argparse.Namespace) -> int:
    from cbmir.services.store.migrate import migrate, open_store

    source = open_store(args.source, token=args.from_token, must_exist=True)
    target = open_store(args.target, token=args.to_token)
    try:
        report = migrate(source, target, args.collection, batch_rows=args.batch_rows,
                         companions=not args.no_companions, overwrite=args.overwrite, progress=not args.no_progress)
    finally:
        source.close()
        target.close()
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    print(report.summary())
    if not report.complete:
        return 1
    print(f"serve it with: cbmir serve --milvus-uri {args.target} --collection {args.collection}")
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    import getpass

    from cbmir.services.embedding.id_salt import cbmir_home
    from cbmir.services.query.audit import AuditLog
    from cbmir.services.query.auth import Caller
    from cbmir.services.store import MilvusStore
    from cbmir.services.store.erase import ErasureReport, erase_subject

    kind, value = ("patient", args.patient_id) if args.patient_id else ("study", args.study_uid)
    if not value.strip():
        raise SystemExit(f"cbmir erase: the {kind} id is empty: nothing to erase by")
    store = MilvusStore(args.milvus_uri, token=args.milvus_token)
    report = ErasureReport(kind=kind)
    try:
        report = erase_subject(store, kind, value, args.collection, args.id_salt)
    finally:
        store.close()
        # Also when the erasure failed part-way: the log says it was attempted and what it did (INCOMPLETE).
        audit = AuditLog(args.audit_log or cbmir_home() / "erasure-audit.jsonl")
        audit.record(Caller(name=getpass.getuser(), peer="", method="cli"), "Erase",
                     "OK" if report.proved else "INCOMPLETE", report.seconds * 1000,
                     {"kind": kind, "collection": args.collection or "all", "erasure": report.to_dict()})
        audit.close()
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    for c in report.collections:
        state = f"skipped: {c.skipped}" if c.skipped else (
            f"{c.rows_erased} rows (+{c.companion_rows_erased} descriptors) erased, {c.compaction}; proof: "
            f"{c.remaining_by_hash} left by hash, {c.returned_by_search} returned by search"
            + ("" if is_server_uri(args.milvus_uri) else f", {c.files_holding_erased} Lite files holding them"))
        print(f"{c.collection}: {state} ({c.seconds:.1f} s)")
    print(f"erased {report.rows_erased} rows of the {kind} in {report.seconds:.1f} s: "
          f"{'proved gone' if report.proved else 'NOT proved, see above'}")
    return 0 if report.proved else 1


def add_service_commands(sub: Any) -> None:
    """Register serve, search, info, migrate and milvus-server on the `cbmir` subparsers."""
    serve = sub.add_parser("serve", help="run the gRPC query service",
                           description="Serve RetrievalService, gRPC health checking and reflection, "
                                       "and Prometheus metrics.")
    add_store_flags(serve)
    add_model_flags(serve)
    serve.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 for all; default %(default)s)")
    serve.add_argument("--port", type=int, default=50051, help="gRPC port (default %(default)s)")
    serve.add_argument("--workers", type=int, default=8, help="RPC worker threads (default %(default)s)")
    serve.add_argument("--return-source", action="store_true",
                       help="send each hit's stored `source` (its path relative to the ingested archive, or a hash "
                            "of it for DICOM) to clients; off by default, since paths can name patients")
    serve.add_argument("--max-top-k", type=int, default=1000, help="largest k a request may ask (default %(default)s)")
    serve.add_argument("--max-message-mb", type=int, default=64,
                       help="largest gRPC message in MiB; a 4096x4096 16-bit DICOM is 32 MiB (default %(default)s)")
    serve.add_argument("--max-image-mb", type=int, default=64,
                       help="largest query image in MiB (default %(default)s)")
    serve.add_argument("--max-image-pixels", type=int, default=64 * 1024 * 1024,
                       help="largest query image in pixels per frame, checked from its header before decoding "
                            "(default %(default)s = 8192^2)")
    serve.add_argument("--decode-memory-budget-mb", type=int, default=1024,
                       help="memory all query decodes in flight may take, estimated from each image's header; a "
                            "request over it gets RESOURCE_EXHAUSTED at once (default %(default)s)")
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
    security.add_argument("--admin-tokens-file", default=None, metavar="PATH",
                          help="tokens (name:token per line) that may also call the Erase RPC (docs/pacs.md "
                               "\"Erasure\"); without it Erase is off")
    security.add_argument("--auth-tokens-file", default=os.environ.get("CBMIR_AUTH_TOKENS_FILE"), metavar="PATH",
                          help="bearer tokens, one per line as name:token (or a bare token); calls must send "
                               "'authorization: Bearer <token>'. Env CBMIR_AUTH_TOKENS (comma separated) adds more")
    security.add_argument("--insecure", action="store_true",
                          help="allow plain text / unauthenticated clients on a non-loopback --host (behind a "
                               "trusted TLS-terminating proxy only)")
    security.add_argument("--audit-log", default=None, metavar="PATH",
                          help="append one JSON line per RPC: time, caller, request kind, k, filters, prefilter, "
                               "result ids, latency, status (never pixels, never tokens)")
    add_secret_flags(security, "--id-salt", "CBMIR_ID_SALT",
                     "check that the collection's ids were keyed with this salt (serving needs no salt: without "
                     "one it only warns about a collection whose ids are unsalted)")
    limits = serve.add_argument_group("limits and availability")
    limits.add_argument("--max-concurrent-rpcs", type=int, default=None,
                        help="RPCs admitted at once, running or queued; beyond it RESOURCE_EXHAUSTED at once "
                             "(default: 5 x --workers)")
    limits.add_argument("--store-timeout", type=float, default=5.0,
                        help="seconds a Milvus server call may take, retries included, before UNAVAILABLE "
                             "(default %(default)s)")
    limits.add_argument("--search-consistency", default="Session",
                        choices=("Strong", "Session", "Bounded", "Eventually"),
                        help="Milvus consistency level of each search (default %(default)s: no wait in a process "
                             "that does not write; Bounded/Eventually: never wait; Strong: waits for the next time "
                             "tick, ~100-200 ms per search on a Milvus server)")
    limits.add_argument("--search-param", action="append", default=[], metavar="KEY=N",
                        help="override the search parameter each collection recorded at creation: ef=N for HNSW, "
                             "nprobe=N for IVF (higher: better recall, slower); repeatable")
    limits.add_argument("--vectors-only", action="store_true",
                        help="load no model: answer vector and id queries only (clients that embed themselves); "
                             "image queries get FAILED_PRECONDITION. Served collections must record one identity")
    limits.add_argument("--health-port", type=int, default=None,
                        help="also answer grpc.health.v1 on this port, plain text, from its own threads: probes pass "
                             "under any load, and the kubelet's native gRPC probe reaches it when --tls-cert is on "
                             "(default: off; health is always served on --port too)")
    limits.add_argument("--health-host", default="127.0.0.1",
                        help="address of the --health-port listener (a pod: its IP or 0.0.0.0; default %(default)s)")
    limits.add_argument("--store-check-seconds", type=float, default=3.0,
                        help="ping Milvus this often; health is NOT_SERVING while it fails, SERVING again when it "
                             "answers; 0 disables (default %(default)s)")
    add_logging_flags(serve)
    serve.set_defaults(func=cmd_serve)

    search = sub.add_parser("search", help="query a running service with an image file or a stored id")
    search.add_argument("image", nargs="?", help="image file to query with (DICOM, PNG, JPEG, ...)")
    search.add_argument("--id", default=None, help="query with an image already stored, by its id")
    search.add_argument("-k", type=int, default=10, help="number of hits (default %(default)s)")
    search.add_argument("--target", default="127.0.0.1:50051", help="service address (default %(default)s)")
    search.add_argument("--collection", default="", help="collection (default: the server's)")
    search.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                        help="equality filter on label, modality, body_part, view, dataset, ... (repeatable)")
    search.add_argument("--prefilter", default="off", choices=["off", "predicted", "explicit", "soft"],
                        help="predicted: search only the class the model predicts; soft: search every plausible "
                             "class, hits ranked by p(label) + similarity; explicit: --prefilter-class "
                             "(default %(default)s)")
    search.add_argument("--prefilter-class", default="", help="class to search with --prefilter explicit")
    search.add_argument("--min-confidence", type=float, default=0.0,
                        help="--prefilter predicted: below this probability search everything (0: server default)")
    search.add_argument("--rerank", default="", choices=["", "hog", "kreciprocal"],
                        help="re-rank CNN candidates: hog (collection ingested with --rerank-descriptor hog), or "
                             "kreciprocal (k-reciprocal neighbourhoods of their stored vectors, label-free)")
    search.add_argument("--k-prep", type=int, default=0,
                        help="candidates to re-rank (0: max(10, k); kreciprocal: max(50, k))")
    search.add_argument("--soft-weight", type=float, default=None, metavar="W",
                        help="--prefilter soft: the similarity's weight beside p(label) (default: the server's)")
    search.add_argument("--query-expansion", type=int, default=0, metavar="N",
                        help="αQE: search again with the query averaged into its first N hits (0: off)")
    search.add_argument("--timeout", type=float, default=30.0, help="seconds (default %(default)s)")
    search.add_argument("--json", action="store_true", help="print the reply as JSON")
    search.add_argument("--sheet", default=None, metavar="PATH",
                        help="also write a contact sheet: the query beside its hits' thumbnails with rank, score, "
                             "label and modality (PATH.html: a page; PATH.png: an image)")
    search.add_argument("--tls", action="store_true", help="use TLS with the system's CA roots")
    search.add_argument("--tls-ca", default=None, metavar="PEM", help="CA that signed the server certificate (TLS)")
    search.add_argument("--tls-cert", default=None, metavar="PEM", help="client certificate (mutual TLS)")
    search.add_argument("--tls-key", default=None, metavar="PEM", help="client private key (mutual TLS)")
    search.add_argument("--tls-server-name", default=None,
                        help="name to check the server certificate against (when --target is an IP)")
    search.add_argument("--token-file", default=None, metavar="PATH",
                        help="file whose first line is the bearer token (default: env CBMIR_TOKEN)")
    add_logging_flags(search)
    search.set_defaults(func=cmd_search)

    info = sub.add_parser("info", help="list backbones, and the collections of a store with their models")
    add_store_flags(info)
    info.add_argument("--only", action="store_true", help="describe only --collection")
    add_logging_flags(info)
    info.set_defaults(func=cmd_info)

    migrate = sub.add_parser(
        "migrate", help="copy a collection from one Milvus to another (Milvus Lite file -> server)",
        description="Copy a collection with its schema (partition key, dim), index, model identity and every row "
                    "(vectors and fields), plus its re-ranking companions (<collection>__hog). Ids already in the "
                    "target are skipped: re-running adds nothing and resumes an interrupted copy. Ends by checking "
                    "that every source id is in the target.")
    migrate.add_argument("--from", dest="source", required=True, metavar="URI_OR_FILE",
                         help="source: a Milvus Lite file (./cbmir.db) or a server URI")
    migrate.add_argument("--to", dest="target", required=True, metavar="URI",
                         help="target: a server URI such as http://127.0.0.1:19530 (or another .db file)")
    migrate.add_argument("--collection", default=DEFAULT_COLLECTION, help="collection (default %(default)s)")
    add_secret_flags(migrate, "--from-token", "CBMIR_MIGRATE_FROM_TOKEN", "source server token user:password")
    add_secret_flags(migrate, "--to-token", "CBMIR_MILVUS_TOKEN", "target server token user:password")
    migrate.add_argument("--batch-rows", type=int, default=1000,
                         help="rows per page read and per write (default %(default)s)")
    migrate.add_argument("--overwrite", action="store_true",
                         help="rewrite ids the target already holds (default: skip them)")
    migrate.add_argument("--no-companions", action="store_true",
                         help="leave out the <collection>__<kind> re-ranking descriptor collections")
    migrate.add_argument("--no-progress", action="store_true", help="no progress bar")
    migrate.add_argument("--report", default=None, metavar="PATH", help="also write the report as JSON")
    add_logging_flags(migrate)
    migrate.set_defaults(func=cmd_migrate)

    erase = sub.add_parser(
        "erase", help="erase a patient's or a study's images from every collection, and prove it",
        description="Consent withdrawn (GDPR art. 17): delete every row of the patient (DICOM PatientID) or study "
                    "(StudyInstanceUID), found by the salted hash ingestion stored, from every collection and its "
                    "descriptor companions; flush, compact (Milvus Lite: rewrite the collection), then prove it: "
                    "nothing answers to the hash (consistency Strong), no search with an erased vector returns it, "
                    "and (Lite) no file holds it. Appends counts, never the id, to the audit log. Exit 1 unless "
                    "proved (docs/pacs.md).")
    who = erase.add_mutually_exclusive_group(required=True)
    who.add_argument("--patient-id", default="", help="the DICOM PatientID (0010,0020) to erase")
    who.add_argument("--study-uid", default="", help="the DICOM StudyInstanceUID (0020,000D) to erase")
    add_store_flags(erase)
    erase.set_defaults(collection="")  # erasure covers every collection unless told otherwise
    next(a for a in erase._actions if a.dest == "collection").help = \
        "erase from this collection only (default: every collection of the store)"
    erase.add_argument("--audit-log", default=None, metavar="PATH",
                       help="JSON-lines audit log to append to (default $CBMIR_HOME/erasure-audit.jsonl)")
    erase.add_argument("--report", default=None, metavar="PATH", help="also write the report as JSON")
    add_secret_flags(erase, "--id-salt", "CBMIR_ID_SALT",
                     "the salt the collections' ids were keyed with (default: the deployment's $CBMIR_HOME/id-salt)")
    add_logging_flags(erase)
    erase.set_defaults(func=cmd_erase)

    add_milvus_server_parser(sub)
