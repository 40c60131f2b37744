"""Offline ingestion: list a source, read+decode, embed on Ray actors, upsert into Milvus, report."""

import cbmir.services  # noqa: F401  (first: it quietens gRPC's fork logging before grpc is imported)
from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.report import IngestReport
from cbmir.ingestion.sources import SourceError, SourceItem, SourceScan, iter_source_chunks, list_source, scan_source

__all__ = ["IngestConfig", "IngestReport", "SourceError", "SourceItem", "SourceScan", "iter_source_chunks",
           "list_source", "run_ingestion", "scan_source"]


def __getattr__(name: str) -> object:
    # run_ingestion pulls in Ray and torch; importing the config or the sources alone should stay light.
    if name == "run_ingestion":
        from cbmir.ingestion.runner import run_ingestion

        return run_ingestion
    raise AttributeError(name)
