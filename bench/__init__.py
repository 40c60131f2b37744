"""Benchmarks: search latency / QPS / recall per engine and index as the collection grows (`cbmir bench search`)."""

ENGINES = ("faiss", "lite", "server")  # the search engines `cbmir bench search` compares
