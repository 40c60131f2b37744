"""`cbmir dicom-node`: a C-ECHO and C-STORE SCP that checks each instance, queues it durably, and indexes it online.

A C-STORE is answered Success (0x0000) only once the instance is on disk (node_queue); the indexer thread makes it
searchable seconds later. Failures use the C-STORE statuses of DICOM PS3.4 Annex B / PS3.7 Annex C:
0x0122 SOP class not supported (not an image), 0xA700 out of resources (queue bound, disk, dataset size),
0xA900 data set does not match the SOP class (no pixel data), 0xC000 cannot understand (undecodable pixels).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from pydicom import uid as dicom_uid

from cbmir.ingestion.embedder import Embedder
from cbmir.ingestion.node_indexer import DEFAULT_BATCH, NodeIndexer
from cbmir.ingestion.node_queue import DiskQueue, QueueFullError
from cbmir.services.embedding import ImageDecodeError, id_salt_digest, image_id
from cbmir.services.embedding.decode import GPL_ONLY_SYNTAXES, decode_native
from cbmir.services.embedding.id_salt import resolve_id_salt
from cbmir.services.store import MilvusStore, choose_index

log = logging.getLogger(__name__)

SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
DEFAULT_MAX_DATASET_MB = 512

# Every transfer syntax the decoders read (services/embedding/decode.py). pynetdicom's storage contexts offer only
# the uncompressed ones; modalities and PACS send compressed, and a sender whose syntax is not offered must
# convert or fail, so everything decodable is offered. 12-bit JPEG Extended only with the GPL plugin installed.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    dicom_uid.ExplicitVRLittleEndian, dicom_uid.ImplicitVRLittleEndian, dicom_uid.DeflatedExplicitVRLittleEndian,
    dicom_uid.ExplicitVRBigEndian, dicom_uid.JPEGBaseline8Bit, dicom_uid.JPEGExtended12Bit, dicom_uid.JPEGLossless,
    dicom_uid.JPEGLosslessSV1, dicom_uid.JPEGLSLossless, dicom_uid.JPEGLSNearLossless, dicom_uid.JPEG2000Lossless,
    dicom_uid.JPEG2000, dicom_uid.RLELossless,
)

RECEIVED = Counter("cbmir_node_received_total", "C-STORE requests answered, by DIMSE status", ["status"])
INDEXED = Counter("cbmir_node_indexed_total", "Instances indexed (upserted into the collection)")
FAILED = Counter("cbmir_node_failed_total", "Instances refused or not indexed, by reason", ["reason"])
QUEUE_DEPTH = Gauge("cbmir_node_queue_depth", "Instances on disk waiting to be indexed")
ARRIVAL_TO_INDEXED = Histogram("cbmir_node_arrival_to_indexed_seconds", "From queued on disk to upserted",
                               buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300))


def offered_transfer_syntaxes() -> list[str]:
    gpl = importlib.util.find_spec("libjpeg") is not None
    return [str(s) for s in TRANSFER_SYNTAXES if gpl or s not in GPL_ONLY_SYNTAXES]


def storage_sop_classes() -> list[str]:
    from pynetdicom.presentation import AllStoragePresentationContexts

    return [str(context.abstract_syntax) for context in AllStoragePresentationContexts]


def is_image_storage(sop_class: str) -> bool:
    """Image storage SOP classes are the ones named "... Image Storage" (CT, MR, CR, DX, MG, US, SC, XA, ...)."""
    return "Image Storage" in dicom_uid.UID(sop_class).name


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str = "CBMIR"
    host: str = "127.0.0.1"
    port: int = 11112
    collection: str = "cbmir"
    milvus_uri: str = ""
    milvus_token: str = ""
    queue_dir: str = "cbmir-node-queue"
    queue_max_items: int = 100_000
    queue_min_free_mb: int = 1024
    max_dataset_mb: int = DEFAULT_MAX_DATASET_MB
    batch: int = DEFAULT_BATCH
    dataset: str = "dicom-node"
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    random_init: bool = False
    device: str = "cpu"
    precision: str = "auto"
    id_salt: str = ""
    index_type: str = "HNSW"
    metric: str = "COSINE"


class DicomNode:
    """The SCP, its disk queue and its indexer thread; `start()` returns once it listens, `stop()` ends all three."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.store = MilvusStore(config.milvus_uri, token=config.milvus_token)
        stored_digest = (self.store.id_salt_digest(config.collection)
                         if self.store.has_collection(config.collection) else None)
        self.id_salt = resolve_id_salt(config.id_salt, stored_digest, config.collection)
        self.embedder = Embedder(config.backbone, config.weights, config.random_init, config.device,
                                 config.precision, num_threads=None)
        identity = self.embedder.model.identity
        self.input_size = self.embedder.model.preprocessing.input_size
        self.store.ensure_collection(config.collection, identity.to_json(), self.embedder.dim,
                                     choose_index(config.index_type, config.metric),
                                     id_salt_digest=id_salt_digest(self.id_salt))
        if not self.store.has_erasure_fields(config.collection):
            log.warning("collection %r predates patient_hash/study_hash: `cbmir erase` cannot find the rows this "
                        "node adds to it; index into a new --collection", config.collection)
        self.queue = DiskQueue(config.queue_dir, max_items=config.queue_max_items,
                               min_free_bytes=config.queue_min_free_mb << 20)
        QUEUE_DEPTH.set(self.queue.depth())
        self.indexer = NodeIndexer(self.queue, self.store, config.collection, self.embedder, self.id_salt,
                                   self.input_size, config.dataset, batch=config.batch,
                                   on_indexed=self._indexed, on_failed=lambda reason: self._failed("index", reason))
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.config.port

    def start(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        if self.queue.depth():
            log.info("%d instances queued from before: indexing them first", self.queue.depth())
        self.indexer.start()
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_pdu_size = 0  # no limit: the receive buffer is the dataset bound below, not the PDU size
        ae.add_supported_context(Verification)
        syntaxes = offered_transfer_syntaxes()
        # All storage classes are accepted at association, so a non-image one gets a C-STORE status (0x0122) and
        # a log line here, instead of a bare rejected context the sender may not report.
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, syntaxes)
        handlers = [(evt.EVT_C_ECHO, lambda event: SUCCESS), (evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        log.info("DICOM node %s listening on %s:%d (collection %s, queue %s)", self.config.ae_title,
                 self.config.host, self.port, self.config.collection, self.config.queue_dir)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.indexer.stop()

    def _on_store(self, event: Any) -> int:
        try:
            return self._store_instance(event)
        except Exception as error:  # one bad instance must never take the node down
            log.exception("C-STORE failed unexpectedly")
            return self._refuse(CANNOT_UNDERSTAND, "error", f"{type(error).__name__}: {error}", event)

    def _store_instance(self, event: Any) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        if not is_image_storage(sop_class):
            return self._refuse(SOP_CLASS_NOT_SUPPORTED, "not_image",
                                f"SOP class {dicom_uid.UID(sop_class).name} is not an image", event)
        data = event.encoded_dataset(include_meta=True)
        limit = self.config.max_dataset_mb << 20
        if len(data) > limit:
            return self._refuse(OUT_OF_RESOURCES, "oversized",
                                f"dataset of {len(data) >> 20} MiB exceeds --max-dataset-mb {limit >> 20}", event)
        try:
            # The decode the indexer will run (decode_resized without its resize, a third of the time), here so a
            # bad instance is refused while its sender is listening.
            decoded = decode_native(data, min_size=2 * self.input_size)
        except ImageDecodeError as error:
            reason = str(error)
            if "no pixel data" in reason:
                return self._refuse(DATASET_DOES_NOT_MATCH, "no_pixels", reason, event)
            if "too large" in reason:
                return self._refuse(OUT_OF_RESOURCES, "oversized", reason, event)
            return self._refuse(CANNOT_UNDERSTAND, "undecodable", reason, event)
        key = image_id(decoded.content_key, salt=self.id_salt)
        try:
            self.queue.put(key, data)
        except QueueFullError as error:
            return self._refuse(OUT_OF_RESOURCES, "queue_full", str(error), event)
        QUEUE_DEPTH.set(self.queue.depth())
        RECEIVED.labels(status="0x0000").inc()
        return SUCCESS

    def _refuse(self, status: int, reason: str, message: str, event: Any) -> int:
        # The image id, never the SOP Instance UID or a patient's name: the log may travel further than the data.
        sender = getattr(getattr(event, "assoc", None), "requestor", None)
        log.warning("C-STORE from %s refused with 0x%04X: %s", getattr(sender, "ae_title", "?"), status, message)
        RECEIVED.labels(status=f"0x{status:04X}").inc()
        self._failed(reason, message)
        return status

    def _failed(self, reason: str, message: str) -> None:
        FAILED.labels(reason=reason).inc()

    def _indexed(self, count: int, ages: list[float]) -> None:
        INDEXED.inc(count)
        for age in ages:
            ARRIVAL_TO_INDEXED.observe(age)
        QUEUE_DEPTH.set(self.queue.depth())


def run_node(config: NodeConfig, metrics_port: int = 0, metrics_host: str = "127.0.0.1") -> None:
    """Run until SIGINT/SIGTERM; the queue keeps whatever is not indexed yet for the next start."""
    import signal

    from prometheus_client import start_http_server

    node = DicomNode(config)
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    node.start()
    print(f"cbmir dicom-node {config.ae_title} on {config.host}:{node.port} indexing into {config.collection} "
          f"(queue {config.queue_dir}); Ctrl-C stops", flush=True)
    while not stopping.wait(1.0):
        pass
    started = time.perf_counter()
    node.stop()
    log.info("DICOM node stopped in %.1f s; %d instances stay queued", time.perf_counter() - started,
             node.queue.depth())
