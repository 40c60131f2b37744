"""cbmir: content-based medical image retrieval.

One import package. Its areas live in the repository's top folders and map in here: cbmir.services (embedding,
store, query service), cbmir.ingestion (the Ray job), cbmir.training (`cbmir train`), cbmir.bench (quality and
scale harnesses); cbmir.v1 holds the gRPC stubs built from proto/; cbmir.cli is the command line on top.
"""
