"""EmbeddingModel: a backbone with its weights, identity and precision; decoded pixels -> vectors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cbmir.services.embedding.backbones import (
    BACKBONES,
    BackboneSpec,
    build_timm_efficientnet_lite0,
    bundled_efficientnet_lite0_path,
    bundled_efficientnet_lite0_state_dict,
    is_lukemelas_efficientnet_state_dict,
    rename_lukemelas_to_timm,
    sha256_of_file,
)
from cbmir.services.embedding.ensemble import (
    ConcatEnsemble,
    check_compatible,
    ensemble_architecture,
    ensemble_digest,
    ensemble_members,
)
from cbmir.services.embedding.fusion import fuse_for_inference
from cbmir.services.embedding.preprocess import Preprocessing, to_batch_tensor

log = logging.getLogger(__name__)

# Marks a test-time-augmented model in its identity's architecture (vectors differ from the plain model's).
TTA_SUFFIX = "+tta-hflip"

RANDOM_INIT_DIGEST = "random-init-seed0"
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
DEFAULT_BATCH_SIZE = 64


class WeightsError(ValueError):
    """Weights are missing, unreadable or do not fit the backbone; the message says how to fix it."""


@dataclass(frozen=True)
class ModelIdentity:
    """What makes two models produce comparable vectors; stored beside every collection."""

    architecture: str
    weights_sha256: str
    dim: int
    preprocessing: dict[str, Any]
    # bf16/fp16 autocast moves vectors measurably (efficientnet_lite0: cosine to fp32 down to 0.988), so the
    # precision is part of what must match between the vectors stored and the vectors a query is embedded with.
    precision: str = "fp32"

    def _canonical(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def model_id(self) -> str:
        """First 16 hex chars of sha256 over the canonical JSON of the fields."""
        return hashlib.sha256(self._canonical().encode("utf-8")).hexdigest()[:16]

    def to_json(self) -> str:
        return self._canonical()

    @classmethod
    def from_json(cls, s: str) -> ModelIdentity:
        d = json.loads(s)
        return cls(architecture=str(d["architecture"]), weights_sha256=str(d["weights_sha256"]),
                   dim=int(d["dim"]), preprocessing=dict(d["preprocessing"]),
                   precision=str(d.get("precision", "fp32")))


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}") from None


# ---------------------------------------------------------------------------------------------- weights


def _unwrap_checkpoint(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the usual {"state_dict": ...} / {"model": ...} training checkpoints."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} holds no state dict of tensors (expected a "
                           "torchvision-style state_dict, or a dict with key 'state_dict' or 'model')")
    sd = {str(k): v for k, v in obj.items()}
    # DataParallel / DDP checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _read_weights_file(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {path} (pass --weights PATH to an existing file, or use "
                           "--backbone efficientnet_lite0, which ships ImageNet weights)")
    try:
        # weights_only: a weights file is data, never code to unpickle and run.
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on junk (UnpicklingError, IndexError, ...)
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {exc} (expected a "
                           "PyTorch state_dict saved with torch.save)") from exc
    return _unwrap_checkpoint(obj, path)


def _load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], spec: BackboneSpec) -> None:
    feature_sd = OrderedDict((k, v) for k, v in state_dict.items()
                             if not k.startswith(spec.classifier_prefixes))
    expected = module.state_dict()
    missing = [k for k in expected if k not in feature_sd]
    unexpected = [k for k in feature_sd if k not in expected]
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in feature_sd.items()
                  if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            if not keys:
                return "none"
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        raise WeightsError(f"weights do not fit {spec.name}: missing keys {show(missing)}; unexpected keys "
                           f"{show(unexpected)}; shape mismatches {show(mismatched)} (are they for another "
                           f"architecture? registered backbones: {', '.join(list_backbones())})")
    module.load_state_dict(feature_sd, strict=True)


def build_backbone(spec: BackboneSpec, weights: str | None, random_init: bool) -> tuple[nn.Module, str]:
    """-> (module with weights loaded, weights digest for the identity)."""
    if weights is not None and random_init:
        raise WeightsError("pass either weights=PATH or random_init=True, not both")
    # Seed inside a forked RNG so every process (ingestion actors, the service) builds the same random model
    # and the caller's global RNG state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = spec.build()
    if random_init:
        return module, RANDOM_INIT_DIGEST
    if weights is not None:
        sd = _read_weights_file(weights)
        if spec.name == "efficientnet_lite0" and is_lukemelas_efficientnet_state_dict(sd):
            # Same layout as the bundled file (efficientnet_pytorch keys): rename onto timm's keys.
            template = build_timm_efficientnet_lite0(num_classes=1000).state_dict()
            try:
                sd = dict(rename_lukemelas_to_timm(sd, template))
            except ValueError as exc:
                raise WeightsError(f"weights do not fit efficientnet_lite0: {exc}") from exc
        _load_into(module, sd, spec)
        return module, sha256_of_file(weights)
    if spec.bundled_weights is None:
        raise WeightsError(f"no offline weights for {spec.name}: pass --weights PATH (a torchvision "
                           f"state_dict) or --random-init, or use --backbone efficientnet_lite0")
    _load_into(module, bundled_efficientnet_lite0_state_dict(), spec)
    return module, sha256_of_file(bundled_efficientnet_lite0_path())


def _read_trained_checkpoint(weights: str) -> Any:
    """The parsed `cbmir train` checkpoint at `weights`, or None for any other file (a plain state dict, or a
    file the ordinary weights path will report on)."""
    from cbmir.services.embedding.checkpoint import CheckpointError, is_checkpoint_object, parse_checkpoint, read_raw

    if not Path(weights).is_file():
        return None
    try:
        obj = read_raw(weights)
    except Exception:  # unreadable: let _read_weights_file raise its explanatory WeightsError
        return None
    if not is_checkpoint_object(obj):
        return None
    try:
        return parse_checkpoint(obj, weights)
    except CheckpointError as exc:
        raise WeightsError(str(exc)) from exc


def _trained_net(ckpt: Any, spec: BackboneSpec) -> nn.Module:
    """The RetrievalNet of a parsed checkpoint, refused unless it was trained on `spec`'s backbone."""
    from cbmir.services.embedding.checkpoint import CheckpointError, net_from_checkpoint

    if ckpt.backbone != spec.name:
        raise WeightsError(f"checkpoint {ckpt.path} was trained on backbone {ckpt.backbone}, not {spec.name}: "
                           f"pass --backbone {ckpt.backbone} (backbone={ckpt.backbone!r}) with it")
    try:
        return net_from_checkpoint(ckpt, spec)
    except CheckpointError as exc:
        raise WeightsError(str(exc)) from exc


# ---------------------------------------------------------------------------------------------- precision


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels (AVX-512 BF16 / AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def cpu_supports_fp16() -> bool:
    """True when oneDNN has native fp16 kernels (AVX512-FP16 / AMX-FP16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except Exception:
        return False


def resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    dev = torch.device(device).type
    if precision == "auto":
        if dev == "cuda":
            return "fp16"
        return "bf16" if dev == "cpu" and cpu_supports_bf16() else "fp32"
    if precision == "fp16" and dev == "cpu" and not cpu_supports_fp16():
        # CPU float16 autocast runs everywhere in this torch, but without native kernels it is emulated and slow.
        log.warning("precision fp16 on this CPU has no native fp16 kernels (AVX512-FP16 / AMX-FP16): expect it "
                    "to be slow; fp32 queries are within the measured tolerance of fp16 vectors (docs/scaling.md)")
    return precision


# ---------------------------------------------------------------------------------------------- model


@dataclass
class _InFlight:
    """A batch's results on their way to the host; `result()` waits for that copy only."""

    embedding: torch.Tensor
    probabilities: torch.Tensor | None
    done: Any = None  # a CUDA event recorded after the copies; None on CPU

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.done is not None:
            self.done.synchronize()
        return self.embedding, self.probabilities


class DeviceTransfer:
    """Moves batches between the host and the model's device. On CUDA: pinned host memory and non-blocking copies,
    the copies in on their own stream so they overlap the forward pass of the batch before; on CPU: nothing."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(device) if self.cuda else None

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return batch
        # A DMA from pageable memory would block the host: page-lock the batch first.
        host = batch if batch.is_pinned() else batch.pin_memory()
        with torch.cuda.stream(self._copy_stream):
            return host.to(self.device, non_blocking=True)

    def ready(self, staged: torch.Tensor) -> torch.Tensor:
        """The staged batch, usable on the compute stream once its copy has landed."""
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self._copy_stream)
            staged.record_stream(compute)  # allocated on the copy stream, freed only after compute used it
        return staged

    def to_host(self, embedding: torch.Tensor, probabilities: torch.Tensor | None) -> _InFlight:
        if not self.cuda:
            return _InFlight(embedding, probabilities)
        def copy(t: torch.Tensor) -> torch.Tensor:
            out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            return out.copy_(t, non_blocking=True)
        done = torch.cuda.Event()
        host = _InFlight(copy(embedding), copy(probabilities) if probabilities is not None else None, done)
        done.record(torch.cuda.current_stream(self.device))
        return host


class EmbeddingModel:
    """One backbone ready to embed: eval mode, fixed preprocessing, identity for the store."""

    identity: ModelIdentity
    dim: int
    preprocessing: Preprocessing
    device: str
    precision: str

    def __init__(self, module: nn.Module, spec: BackboneSpec, weights_sha256: str, device: str,
                 precision: str, batch_size: int = DEFAULT_BATCH_SIZE, *, classes: list[str] | None = None,
                 architecture: str | None = None, dim: int | None = None, input_size: int | None = None,
                 tta: bool = False) -> None:
        # classes is None for a plain backbone; a trained checkpoint's module returns (embedding, logits).
        self.spec = spec
        self.classes = list(classes) if classes is not None else None
        self.tta = tta
        self.unit_norm = False  # True when embeddings are L2-normalised (a metric-learning projection head)
        self.dim = dim if dim is not None else spec.dim
        self.preprocessing = Preprocessing(input_size=input_size or spec.input_size, mean=spec.mean, std=spec.std)
        # Test-time augmentation changes the vectors, so it is part of the architecture in the identity.
        arch = (architecture or spec.name) + (TTA_SUFFIX if tta else "")
        self.identity = ModelIdentity(architecture=arch, weights_sha256=weights_sha256, dim=self.dim,
                                      preprocessing=self.preprocessing.to_dict(), precision=precision)
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self._torch_device = torch.device(device)
        module = module.eval().to(self._torch_device)
        for p in module.parameters():
            p.requires_grad_(False)
        if precision == "fp32":
            # Batch norms folded into their convolutions: the same outputs (checked on a probe batch), EfficientNet-
            # Lite0 1.4-1.9x faster on this CPU. Not under bf16/fp16, where folding would move the rounding and so
            # the vectors of collections already written at that precision.
            module = fuse_for_inference(module, self.preprocessing.input_size)
        # NHWC on both devices: oneDNN convolutions run fastest on it, and so do cuDNN's fp16/bf16 tensor-core
        # kernels; converting the weights once here avoids a reorder on every batch.
        module = module.to(memory_format=torch.channels_last)
        if self._torch_device.type == "cuda":
            # Every batch has the same input size, so cuDNN's autotuner picks the fastest kernels once.
            torch.backends.cudnn.benchmark = True
        self.module = module

    @classmethod
    def load(cls, backbone: str = "efficientnet_lite0", weights: str | None = None, random_init: bool = False,
             device: str = "cpu", precision: str = "auto", num_threads: int | None = None,
             tta: bool = False, batch_size: int = DEFAULT_BATCH_SIZE) -> EmbeddingModel:
        """A backbone with bundled or file weights, or a `cbmir train` checkpoint (weights=PATH to it).

        A checkpoint carries its backbone; `backbone` must name the same one (WeightsError otherwise), so a
        command line never silently serves a model other than the one it names. tta=True averages each
        embedding (and class probabilities) over the image and its horizontal mirror. batch_size: images per
        forward pass.
        """
        spec = get_backbone(backbone)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        resolved = resolve_precision(precision, device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        members = ensemble_members(weights) if not random_init else []
        trained = None if members or random_init or weights is None else _read_trained_checkpoint(weights)
        if members:
            model = cls._from_ensemble(members, spec, device, resolved, tta)
        elif trained is not None:
            model = cls._from_checkpoint(trained, spec, device, resolved, tta)
        else:
            module, digest = build_backbone(spec, weights, random_init)
            model = cls(module, spec, digest, device, resolved, tta=tta)
        # One forward pass per batch the caller hands over (ingestion: --batch-size), not a fixed inner size.
        model.batch_size = batch_size
        log.info("loaded %s weights=%s precision=%s device=%s model_id=%s", model.identity.architecture,
                 model.identity.weights_sha256[:12], resolved, device, model.identity.model_id)
        return model

    @property
    def model_id(self) -> str:
        return self.identity.model_id

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self._torch_device.type, dtype=torch.bfloat16)
        if self.precision == "fp16":
            return torch.autocast(device_type=self._torch_device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def _chunks(self, images: Sequence[np.ndarray]) -> Iterator[Sequence[np.ndarray]]:
        for start in range(0, len(images), self.batch_size):
            yield images[start:start + self.batch_size]

    @classmethod
    def _from_checkpoint(cls, ckpt: Any, spec: BackboneSpec, device: str, precision: str,
                         tta: bool) -> EmbeddingModel:
        model = cls(_trained_net(ckpt, spec), spec, sha256_of_file(ckpt.path), device, precision, classes=ckpt.classes,
                    architecture=ckpt.architecture, dim=ckpt.dim, input_size=ckpt.input_size, tta=tta)
        model.unit_norm = ckpt.kind == "projection"
        return model

    @classmethod
    def _from_ensemble(cls, paths: list[str], spec: BackboneSpec, device: str, precision: str,
                       tta: bool) -> EmbeddingModel:
        checkpoints = []
        for path in paths:
            if not Path(path).is_file():
                raise WeightsError(f"ensemble member not found: {path} (join existing `cbmir train` checkpoints "
                                   "with '+', e.g. runs/brain-ce/best.pt+runs/brain-metric/best.pt)")
            ckpt = _read_trained_checkpoint(path)
            if ckpt is None:
                raise WeightsError(f"ensemble member {path} is not a `cbmir train` checkpoint (an ensemble joins "
                                   "trained models: their classifier heads are averaged)")
            checkpoints.append(ckpt)
        try:
            check_compatible(checkpoints)
        except ValueError as exc:
            raise WeightsError(str(exc)) from exc
        nets = [_trained_net(ckpt, spec) for ckpt in checkpoints]
        model = cls(ConcatEnsemble(nets), spec, ensemble_digest([sha256_of_file(c.path) for c in checkpoints]),
                    device, precision, classes=checkpoints[0].classes,
                    architecture=ensemble_architecture([c.architecture for c in checkpoints]),
                    dim=sum(c.dim for c in checkpoints), input_size=checkpoints[0].input_size, tta=tta)
        model.unit_norm = True
        return model

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.module(x)
        if self.classes is None:
            return out, None
        embedding, logits = out
        return embedding, logits

    def _device_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch already on the device -> (float embeddings, softmax probabilities or None), still there."""
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            embedding, logits = self._forward(x)
            if self.tta:
                flipped_embedding, flipped_logits = self._forward(torch.flip(x, dims=(3,)))
                embedding = (embedding.float() + flipped_embedding.float()) / 2
                if self.unit_norm:
                    embedding = torch.nn.functional.normalize(embedding, dim=1)
                if logits is not None and flipped_logits is not None:
                    probs = (torch.softmax(logits.float(), 1) + torch.softmax(flipped_logits.float(), 1)) / 2
                    return embedding.float(), probs
        probs = torch.softmax(logits.float(), 1) if logits is not None else None
        return embedding.float(), probs

    def embed_and_predict_batches(self, batches: Iterable[torch.Tensor]
                                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Preprocessed N x 3 x S x S batches -> (embeddings, probabilities or None) on the CPU, in order, one
        forward pass per batch.

        Double-buffered: batch i+1 is handed to the device before batch i's forward pass is queued, and batch i-1's
        results are waited for only after that. On CUDA the copies in are non-blocking from pinned memory on a side
        stream and the copies out non-blocking into pinned memory, so transfers overlap the GPU's work and the host
        prepares the next batch meanwhile; on CPU every step is immediate."""
        transfer = DeviceTransfer(self._torch_device)
        staged: torch.Tensor | None = None
        pending: _InFlight | None = None
        for batch in batches:
            incoming = transfer.to_device(batch)
            if staged is not None:
                launched = transfer.to_host(*self._device_forward(transfer.ready(staged)))
                if pending is not None:
                    yield pending.result()
                pending = launched
            staged = incoming
        if staged is not None:
            launched = transfer.to_host(*self._device_forward(transfer.ready(staged)))
            if pending is not None:
                yield pending.result()
            pending = launched
        if pending is not None:
            yield pending.result()

    def feature_maps(self, batch: torch.Tensor) -> torch.Tensor:
        """N x C x H x W maps before global pooling, at this model's precision, as float32 on the host: what a
        pooling or multi-scale study starts from (bench/quality/features.py). timm backbones without a trained
        head have them; any input size a fully convolutional backbone takes."""
        forward_features = getattr(self.module, "forward_features", None)
        if forward_features is None or self.classes is not None or self.tta:
            raise ValueError(f"{self.identity.architecture}: no feature maps before pooling (a plain timm backbone, "
                             "no trained head, no TTA, has them)")
        x = batch.to(self._torch_device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            return forward_features(x).float().cpu()

    def embed_and_predict_tensor(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Preprocessed batch -> (N x dim embeddings, N x C softmax probabilities or None), one forward pass."""
        return next(self.embed_and_predict_batches([batch]))

    def embed_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """Already preprocessed N x 3 x S x S batch -> N x dim float32 tensor on the CPU."""
        return self.embed_and_predict_tensor(batch)[0]

    def _batches(self, images: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        """Preprocessed batches of `batch_size` images, made lazily: the host builds batch i+1 while the device
        runs batch i."""
        for chunk in self._chunks(images):
            yield to_batch_tensor(chunk, self.preprocessing)

    def _require_classes(self) -> list[str]:
        if self.classes is None:
            raise ValueError(f"model {self.identity.architecture} has no classifier head: train one with "
                             "`cbmir train` and load its checkpoint (--weights runs/NAME/best.pt)")
        return self.classes

    def embed_and_predict(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Decoded images -> ((N, dim) embeddings as `embed` gives them, (N, C) class probabilities in the order
        of `classes`), from one forward pass per batch."""
        classes = self._require_classes()
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros((0, len(classes)), dtype=np.float32)
        embeddings, probabilities = [], []
        for embedding, probs in self.embed_and_predict_batches(self._batches(images)):
            assert probs is not None
            embeddings.append(embedding.numpy())
            probabilities.append(probs.numpy())
        return (np.ascontiguousarray(np.concatenate(embeddings), dtype=np.float32),
                np.ascontiguousarray(np.concatenate(probabilities), dtype=np.float32))

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded images -> (N, C) softmax probabilities in the order of `classes`."""
        return self.embed_and_predict(images)[1]

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded images (float HxW / HxWx3 in [0, 1]) -> (N, dim) float32, not normalised."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [embedding.numpy() for embedding, _ in self.embed_and_predict_batches(self._batches(images))]
        out = np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)
        if out.shape[1] != self.dim:
            raise RuntimeError(
                f"{self.spec.name} produced {out.shape[1]}-d features, registry says {self.dim}")
        return out
