"""Search engines under test behind one small interface: raw FAISS in process, Milvus Lite, a Milvus server.

Vectors arrive unit-normalised, so inner product = cosine everywhere. Milvus collections are created by
MilvusStore with the production schema (label = partition key); a label filter is the production prefilter.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from pymilvus.exceptions import MilvusException

from cbmir.services.store import IndexConfig, MilvusStore, choose_index
from cbmir.services.store import schema as store_schema

INSERT_BATCH = 2000


def label_name(code: int) -> str:
    return f"class{int(code)}"


def index_config(index_type: str, n: int) -> IndexConfig:
    """The store's own choice for this size (HNSW M=16/efC=200; IVF nlist ~ 4 sqrt N); COSINE like production."""
    return choose_index(index_type, "COSINE", expected_rows=n)


def sweep(config: IndexConfig) -> list[dict[str, int]]:
    """Search parameters to try: the default and a few either side (ef for HNSW, nprobe for IVF). ef 96: at 10^6
    recall@10 0.95 falls between 64 and 128, and the smallest ef that reaches it is what the latency target asks."""
    if config.index_type == "HNSW":
        return [{"ef": ef} for ef in (16, 32, 64, 96, 128, 256)]
    if config.index_type.startswith("IVF"):
        nlist = int(config.build_params["nlist"])
        probes = sorted({max(1, nlist // d) for d in (64, 32, 16, 8, 4)})
        return [{"nprobe": p} for p in probes]
    return [{}]


@dataclass
class BuildStats:
    insert_s: float = 0.0
    index_s: float = 0.0
    rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def insert_rows_per_s(self) -> float:
        return self.rows / self.insert_s if self.insert_s else float("nan")


class FaissEngine:
    """The reference: the index itself, in process, no client, no serialisation."""

    name = "faiss"

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.index: Any = None
        self.selectors: dict[str, Any] = {}
        self.config: IndexConfig | None = None
        # --reuse: a built index is kept on disk, keyed by the vectors and the build parameters, so a re-timing
        # at 10^6 reads it back in seconds instead of re-building for an hour (the server keeps its own likewise).
        self.cache_dir = cache_dir
        self.reused_index = False

    def load(self, vectors: np.ndarray, labels: np.ndarray) -> BuildStats:
        self.vectors, self.labels = vectors, labels
        for code in np.unique(labels):
            ids = np.flatnonzero(labels == code).astype(np.int64)
            self.selectors[label_name(code)] = (faiss.IDSelectorBatch(ids), ids)  # keep ids alive with it
        return BuildStats(rows=len(vectors))

    def _cache_path(self, config: IndexConfig) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(np.ascontiguousarray(self.vectors).data)
        digest.update(json.dumps([config.index_type, config.metric, config.build_params], sort_keys=True)
                      .encode())
        return self.cache_dir / f"{config.index_type}-{len(self.vectors)}-{digest.hexdigest()[:16]}.faiss"

    def build(self, config: IndexConfig) -> float:
        self.drop_index()
        cached = self._cache_path(config)
        self.reused_index = bool(cached and cached.exists())
        if cached is not None and self.reused_index:
            self.index, self.config = faiss.read_index(str(cached)), config
            return 0.0
        seconds = self._build(config)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".partial")
            faiss.write_index(self.index, str(partial))
            partial.rename(cached)  # a killed write never passes for a built index
        return seconds

    def _build(self, config: IndexConfig) -> float:
        dim = self.vectors.shape[1]
        faiss.omp_set_num_threads(faiss.omp_get_max_threads())
        started = time.perf_counter()
        ip = faiss.METRIC_INNER_PRODUCT
        if config.index_type == "HNSW":
            index = faiss.IndexHNSWFlat(dim, int(config.build_params["M"]), ip)
            index.hnsw.efConstruction = int(config.build_params["efConstruction"])
        elif config.index_type in ("IVF_FLAT", "IVF_SQ8"):
            nlist = int(config.build_params["nlist"])
            quantizer = faiss.IndexFlatIP(dim)
            if config.index_type == "IVF_FLAT":
                index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
            else:
                index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, ip)
            index.own_fields = True
            quantizer.this.disown()
            train = self.vectors[np.random.default_rng(0).choice(len(self.vectors), min(len(self.vectors),
                                                                 max(nlist * 39, 10_000)), replace=False)]
            index.train(train)
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(self.vectors)
        self.index, self.config = index, config
        return time.perf_counter() - started

    def search(self, query: np.ndarray, k: int, params: dict[str, int], label: str | None) -> list[int]:
        # OpenMP's thread count is per calling thread: each client thread must ask for 1, or two-thread OpenMP
        # teams per client oversubscribe the cores and spin (QPS collapsed 10-50x at 4 and 16 clients).
        faiss.omp_set_num_threads(1)
        selector = self.selectors[label][0] if label else None
        if self.config.index_type == "HNSW":
            sp = faiss.SearchParametersHNSW(efSearch=max(int(params["ef"]), k), sel=selector)
        elif self.config.index_type.startswith("IVF"):
            sp = faiss.SearchParametersIVF(nprobe=int(params["nprobe"]), sel=selector)
        else:
            sp = faiss.SearchParameters(sel=selector) if selector else None
        _, ids = self.index.search(query.reshape(1, -1), k, params=sp)
        return [int(i) for i in ids[0] if i >= 0]

    def prepare_search(self) -> None:
        # One query per call, one thread per call: concurrency comes from the clients, as with Milvus.
        faiss.omp_set_num_threads(1)

    def segments(self) -> None:
        return None  # one in-process index, no segments

    def memory_bytes(self) -> int:
        """The index's serialised size, from a file: serialize_index would hold a second copy in RAM (4.2 GB at
        10^6 x 1024, on top of the index and the vectors: the first 10^6 run was OOM-killed right there)."""
        if self.index is None:
            return 0
        cached = self._cache_path(self.config) if self.config is not None else None
        if cached is not None and cached.exists():
            return cached.stat().st_size
        with tempfile.TemporaryDirectory(prefix="cbmir-faiss-") as work:
            path = Path(work) / "index.faiss"
            faiss.write_index(self.index, str(path))
            return path.stat().st_size

    def drop_index(self) -> None:
        self.index = None

    def close(self) -> None:
        self.drop_index()


class MilvusEngine:
    """Milvus Lite (a .db path) or a Milvus server (http://...) through MilvusStore and its pymilvus client."""

    def __init__(self, name: str, uri: str, collection: str = "bench", reuse: bool = False,
                 num_partitions: int | None = None) -> None:
        self.name = name
        self.num_partitions = num_partitions  # of the label partition key; None: Milvus's default (16)
        self.uri = uri
        self.collection = collection
        # reuse: keep the collection at close, and take it as it is when it holds these very vectors (and the
        # index when it is the one asked for), so the searches of a 10^6 run can be timed again on a quiet
        # machine without hours of insert and build.
        self.reuse = reuse
        self.reused_rows = False
        self.reused_index = False
        self.store = MilvusStore(uri, timeout=600)
        self.client = self.store.client
        self.config: IndexConfig | None = None
        self.dim = 0

    def load(self, vectors: np.ndarray, labels: np.ndarray) -> BuildStats:
        """Create the collection (production schema) and insert every row once; indexes are (re)built later."""
        self.dim = vectors.shape[1]
        fingerprint = _fingerprint(vectors, labels)
        identity = json.dumps({"architecture": "bench", "weights_sha256": fingerprint, "dim": self.dim,
                               "preprocessing": {}})
        if self.store.has_collection(self.collection):
            if (self.reuse and self.store.model_identity_json(self.collection) == identity
                    and self.store.count(self.collection) == len(vectors)):
                self.reused_rows = True
                return BuildStats(rows=len(vectors), extra={"reused": True})
            self.store.drop_collection(self.collection)
        self.store.ensure_collection(self.collection, identity, self.dim, choose_index("FLAT", "COSINE"),
                                      num_partitions=self.num_partitions)
        empty = {name: "" for name in (*store_schema.SCALAR_FIELDS, *store_schema.ERASURE_FIELDS)}
        started = time.perf_counter()
        for start in range(0, len(vectors), INSERT_BATCH):
            stop = min(len(vectors), start + INSERT_BATCH)
            rows = [{**empty, "id": str(i), "embedding": vectors[i].tolist(), "label": label_name(labels[i])}
                    for i in range(start, stop)]
            # insert, not MilvusStore.upsert: the rows are new, and Milvus 2.3.5's upsert puts rows of a
            # partition-key collection into the wrong partition (milvus-io/milvus#30607, fixed in 2.3.10).
            self.client.insert(self.collection, rows)
        self.store.flush(self.collection)
        insert_s = time.perf_counter() - started
        count = self.store.count(self.collection)
        if count != len(vectors):
            raise RuntimeError(f"{self.name}: inserted {len(vectors)} rows but the collection counts {count}")
        return BuildStats(insert_s=insert_s, rows=len(vectors))

    def build(self, config: IndexConfig) -> float:
        """Replace the vector index (release, drop, create, wait until every row is indexed, load)."""
        started = time.perf_counter()
        self.reused_index = self.reused_rows and self._has_index(config)
        if self.reused_index:
            self.client.load_collection(self.collection)
            self.config = config
            return time.perf_counter() - started
        self.client.release_collection(self.collection)
        # Only the vector index is replaced: the filter fields' scalar indexes (a server's) stay.
        if store_schema.EMBEDDING in self.client.list_indexes(self.collection):
            self.client.drop_index(self.collection, store_schema.EMBEDDING)
        params = self.client.prepare_index_params()
        params.add_index(field_name=store_schema.EMBEDDING, index_type=config.index_type, metric_type=config.metric,
                         params=config.build_params)
        try:
            self.client.create_index(self.collection, params)
        except MilvusException as error:
            # Milvus Lite builds inside the call; when that outlasts the RPC deadline pymilvus retries, and the
            # retry finds the index the first attempt made.
            if "already exists" not in str(error):
                raise
        self._wait_indexed()
        self.client.load_collection(self.collection)
        self.config = config
        return time.perf_counter() - started

    def _has_index(self, config: IndexConfig) -> bool:
        """The collection's index is config's, built over every row."""
        if store_schema.EMBEDDING not in self.client.list_indexes(self.collection):
            return False
        info = self.client.describe_index(self.collection, store_schema.EMBEDDING)
        params = info.get("params") if isinstance(info.get("params"), dict) else info
        same = (info.get("index_type") == config.index_type and info.get("metric_type") == config.metric
                and all(str(params.get(k)) == str(v) for k, v in config.build_params.items()))
        return same and info.get("state") in (None, "Finished") and int(info.get("indexed_rows", 0)) >= int(
            info.get("total_rows", 0))

    def _wait_indexed(self, timeout: float = 7200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.client.describe_index(self.collection, store_schema.EMBEDDING)
            total, indexed = int(info.get("total_rows", 0)), int(info.get("indexed_rows", 0))
            if info.get("state") in (None, "Finished") and indexed >= total:
                return
            if info.get("state") == "Failed":
                raise RuntimeError(f"{self.name}: index build failed: {info}")
            time.sleep(0.5)
        raise TimeoutError(f"{self.name}: index not built after {timeout} s")

    def search(self, query: np.ndarray, k: int, params: dict[str, int], label: str | None) -> list[int]:
        if self.config.index_type == "HNSW":
            params = {"ef": max(int(params["ef"]), k)}
        result = self.client.search(
            # float32 bytes: sent as they are, where a list is packed float by float (see MilvusStore.search)
            self.collection, data=[np.ascontiguousarray(query, dtype=np.float32).tobytes()], limit=k,
            anns_field=store_schema.EMBEDDING,
            filter=f'label == "{label}"' if label else "", output_fields=[],
            search_params={"metric_type": "COSINE", "params": params},
            # Bounded, not the collection's Strong: on a server, Strong waits for the next time tick
            # (proxy.timeTickInterval, 200 ms) on every search; the bench measures search, not that wait.
            consistency_level="Bounded",
        )
        return [int(hit["id"]) for hit in result[0]]

    def prepare_search(self) -> None:
        pass

    def memory_bytes(self) -> int:
        return 0

    def segments(self) -> dict[str, Any]:
        """How the loaded rows are split into segments: a server searches every segment of the partitions a
        query touches, so the count drives latency as much as N does."""
        if not self.uri.startswith(("http://", "https://", "tcp://")):
            return {"unavailable": "Milvus Lite has no segment RPC"}
        try:
            loaded = self.client.list_loaded_segments(self.collection)
        except Exception as error:  # noqa: BLE001 - a diagnostic: never lose a long run over it
            return {"unavailable": str(error)[:200]}
        rows = sorted(int(getattr(seg, "num_rows", 0)) for seg in loaded)
        return {"count": len(rows), "rows_min": rows[0] if rows else 0, "rows_max": rows[-1] if rows else 0}

    def drop_index(self) -> None:
        pass

    def close(self) -> None:
        try:
            if not self.reuse:
                self.store.drop_collection(self.collection)
        finally:
            self.store.close()


def _fingerprint(vectors: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over the shape and a strided sample of rows and labels: which vectors a collection holds."""
    import hashlib

    step = max(1, len(vectors) // 4096)
    digest = hashlib.sha256(repr(vectors.shape).encode())
    digest.update(np.ascontiguousarray(vectors[::step]).tobytes())
    digest.update(np.ascontiguousarray(labels[::step]).tobytes())
    return digest.hexdigest()
