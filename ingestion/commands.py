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
        batch_size=args.batch_size, ray_address=args.ray_address, index_type=args.index, metric=args.metric,
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
