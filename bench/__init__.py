"""Benchmarks: search latency / QPS / recall per engine and index as the collection grows (`cbmir bench search`)."""
