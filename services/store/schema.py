"""The collection schema: field names, lengths and the filterable fields, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymilvus import CollectionSchema

ID = "id"
EMBEDDING = "embedding"
LABEL = "label"
PREDICTED_LABEL = "predicted_label"
MODALITY = "modality"
BODY_PART = "body_part"
VIEW = "view"
SOURCE = "source"
DATASET = "dataset"
MODEL_ID = "model_id"
# A small JPEG of what the model saw (pixels only, no header), base64 in a VARCHAR: Milvus 2.3 has no binary
# scalar field. services/embedding/thumbnail.py keeps it under this length.
THUMBNAIL = "thumbnail"
THUMBNAIL_MAX_LENGTH = 16_384  # base64 of thumbnail.THUMBNAIL_MAX_BYTES (a test pins that it fits)
# Salted hashes of the DICOM PatientID and StudyInstanceUID (services/embedding/decode.subject_hash), "" for other
# images: they exist only so `cbmir erase` can find a patient's rows. Never filterable by clients, never returned.
PATIENT_HASH = "patient_hash"
STUDY_HASH = "study_hash"

# VARCHAR fields and their max lengths; values longer than this are truncated at write time.
SCALAR_FIELDS: dict[str, int] = {
    LABEL: 256,
    PREDICTED_LABEL: 256,
    MODALITY: 64,
    BODY_PART: 128,
    VIEW: 64,
    SOURCE: 2048,
    DATASET: 256,
    MODEL_ID: 64,
    THUMBNAIL: THUMBNAIL_MAX_LENGTH,
}
ID_MAX_LENGTH = 64
# The erasure keys: VARCHAR fields outside SCALAR_FIELDS, so no search filters on them or returns them.
ERASURE_FIELDS: dict[str, int] = {PATIENT_HASH: 64, STUDY_HASH: 64}

# Fields a search may filter on by equality. Anything else is rejected, never passed to Milvus.
# Not `source`: a path can name a patient, and a filter on it would let a client probe for one.
FILTER_FIELDS: tuple[str, ...] = (LABEL, PREDICTED_LABEL, MODALITY, BODY_PART, VIEW, DATASET)
# Fields returned with every hit; a thumbnail only when asked for (kilobytes per hit).
OUTPUT_FIELDS: tuple[str, ...] = tuple(f for f in SCALAR_FIELDS if f != THUMBNAIL)

# Collection properties written beside the data.
PROPERTY_MODEL_IDENTITY = "cbmir.model_identity"
PROPERTY_SCHEMA_VERSION = "cbmir.schema_version"
PROPERTY_SEARCH_PARAMS = "cbmir.search_params"  # chosen at creation for the expected size (services/store/index.py)
# A digest of the salt the ids were keyed with ("" or absent: unsalted sha256 ids); never the salt itself.
PROPERTY_ID_SALT_DIGEST = "cbmir.id_salt_digest"
SCHEMA_VERSION = "2"  # 2: patient_hash, study_hash (a version-1 collection has neither; erase says so)


@dataclass(frozen=True)
class Row:
    """One stored image: the unit ingestion writes and search returns."""

    id: str
    embedding: list[float]
    label: str = ""
    predicted_label: str = ""
    modality: str = ""
    body_part: str = ""
    view: str = ""
    source: str = ""
    dataset: str = ""
    model_id: str = ""
    thumbnail: str = ""
    patient_hash: str = ""
    study_hash: str = ""


DESCRIPTOR = "descriptor"
PROPERTY_DESCRIPTOR_KIND = "cbmir.descriptor_kind"


def descriptor_collection_name(collection: str, kind: str) -> str:
    """The companion collection holding `kind` descriptors (e.g. HOG) of the same ids, for re-ranking."""
    return f"{collection}__{kind}"


def build_descriptor_schema(dim: int) -> CollectionSchema:
    from pymilvus import DataType, MilvusClient  # here, not at the top: read tasks import the field names only

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
    schema.add_field(DESCRIPTOR, DataType.FLOAT_VECTOR, dim=dim)
    return schema


def build_schema(dim: int) -> CollectionSchema:
    """Schema with `label` as the partition key, so a class prefilter touches only that class's partition."""
    from pymilvus import DataType, MilvusClient  # here, not at the top: read tasks import the field names only

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
    schema.add_field(EMBEDDING, DataType.FLOAT_VECTOR, dim=dim)
    for name, max_length in SCALAR_FIELDS.items():
        schema.add_field(name, DataType.VARCHAR, max_length=max_length, is_partition_key=(name == LABEL))
    for name, max_length in ERASURE_FIELDS.items():
        schema.add_field(name, DataType.VARCHAR, max_length=max_length)
    return schema
