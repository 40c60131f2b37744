"""Decoding, preprocessing, backbone registry and EmbeddingModel: the one image -> vector path for cbmir.

Names are loaded on first use (PEP 562): a Ray read task imports `decode` and `resize` through this package
without importing torch, which only the model half needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cbmir.services.embedding.backbones import BACKBONES, BackboneSpec
    from cbmir.services.embedding.decode import (
        MAX_IMAGE_PIXELS,
        DecodedImage,
        ImageDecodeError,
        decode_array,
        decode_image,
        id_salt_digest,
        image_id,
        subject_hash,
    )
    from cbmir.services.embedding.model import EmbeddingModel, ModelIdentity, WeightsError, list_backbones
    from cbmir.services.embedding.preprocess import Preprocessing, to_batch_tensor
    from cbmir.services.embedding.resize import decode_resized, presize, resize_unit

_HOME = {
    "backbones": ("BACKBONES", "BackboneSpec"),
    "decode": ("MAX_IMAGE_PIXELS", "DecodedImage", "ImageDecodeError", "decode_array", "decode_image",
               "id_salt_digest", "image_id", "subject_hash"),
    "model": ("EmbeddingModel", "ModelIdentity", "WeightsError", "list_backbones"),
    "preprocess": ("Preprocessing", "to_batch_tensor"),
    "resize": ("decode_resized", "presize", "resize_unit"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

__all__ = [
    "BACKBONES",
    "MAX_IMAGE_PIXELS",
    "BackboneSpec",
    "DecodedImage",
    "EmbeddingModel",
    "ImageDecodeError",
    "ModelIdentity",
    "Preprocessing",
    "WeightsError",
    "decode_array",
    "decode_image",
    "decode_resized",
    "id_salt_digest",
    "image_id",
    "list_backbones",
    "presize",
    "resize_unit",
    "subject_hash",
    "to_batch_tensor",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
