"""Command-line flags several areas share (store, model, logging), and the model those flags describe."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


class SecretFromFile(argparse.Action):
    """`--x-file PATH`: the secret is the file's first line, stored where `--x` stores it. A flag value is visible
    to every local user in `ps`; a file (mode 0600, or a mounted k8s Secret) is not."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        try:
            lines = Path(str(values)).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            parser.error(f"{option_string}: cannot read {values}: {error.strerror or error}")
        value = lines[0].strip() if lines else ""
        if not value:
            parser.error(f"{option_string}: {values} is empty (the secret is its first line)")
        setattr(namespace, self.dest, value)


def add_secret_flags(parser: Any, flag: str, env: str, help_text: str) -> None:
    """`--flag VALUE` (default: env ENV) and `--flag-file PATH`, both into the same dest; the help says which to
    prefer. `parser` may be an argument group."""
    dest = flag.lstrip("-").replace("-", "_")
    parser.add_argument(flag, dest=dest, default=os.environ.get(env, ""), metavar="SECRET",
                        help=f"{help_text}; prefer env {env} or {flag}-file (a flag value shows in `ps`)")
    parser.add_argument(f"{flag}-file", dest=dest, action=SecretFromFile, metavar="PATH",
                        help=f"read {flag} from the first line of PATH (e.g. a mounted k8s Secret)")


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    from cbmir.services.store import DEFAULT_COLLECTION, DEFAULT_URI

    parser.add_argument("--milvus-uri", default=os.environ.get("CBMIR_MILVUS_URI", DEFAULT_URI),
                        help="Milvus Lite file (path ending in .db) or server URI http://host:19530 "
                             "(env CBMIR_MILVUS_URI; default %(default)s)")
    add_secret_flags(parser, "--milvus-token", "CBMIR_MILVUS_TOKEN",
                     "Milvus server token 'user:password' (never logged)")
    parser.add_argument("--collection", default=DEFAULT_COLLECTION,
                        help="collection name; one collection per embedding model (default %(default)s)")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="auto = fp16 autocast on CUDA; on CPU bf16 where it has AMX/AVX512-BF16, else fp32. "
                             "serve: the collection's precision where this device runs it natively, else fp32; "
                             "queries at another precision are accepted within the measured tolerance "
                             "(docs/scaling.md). Recorded in the model identity (default auto)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: each vector (and class probability) is the mean over the image "
                             "and its horizontal mirror; twice the embedding cost, part of the model identity. "
                             "serve: on by itself when the collection was ingested with it")


def add_logging_flags(parser: argparse.ArgumentParser, level: str = "INFO") -> None:
    parser.add_argument("--log-level", default=level, help="DEBUG, INFO, WARNING (default %(default)s)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")


def load_model_for(args: argparse.Namespace, store: Any = None, collection: str = "") -> Any:
    """The model of the flags; with --precision auto, the collection's precision where this device runs it
    natively (services/embedding/precision.py)."""
    from cbmir.services.embedding import EmbeddingModel, ModelIdentity
    from cbmir.services.embedding.model import TTA_SUFFIX
    from cbmir.services.embedding.precision import serving_precision

    precision, tta = args.precision, bool(getattr(args, "tta", False))
    if store is not None and store.has_collection(collection):
        stored = store.model_identity_json(collection)
        if stored:
            identity = ModelIdentity.from_json(stored)
            precision = serving_precision(identity.precision, args.device) if precision == "auto" else precision
            # A collection of mirrored-and-averaged vectors is only searchable by the same model.
            tta = tta or identity.architecture.endswith(TTA_SUFFIX)
    return EmbeddingModel.load(args.backbone, weights=args.weights, random_init=args.random_init,
                               device=args.device, precision=precision, tta=tta)
