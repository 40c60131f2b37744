"""EmbeddingModel: bundled and file weights, identity, determinism, precision, errors that carry the fix."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cbmir.services.embedding import (
    BACKBONES,
    EmbeddingModel,
    ModelIdentity,
    Preprocessing,
    WeightsError,
    decode_image,
    list_backbones,
    to_batch_tensor,
)
from cbmir.services.embedding.backbones import (
    TIMM_EFFICIENTNET_LITE0,
    build_efficientnet_lite0_classifier,
    build_timm_efficientnet_lite0,
    bundled_efficientnet_lite0_path,
    rename_lukemelas_to_timm,
)

from ._data import dicom_file


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def lite0() -> EmbeddingModel:
    return EmbeddingModel.load("efficientnet_lite0")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Four real medical images of different sizes and channel counts."""
    return [decode_image(dicom_file(n).read_bytes()).pixels
            for n in ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "RG3_UNCR.dcm")]


def test_registry_lists_the_six_backbones_with_their_dims() -> None:
    expected = {"densenet121": 1024, "resnet50": 2048, "resnet18": 512, "vgg16": 512, "squeezenet1_1": 512,
                "efficientnet_lite0": 1280}
    assert {n: BACKBONES[n].dim for n in list_backbones()} == expected
    assert BACKBONES["efficientnet_lite0"].bundled_weights is not None


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1"])
def test_small_backbones_produce_their_registered_dim(name: str) -> None:
    m = EmbeddingModel.load(name, random_init=True, precision="fp32")
    out = m.embed([np.zeros((40, 30), dtype=np.float32)])
    assert out.shape == (1, BACKBONES[name].dim)


def test_unknown_backbone_error_lists_registered_names() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vit'.*densenet121.*efficientnet_lite0"):
        EmbeddingModel.load("vit")


def test_bundled_efficientnet_lite0_loads_with_imagenet_weights(lite0: EmbeddingModel) -> None:
    assert lite0.dim == 1280
    ident = lite0.identity
    assert ident.architecture == "efficientnet_lite0" and ident.dim == 1280
    digest = hashlib.sha256(bundled_efficientnet_lite0_path().read_bytes()).hexdigest()
    assert ident.weights_sha256 == digest
    assert ident.preprocessing == lite0.preprocessing.to_dict()
    assert ident.preprocessing["input_size"] == 224


def test_embed_returns_float32_unnormalised_vectors(lite0: EmbeddingModel, images: list[np.ndarray]) -> None:
    out = lite0.embed(images)
    assert out.shape == (4, 1280) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert lite0.embed([]).shape == (0, 1280)


def test_same_image_embeds_identically_twice(lite0: EmbeddingModel, images: list[np.ndarray]) -> None:
    np.testing.assert_array_equal(lite0.embed(images[:1]), lite0.embed(images[:1]))


def test_batch_of_one_agrees_with_batch_of_four(lite0: EmbeddingModel, images: list[np.ndarray]) -> None:
    batch = lite0.embed(images)
    single = np.concatenate([lite0.embed([im]) for im in images])
    assert _cos(batch, single).min() > 0.9999


def test_different_images_give_different_vectors(lite0: EmbeddingModel, images: list[np.ndarray]) -> None:
    out = lite0.embed(images)
    assert _cos(out[:1], out[1:2])[0] < 0.99


def test_bf16_autocast_stays_close_to_fp32_but_is_a_different_identity(images: list[np.ndarray]) -> None:
    fp32 = EmbeddingModel.load(precision="fp32")
    bf16 = EmbeddingModel.load(precision="bf16")
    # close, yet not equal: a collection written in one precision must not be searched with the other
    assert fp32.identity.model_id != bf16.identity.model_id
    assert _cos(fp32.embed(images), bf16.embed(images)).min() > 0.98


def test_bundled_weights_renamed_in_order_match_timm_layout() -> None:
    raw = torch.load(bundled_efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    target = build_timm_efficientnet_lite0(num_classes=1000).state_dict()
    renamed = rename_lukemelas_to_timm(raw, target)
    assert list(renamed) == list(target)
    assert sum(1 for k in renamed if not k.endswith("num_batches_tracked")) == 247
    bad = dict(raw)
    bad["_conv_head.weight"] = torch.zeros(1280, 320, 3, 3)
    with pytest.raises(ValueError, match="_conv_head.weight has shape"):
        rename_lukemelas_to_timm(bad, target)
    assert TIMM_EFFICIENTNET_LITE0 == "tf_efficientnet_lite0"


def test_embedding_is_the_pooled_feature_of_the_bundled_imagenet_classifier(
        images: list[np.ndarray]) -> None:
    clf = build_efficientnet_lite0_classifier()
    fp32 = EmbeddingModel.load(precision="fp32")
    x = to_batch_tensor(images, fp32.preprocessing)
    with torch.inference_mode():
        pooled = clf.forward_head(clf.forward_features(x), pre_logits=True)
        logits = clf(x)
    np.testing.assert_allclose(fp32.embed(images), pooled.numpy(), rtol=1e-4, atol=1e-4)
    assert logits.shape == (4, 1000)


# ---------------------------------------------------------------------------------------------- weights


def test_missing_weights_file_error_says_how_to_fix_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=r"weights file not found: .*nope\.pth.*--weights PATH.*"
                                           r"--backbone efficientnet_lite0"):
        EmbeddingModel.load("densenet121", weights=str(missing))


def test_backbone_without_offline_weights_asks_for_weights_or_random_init() -> None:
    with pytest.raises(WeightsError, match="no offline weights for densenet121: pass --weights PATH.*"
                                           "--random-init"):
        EmbeddingModel.load("densenet121")


def test_weights_for_another_architecture_are_rejected(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="weights do not fit squeezenet1_1: missing keys .*unexpected keys"):
        EmbeddingModel.load("squeezenet1_1", weights=str(path))


def test_unreadable_weights_file_raises_weights_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        EmbeddingModel.load("resnet18", weights=str(path))


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_torchvision_full_model_state_dict_loads_without_its_classifier(tmp_path: Path, wrap: str | None) -> None:
    import torchvision

    torch.manual_seed(123)
    full = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    sd = full.state_dict()
    torch.save({wrap: sd} if wrap else sd, path)

    model = EmbeddingModel.load("resnet18", weights=str(path), precision="fp32")
    assert model.identity.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    img = np.linspace(0, 1, 50 * 60, dtype=np.float32).reshape(50, 60)
    x = to_batch_tensor([img], model.preprocessing)
    full.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = full(x).numpy()
    np.testing.assert_allclose(model.embed([img]), expected, rtol=1e-4, atol=1e-5)


def test_lite0_weights_file_in_the_bundled_layout_equals_the_bundled_model(
        lite0: EmbeddingModel, images: list[np.ndarray]) -> None:
    from_file = EmbeddingModel.load("efficientnet_lite0", weights=str(bundled_efficientnet_lite0_path()))
    assert from_file.identity == lite0.identity
    np.testing.assert_array_equal(from_file.embed(images[:2]), lite0.embed(images[:2]))


def test_random_init_is_deterministic_across_loads(images: list[np.ndarray]) -> None:
    a = EmbeddingModel.load("resnet18", random_init=True, precision="fp32")
    torch.manual_seed(999)  # the caller's RNG state must not matter
    b = EmbeddingModel.load("resnet18", random_init=True, precision="fp32")
    assert a.identity.weights_sha256 == "random-init-seed0"
    assert a.identity == b.identity
    np.testing.assert_array_equal(a.embed(images[:2]), b.embed(images[:2]))


def test_weights_and_random_init_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="either"):
        EmbeddingModel.load("resnet18", weights=str(tmp_path / "x.pth"), random_init=True)


# ---------------------------------------------------------------------------------------------- identity


def test_model_id_changes_with_weights(lite0: EmbeddingModel) -> None:
    rand = EmbeddingModel.load("efficientnet_lite0", random_init=True)
    assert rand.identity.model_id != lite0.identity.model_id
    assert rand.identity.architecture == lite0.identity.architecture


def test_model_identity_json_round_trip_keeps_model_id(lite0: EmbeddingModel) -> None:
    ident = lite0.identity
    back = ModelIdentity.from_json(ident.to_json())
    assert back == ident and back.model_id == ident.model_id
    assert len(ident.model_id) == 16 and int(ident.model_id, 16) >= 0
    changed = ModelIdentity(ident.architecture, ident.weights_sha256, ident.dim,
                            {**ident.preprocessing, "input_size": 256})
    assert changed.model_id != ident.model_id


def test_preprocessing_squashes_whole_image_and_normalises() -> None:
    prep = Preprocessing(input_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    grey = np.ones((20, 10), dtype=np.float32)
    rgb = np.zeros((3, 5, 3), dtype=np.float32)
    batch = to_batch_tensor([grey, rgb], prep)
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[0], torch.ones(3, 8, 8))
    torch.testing.assert_close(batch[1], -torch.ones(3, 8, 8))
    with pytest.raises(ValueError, match="resize"):
        Preprocessing(input_size=8, mean=(0, 0, 0), std=(1, 1, 1), resize="center-crop")


def test_read_only_wire_pixels_are_embedded_without_a_warning_or_a_copy() -> None:
    # torch warns once per process, so a fresh one: the embedding actors get read-only float32 pixels
    # (np.frombuffer over the Arrow buffer) and used to warn "non-writable NumPy array" each.
    code = (
        "import warnings, numpy as np\n"
        "warnings.simplefilter('error')\n"
        "from cbmir.ingestion.wire import pack, unpack\n"
        "from cbmir.services.embedding.preprocess import Preprocessing, to_batch_tensor\n"
        "from cbmir.services.embedding.resize import presize, unit_pixels\n"
        "pixels = np.random.default_rng(0).random((224, 224), dtype=np.float32)\n"
        "shared = unpack(*pack(pixels))\n"
        "assert not shared.flags.writeable\n"
        "prep = Preprocessing(input_size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))\n"
        "assert to_batch_tensor([shared], prep).equal(to_batch_tensor([pixels.copy()], prep))\n"
        "assert unit_pixels(shared) is shared  # shared, not copied\n"
        "presize(shared, 224)\n"
        "print('clean')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "clean", result.stderr[-2000:]

