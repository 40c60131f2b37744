"""Decoding, preprocessing, backbone registry and EmbeddingModel: the one image -> vector path for cbmir."""

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
from cbmir.services.embedding.preprocess import Preprocessing, decode_resized, presize, resize_unit, to_batch_tensor

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
