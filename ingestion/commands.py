"""Ingestion's subcommand: `cbmir ingest`."""

from __future__ import annotations

import argparse
import os
from typing import Any

from cbmir.services.flags import add_logging_flags, add_model_flags, add_secret_flags, add_store_flags


def cmd_ingest(args: argparse.Namespace) -> int:
    from cbmir.ingestion.config import IngestConfig
    from cbmir.ingestion.runner import run_ingestion

    config = IngestConfig(
        source=args.source, milvus_uri=args.milvus_uri, milvus_token=args.milvus_token, collection=args.collection,
        backbone=args.backbone, weights=args.weights, random_init=args.random_init, device=args.device,
        gpus_per_actor=args.gpus_per_actor, precision=args.precision, actors=args.actors,
        batch_size=args.batch_size, read_cpus=args.read_cpus, ray_address=args.ray_address, index_type=args.index,
        metric=args.metric,
        dataset=args.dataset, manifest=args.manifest, image_column=args.image_column,
        label_column=args.label_column, split=args.split, limit=args.limit, report_path=args.report,
        progress=not args.no_progress, rerank_descriptor=args.rerank_descriptor, id_salt=args.id_salt,
        flush_rows=args.flush_rows, tta=args.tta, source_field=args.source_field,
        folder_labels=args.folder_labels, partitions=args.partitions, study=args.study, since=args.since,
        modality=args.modality, pacs_credentials=args.pacs_credentials,
    )
    report = run_ingestion(config)
    print(report.summary())
    return 0


def add_ingest_command(sub: Any) -> None:
    """Register `cbmir ingest` on the `cbmir` subparsers."""
    ingest = sub.add_parser("ingest", help="embed an image archive with Ray and upsert it into Milvus",
                            description="Embed every image of SOURCE with Ray actors and upsert it into Milvus. "
                                        "Idempotent: re-running adds no rows; a crash loses nothing (run again).")
    ingest.add_argument("source", help="a directory (PNG/JPEG/PGM/TIFF/DICOM, optionally with labels.csv), "
                                       "a CSV manifest, a MedMNIST .npz, or a PACS: "
                                       "dicomweb+http://host:8042/dicom-web "
                                       "(QIDO-RS lists, WADO-RS fetches; stored instances are not fetched again)")
    add_store_flags(ingest)
    add_model_flags(ingest)
    ingest.add_argument("--actors", type=int, default=2, help="embedding actors (default %(default)s)")
    ingest.add_argument("--batch-size", type=int, default=32, help="images per embedding batch (default %(default)s)")
    ingest.add_argument("--read-cpus", type=float, default=None,
                        help="CPUs each read+decode task asks Ray for (default: a share of the CPUs left to reads, "
                             "see docs/benchmarks.md); lower runs more decodes at once beside the actors")
    ingest.add_argument("--gpus-per-actor", type=float, default=1.0,
                        help="with --device cuda: GPUs per actor, fractions share a GPU (default %(default)s)")
    ingest.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or None,
                        help="Ray cluster address (e.g. auto, 10.0.0.1:6379, ray://head:10001); default: $RAY_ADDRESS, "
                             "else a local Ray. A cluster with token auth needs RAY_AUTH_MODE=token and "
                             "RAY_AUTH_TOKEN set here as on its nodes")
    ingest.add_argument("--index", default="HNSW", choices=["HNSW", "IVF_FLAT", "IVF_SQ8", "FLAT"],
                        help="index of a new collection (default %(default)s)")
    ingest.add_argument("--metric", default="COSINE", choices=["COSINE", "L2", "IP"],
                        help="metric of a new collection (default %(default)s)")
    ingest.add_argument("--partitions", type=int, default=None,
                        help="partitions a new collection's label partition key hashes into (default: Milvus's 16). "
                             "An unfiltered search visits every partition's segments: on a Milvus server with few "
                             "cores, 1 answers unfiltered searches 2x faster (docs/benchmarks.md)")
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
    add_secret_flags(ingest, "--id-salt", "CBMIR_ID_SALT",
                     "secret that keys the image ids (HMAC-SHA256 of the DICOM SOPInstanceUID / file bytes) and the "
                     "hashed sources. The collection records a digest of it, and later runs must use the same salt. "
                     "Default: the deployment's salt $CBMIR_HOME/id-salt (CBMIR_HOME default ~/.config/cbmir), "
                     "created 0600 on first use; a collection ingested unsalted before stays unsalted, with a "
                     "warning")
    ingest.add_argument("--source-field", default="auto", choices=["auto", "relative", "hashed", "none"],
                        help="what the stored `source` says: the path relative to SOURCE, a keyed hash of it "
                             "(salted by --id-salt), or nothing. Hospital paths often name patients. auto (default): "
                             "hashed for DICOM, relative for other files")
    ingest.add_argument("--folder-labels", default="auto", choices=["auto", "on", "off"],
                        help="class folders (SOURCE/<class>/<image>) as labels. auto (default): on, unless the tree "
                             "holds DICOM, whose folders are patients and studies, not classes: label DICOM with a "
                             "manifest (--manifest) or pass on")
    pacs = ingest.add_argument_group("PACS source (dicomweb+http://...)")
    pacs.add_argument("--study", default=None, metavar="UID", help="only this Study Instance UID")
    pacs.add_argument("--since", default=None, metavar="DATE",
                      help="only studies dated DATE or later (YYYY-MM-DD)")
    pacs.add_argument("--modality", default=None, help="only series of this modality (e.g. CR, CT, MG)")
    add_secret_flags(pacs, "--pacs-credentials", "CBMIR_PACS_CREDENTIALS",
                     "the PACS's DICOMweb credentials: 'user:password' (HTTP Basic) or a bearer token (never logged)")
    ingest.add_argument("--flush-rows", type=int, default=512,
                        help="rows per upsert; what a crash can lose and the rerun redoes (default %(default)s)")
    add_logging_flags(ingest)
    ingest.set_defaults(func=cmd_ingest)


def cmd_dicom_node(args: argparse.Namespace) -> int:
    from cbmir.ingestion.dicom_node import NodeConfig, run_node

    config = NodeConfig(
        ae_title=args.ae_title, host=args.host, port=args.port, collection=args.collection,
        milvus_uri=args.milvus_uri, milvus_token=args.milvus_token, queue_dir=args.queue_dir,
        queue_max_items=args.queue_max_items, queue_min_free_mb=args.queue_min_free_mb,
        max_dataset_mb=args.max_dataset_mb, batch=args.batch, dataset=args.dataset, backbone=args.backbone,
        weights=args.weights, random_init=args.random_init, device=args.device, precision=args.precision,
        id_salt=args.id_salt,
    )
    run_node(config, metrics_port=args.metrics_port, metrics_host=args.metrics_host)
    return 0


def add_dicom_node_command(sub: Any) -> None:
    """Register `cbmir dicom-node` on the `cbmir` subparsers."""
    node = sub.add_parser(
        "dicom-node", help="receive images over DICOM (C-STORE SCP) and index them as they arrive",
        description="A DICOM node (C-ECHO and C-STORE SCP) that modalities and PACS send studies to. Each instance "
                    "is checked, written durably to a disk queue and only then acknowledged; a thread embeds the "
                    "queue into the collection within seconds, idempotent by SOP Instance UID. A restart re-drains "
                    "what was queued (docs/pacs.md).")
    node.add_argument("--ae-title", default="CBMIR", help="this node's AE title (default %(default)s)")
    node.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s; 0.0.0.0 for "
                                                          "the hospital network)")
    node.add_argument("--port", type=int, default=11112, help="DICOM port (default %(default)s)")
    node.add_argument("--queue-dir", default="cbmir-node-queue",
                      help="directory of the durable queue; holds whole datasets until indexed (default %(default)s)")
    node.add_argument("--queue-max-items", type=int, default=100_000,
                      help="instances queued before C-STORE answers 0xA700 out of resources (default %(default)s)")
    node.add_argument("--queue-min-free-mb", type=int, default=1024,
                      help="free disk the queue always leaves; below it C-STORE answers 0xA700 (default %(default)s)")
    node.add_argument("--max-dataset-mb", type=int, default=512,
                      help="largest instance accepted; larger ones get 0xA700 (default %(default)s)")
    node.add_argument("--batch", type=int, default=32, help="instances embedded per batch (default %(default)s)")
    node.add_argument("--dataset", default="dicom-node", help="dataset name stored with each row (default %(default)s)")
    node.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (default: off)")
    node.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics (default %(default)s)")
    add_store_flags(node)
    add_model_flags(node)
    add_secret_flags(node, "--id-salt", "CBMIR_ID_SALT",
                     "secret that keys the image ids and the patient/study hashes; default the deployment's salt "
                     "$CBMIR_HOME/id-salt, as `cbmir ingest`")
    add_logging_flags(node)
    node.set_defaults(func=cmd_dicom_node)
