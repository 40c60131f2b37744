"""The DICOM node's indexer: drains the disk queue in batches through ingestion's reader, Embedder and MilvusSink."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from cbmir.ingestion.batches import ID, REASON, STATUS, STATUS_FAILED, items_table
from cbmir.ingestion.embedder import Embedder
from cbmir.ingestion.node_queue import DiskQueue
from cbmir.ingestion.reader import read_batch
from cbmir.ingestion.sink import MilvusSink
from cbmir.ingestion.sources import SourceItem
from cbmir.services.store import MilvusStore, is_server_uri

log = logging.getLogger(__name__)

DEFAULT_BATCH = 32
RETRY_SECONDS = 2.0  # after a store error: the instances stay queued and are tried again


class NodeIndexer:
    """One thread: take up to `batch` queued instances, decode, embed, upsert, then drop them from the queue.

    Idempotent by the image id (the salted SOP Instance UID, as file ingestion computes it): an instance indexed
    twice (a kill between upsert and `done`, or sent twice) is one row.
    """

    def __init__(self, queue: DiskQueue, store: MilvusStore, collection: str, embedder: Embedder, id_salt: str,
                 input_size: int, dataset: str, batch: int = DEFAULT_BATCH,
                 on_indexed: Callable[[int, list[float]], None] | None = None,
                 on_failed: Callable[[str], None] | None = None) -> None:
        self.queue = queue
        self.store = store
        self.collection = collection
        self.embedder = embedder
        self.id_salt = id_salt
        self.input_size = input_size
        self.dataset = dataset
        self.batch = batch
        # Milvus Lite keeps unflushed rows in memory: flush before dropping them from the queue. A server's rows are
        # durable in its message queue once the upsert returns.
        self.flush_each_batch = not is_server_uri(store.uri)
        self.sink = MilvusSink(store, collection, embedder.dim, flush_rows=batch, id_salt=id_salt)
        self.on_indexed = on_indexed or (lambda count, ages: None)
        self.on_failed = on_failed or (lambda reason: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cbmir-node-indexer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand and stop; what is still queued stays on disk for the next start."""
        self._stop.set()
        self.queue.arrived.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.drain_once() == 0:
                    self.queue.arrived.wait(0.5)
                    self.queue.arrived.clear()
            except Exception as error:  # the store is down or refusing: keep the instances, try again
                log.warning("indexing failed, the instances stay queued (retry in %.0f s): %s", RETRY_SECONDS, error)
                self._stop.wait(RETRY_SECONDS)

    def drain_once(self) -> int:
        """Index one batch of the queue; returns how many instances it took (0: the queue is empty)."""
        paths = self.queue.take(self.batch)
        if not paths:
            return 0
        arrived = [_mtime(path) for path in paths]
        items = [SourceItem(uri=str(path), name=f"dicom-node/{path.name}", metadata={"dataset": self.dataset})
                 for path in paths]
        rows = self.embedder(read_batch(items_table(items, self.dataset), None, self.id_salt,
                                        input_size=self.input_size))
        statuses = rows.column(STATUS).to_pylist()
        failed = [i for i, status in enumerate(statuses) if status == STATUS_FAILED]
        for i in failed:  # validated on arrival, so only a decoder or model fault lands here
            reason = rows.column(REASON)[i].as_py() or "unknown error"
            log.error("cannot index queued instance %s: %s (moved to %s/failed)", paths[i].name, reason,
                      self.queue.root)
            self.queue.fail(paths[i])
            self.on_failed(reason)
        good = [i for i in range(rows.num_rows) if i not in set(failed)]
        if good:
            self.sink.write(rows.take(pa.array(good, pa.int64())))
            self.sink.upsert_pending()
            if self.flush_each_batch:
                self.store.flush(self.collection)
        self.queue.done([paths[i] for i in good])
        now = time.time()
        self.on_indexed(len(good), [now - arrived[i] for i in good])
        log.debug("indexed %d instances (%s...)", len(good), rows.column(ID)[0].as_py() if good else "")
        return len(paths)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
