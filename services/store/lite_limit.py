"""Where Milvus Lite stops serving: the measured size past which its search p99 exceeds 50 ms, and the warning."""

from __future__ import annotations

import logging
from typing import Any

from cbmir.services.store.defaults import is_server_uri

log = logging.getLogger(__name__)

P99_TARGET_MS = 50.0
# Measured with `cbmir bench search --engines lite --index-types HNSW --dim 1280 --clients 1` at ingest's HNSW ef
# on a quiet machine (docs/records/bench/search-lite-crossover-quiet-20261204-145245.json; docs/benchmarks.md
# "Where Milvus Lite stops serving"): p99 15.1 ms at 2x10^4 rows (ef 64), 52.5 ms at 6x10^4 (ef 128), the median
# growing ~0.7 ms per 10^3 rows; 5x10^4 is the size below that crossing.
LITE_MAX_SERVING_ROWS = 50_000
SERVER_COMMAND = "cbmir milvus-server --data ./milvus-data --port 19530"


def warn_if_past_lite_limit(store: Any, collection: str, limit: int = LITE_MAX_SERVING_ROWS,
                            rows: int | None = None) -> bool:
    """Log one warning when `collection` on a Milvus Lite file holds more than `limit` rows; True if it did.

    A server URI never warns. `rows` saves a count the caller already has.
    """
    if is_server_uri(store.uri):
        return False
    if rows is None:
        rows = store.count(collection) if store.has_collection(collection) else 0
    if rows <= limit:
        return False
    migrate = f"cbmir migrate --from {store.uri} --to http://127.0.0.1:19530 --collection {collection}"
    log.warning(
        "collection %s holds %d rows on Milvus Lite (%s): past %d rows a Lite search takes over %.0f ms at p99. "
        "Start a server with `%s` and move the collection with `%s`, then pass --milvus-uri http://127.0.0.1:19530",
        collection, rows, store.uri, limit, P99_TARGET_MS, SERVER_COMMAND, migrate,
        extra={"collection": collection, "rows": rows, "lite_max_serving_rows": limit, "milvus_uri": store.uri,
               "server_command": SERVER_COMMAND, "migrate_command": migrate},
    )
    return True
