"""The `cbmir` command line: assembles the subcommands each area defines next to its code."""

from __future__ import annotations

import argparse

from cbmir.bench.commands import add_bench_parser
from cbmir.bench.quality.commands import add_eval_parser
from cbmir.demo import add_demo_command
from cbmir.ingestion.commands import add_dicom_node_command, add_ingest_command
from cbmir.services.commands import add_service_commands
from cbmir.services.errors import friendly_errors
from cbmir.services.logs import configure_logging
from cbmir.training.commands import add_train_command

DESCRIPTION = """\
cbmir: content-based medical image retrieval.
Images (DICOM, PNG, JPEG, PGM, TIFF, MedMNIST npz) are embedded by a CNN, stored in Milvus, and searched over gRPC.
Default store: Milvus Lite, a local file (./cbmir.db). A Milvus server: --milvus-uri http://host:19530.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbmir", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_ingest_command(sub)
    add_dicom_node_command(sub)
    add_service_commands(sub)  # serve, search, info, milvus-server
    add_demo_command(sub)
    add_train_command(sub)
    add_bench_parser(sub)
    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, json_format=args.log_json)
    with friendly_errors():
        return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
