"""IngestConfig: everything one ingestion run needs, as the CLI passes it."""

from __future__ import annotations

from dataclasses import dataclass

from cbmir.services.store import DEFAULT_COLLECTION, DEFAULT_URI
from cbmir.services.store.lite_limit import LITE_MAX_SERVING_ROWS

# Listed items the driver holds as Python objects at a time, and the most per Ray input block: the listing is
# streamed in chunks of this size, never held whole.
LISTING_CHUNK_ITEMS = 10_000


@dataclass
class IngestConfig:
    """One ingestion run: where images come from, which model embeds them, where vectors go, how Ray runs."""

    source: str  # a directory tree, a CSV manifest, an .npz (MedMNIST layout), or dicomweb+http(s)://PACS root
    milvus_uri: str = DEFAULT_URI
    milvus_token: str = ""  # "user:password" of an authenticated Milvus server; a secret, like id_salt
    collection: str = DEFAULT_COLLECTION
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    random_init: bool = False
    device: str = "cpu"  # "cpu" | "cuda"
    gpus_per_actor: float = 1.0  # only with cuda; fractional shares one GPU between actors
    precision: str = "auto"
    actors: int = 1
    batch_size: int = 32
    read_cpus: float | None = None  # CPUs each read+decode task asks Ray for; None: plan_resources decides
    ray_address: str | None = None  # None: local Ray; else a cluster address ("auto", "ray://host:10001", ...)
    index_type: str = "HNSW"
    metric: str = "COSINE"
    partitions: int | None = None  # of a new collection's label partition key; None: Milvus's default (16)
    dataset: str = ""  # default: name of the source directory / npz stem
    manifest: str | None = None  # CSV; default: <dir>/labels.csv when present
    image_column: str = "image"
    label_column: str = "label"
    split: str | None = None  # keep only manifest rows (or npz split) with this split; npz default: all splits
    limit: int | None = None
    report_path: str | None = "cbmir-ingest-report.json"
    progress: bool = True
    rerank_descriptor: str = ""  # "hog": also store HOG descriptors so searches can re-rank (seed 003)
    # Keys the image ids (HMAC); the collection records a digest of it, never the salt. "": resolved by
    # run_ingestion (the deployment's $CBMIR_HOME/id-salt, or unsalted for a legacy unsalted collection).
    id_salt: str = ""
    flush_rows: int = 512  # rows per upsert: what a crash can lose (and the rerun redoes)
    listing_chunk: int = LISTING_CHUNK_ITEMS  # most listed items per chunk held by the driver / per Ray block
    # What the store's `source` says: auto = a keyed hash of the relative path for DICOM (patient/study trees
    # name patients), the relative path for other files; or relative / hashed / none for every file.
    source_field: str = "auto"
    # Class folders as labels: auto = yes unless the tree holds DICOM (folders there are patients, not classes).
    folder_labels: str = "auto"
    # A PACS source (dicomweb+http://...): which instances, and the PACS's credentials (a secret, like id_salt).
    study: str | None = None  # one Study Instance UID
    since: str | None = None  # study date YYYY-MM-DD or YYYYMMDD, inclusive
    modality: str | None = None  # e.g. CR
    pacs_credentials: str = ""  # "user:password" (HTTP Basic) or a bearer token
    tta: bool = False  # test-time augmentation: average each vector over the image and its mirror (2x embed cost)
    lite_max_serving_rows: int = LITE_MAX_SERVING_ROWS  # past it on Milvus Lite, warn: move to a server

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.read_cpus is not None and not 0 < self.read_cpus <= 64:
            raise ValueError(f"read_cpus must be in (0, 64], got {self.read_cpus}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and self.gpus_per_actor <= 0:
            raise ValueError(f"gpus_per_actor must be > 0 with --device cuda, got {self.gpus_per_actor}")
        if self.rerank_descriptor not in ("", "hog"):
            raise ValueError(f"rerank_descriptor must be '' or 'hog', got {self.rerank_descriptor!r}")
        if self.flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, got {self.flush_rows}")
        if self.listing_chunk < 1:
            raise ValueError(f"listing_chunk must be >= 1, got {self.listing_chunk}")
        if self.source_field not in ("auto", "relative", "hashed", "none"):
            raise ValueError(f"source_field must be auto, relative, hashed or none, got {self.source_field!r}")
        if self.folder_labels not in ("auto", "on", "off"):
            raise ValueError(f"folder_labels must be auto, on or off, got {self.folder_labels!r}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")

    def __repr__(self) -> str:  # the salt and the token are secrets: never in logs or reports
        secret = ("id_salt", "milvus_token", "pacs_credentials")
        fields = {k: ("***" if k in secret and v else v) for k, v in vars(self).items()}
        return f"IngestConfig({', '.join(f'{k}={v!r}' for k, v in fields.items())})"
