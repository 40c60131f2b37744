"""The public contract as Python: the retrieval stubs built from proto/ (package `cbmir.v1`) and its constants."""

from __future__ import annotations

from cbmir.v1 import retrieval_pb2, retrieval_pb2_grpc

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name
# Largest gRPC message either side accepts by default (`cbmir serve --max-message-mb` says the same): a clinical
# image, not more — a 4096x4096 16-bit DICOM is 32 MiB, a full-field mammogram ~27 MiB.
DEFAULT_MAX_MESSAGE_MB = 64

__all__ = ["DEFAULT_MAX_MESSAGE_MB", "SERVICE_NAME", "retrieval_pb2", "retrieval_pb2_grpc"]
