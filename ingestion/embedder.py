"""Embedder: the model as a callable class; one instance per Ray actor, loaded once, embeds the rows to store."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cbmir.ingestion.batches import (
    DESCRIPTOR,
    EMBED_SECONDS,
    EMBEDDING,
    MODEL_ID,
    PIXEL_DTYPE,
    PIXELS,
    PREDICTED_LABEL,
    REASON,
    SHAPE,
    STATUS,
    STATUS_FAILED,
    STATUS_OK,
)
from cbmir.ingestion.wire import unpack
from cbmir.services.embedding import EmbeddingModel
from cbmir.services.embedding.descriptors import DESCRIPTORS, hog_descriptors
from cbmir.services.embedding.model import DEFAULT_BATCH_SIZE

log = logging.getLogger(__name__)

# Fault injection for the reliability tests: when set to a path, the first actor to get a batch creates that file
# and dies on the spot (os._exit, like an OOM kill), once per file. Ray must restart it and re-run the batch.
FAULT_EXIT_ONCE_ENV = "CBMIR_FAULT_EMBEDDER_EXIT_ONCE"


@dataclass(frozen=True)
class ModelDescription:
    """What the collection records about the model the actors run."""

    identity_json: str
    model_id: str
    dim: int
    input_size: int  # the read tasks resize to it before the pixels cross the object store


def describe_model(backbone: str, weights: str | None, random_init: bool, device: str, precision: str,
                   num_threads: int | None, tta: bool = False) -> ModelDescription:
    """Load the model exactly as an actor does and say what it is.

    The identity includes the precision "auto" resolves to, which depends on the device and CPU of the worker
    (bf16 where the CPU has native kernels, fp16 on CUDA), so it must be computed where the actors run.
    """
    model = EmbeddingModel.load(backbone=backbone, weights=weights, random_init=random_init, device=device,
                                precision=precision, num_threads=num_threads, tta=tta)
    return ModelDescription(model.identity.to_json(), model.identity.model_id, model.dim,
                            model.preprocessing.input_size)


class Embedder:
    """Turns decoded rows into vectors; present and failed rows pass through with a zero vector, never stored."""

    def __init__(self, backbone: str, weights: str | None, random_init: bool, device: str, precision: str,
                 num_threads: int | None, descriptor: str = "", tta: bool = False,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        started = time.perf_counter()
        # batch_size is the pipeline's (--batch-size): each batch Ray hands this actor is one forward pass.
        self.model = EmbeddingModel.load(backbone=backbone, weights=weights, random_init=random_init,
                                         device=device, precision=precision, num_threads=num_threads, tta=tta,
                                         batch_size=batch_size)
        self.dim = self.model.dim
        self.descriptor = descriptor
        # A model with a classifier head also predicts each image's class: stored for the class prefilter.
        self.classes: list[str] | None = getattr(self.model, "classes", None)
        self.model_id = self.model.identity.model_id
        log.info("embedder ready in %.1f s (model %s)", time.perf_counter() - started, self.model_id)

    def __call__(self, batch: pa.Table) -> pa.Table:
        _maybe_die_once()
        started = time.perf_counter()
        statuses = batch.column(STATUS).to_pylist()
        reasons = batch.column(REASON).to_pylist()
        todo = [i for i, s in enumerate(statuses) if s == STATUS_OK]
        vectors = np.zeros((batch.num_rows, self.dim), dtype=np.float32)
        predicted = [""] * batch.num_rows
        descriptors = np.zeros((batch.num_rows, DESCRIPTORS.get(self.descriptor, 0)), dtype=np.float32)
        if todo:
            # Already resized by the read task (uint8/uint16/float32): to_batch_tensor only scales and normalises.
            pixels_col, shape_col, dtype_col = batch.column(PIXELS), batch.column(SHAPE), batch.column(PIXEL_DTYPE)
            images = [unpack(pixels_col[i].as_py(), shape_col[i].as_py(), dtype_col[i].as_py()) for i in todo]
            embedded = self._embed(images, todo, statuses, reasons, predicted)
            for i, vector in embedded.items():
                vectors[i] = vector
            if self.descriptor == "hog":
                descriptors[todo] = hog_descriptors(images)
        elapsed = time.perf_counter() - started
        # Pixels are dropped here: the driver only ever sees ids, labels and vectors.
        out = batch.drop_columns([PIXELS, SHAPE, PIXEL_DTYPE])
        out = out.set_column(out.schema.get_field_index(STATUS), STATUS, pa.array(statuses, pa.string()))
        out = out.set_column(out.schema.get_field_index(REASON), REASON, pa.array(reasons, pa.string()))
        embeddings = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), self.dim)
        out = out.append_column(EMBEDDING, embeddings)
        out = out.append_column(MODEL_ID, pa.array([self.model_id] * batch.num_rows, pa.string()))
        out = out.append_column(PREDICTED_LABEL, pa.array(predicted, pa.string()))
        if self.descriptor:
            out = out.append_column(DESCRIPTOR, pa.FixedSizeListArray.from_arrays(
                pa.array(descriptors.reshape(-1), pa.float32()), descriptors.shape[1]))
        return out.append_column(EMBED_SECONDS, pa.array([elapsed / max(batch.num_rows, 1)] * batch.num_rows,
                                                         pa.float64()))

    def _vectors(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """Vectors, and the predicted class of each image when the model has a classifier head. On CUDA the model
        pins each batch and overlaps its copies with the GPU's work (EmbeddingModel.embed_and_predict_batches)."""
        if not self.classes:
            return self.model.embed(images), [""] * len(images)
        vectors, probabilities = self.model.embed_and_predict(images)
        return vectors, [self.classes[int(i)] for i in probabilities.argmax(axis=1)]

    def _embed(self, images: list[np.ndarray], rows: list[int], statuses: list[str], reasons: list[str],
               predicted: list[str]) -> dict[int, np.ndarray]:
        """Embed the batch at once; if that fails, one by one so a single bad image fails alone."""
        try:
            vectors, labels = self._vectors(images)
            for row, label in zip(rows, labels, strict=True):
                predicted[row] = label
            return dict(zip(rows, vectors, strict=True))
        except Exception:
            log.warning("batch embedding failed, retrying image by image", exc_info=True)
        result: dict[int, np.ndarray] = {}
        for row, image in zip(rows, images, strict=True):
            try:
                vectors, labels = self._vectors([image])
                result[row], predicted[row] = vectors[0], labels[0]
            except Exception as error:
                statuses[row] = STATUS_FAILED
                reasons[row] = f"cannot embed: {type(error).__name__}: {error}"
        return result


def _maybe_die_once() -> None:
    marker = os.environ.get(FAULT_EXIT_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: exactly one actor wins
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    log.warning("fault injection: embedder actor %d exits mid-batch", os.getpid())
    os._exit(17)
