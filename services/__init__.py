"""cbmir services: embedding, store and query, shared by ingestion and the gRPC service."""
