"""The generated retrieval stubs, generated on first import when a source checkout lacks them."""

from __future__ import annotations

try:
    from cbmir.v1 import retrieval_pb2, retrieval_pb2_grpc
except ImportError:  # a fresh checkout before `scripts/setup.sh`: generate, then import
    import importlib

    from services.query.protogen import generate

    generate()
    importlib.invalidate_caches()
    from cbmir.v1 import retrieval_pb2, retrieval_pb2_grpc

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name

__all__ = ["SERVICE_NAME", "retrieval_pb2", "retrieval_pb2_grpc"]
