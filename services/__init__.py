"""cbmir services: embedding, store and query, shared by ingestion and the gRPC service."""

import os

# gRPC prints INFO lines on every fork (Ray forks workers) unless told so before its first import.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
