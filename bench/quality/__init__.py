"""Retrieval quality harness (`cbmir eval`): ingest through the real pipeline, query through the engine, score."""
