"""`cbmir train`: fine-tune a backbone with a classifier or metric-learning head on CPU into a cbmir checkpoint.

Data comes through ingestion's own listing and reader (list_source, read_item), so the pixels a model is
trained on are the pixels ingestion and the service embed. Images are decoded and resized once into memory as
uint8. The first `freeze_blocks` EfficientNet stages keep their ImageNet weights and their output is computed
once per augmented view and cached, so an epoch only runs (forward and backward) the later stages: on two
shared CPU cores this is what makes a brain-mri run fit in minutes, not hours.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cbmir.services.embedding.checkpoint import (
    build_net,
    checkpoint_dict,
    read_raw,
    save_checkpoint,
)
from cbmir.services.embedding.heads import CenterLoss, RetrievalNet, batch_hard_triplet_loss, is_blocked_efficientnet
from cbmir.services.embedding.model import build_backbone, get_backbone, resolve_precision
from cbmir.services.embedding.preprocess import Preprocessing, to_batch_tensor
from cbmir.services.ranking_metrics import seed003_average_precision

log = logging.getLogger(__name__)

LOSSES: tuple[str, ...] = ("ce", "metric")
SELECT_METRICS: tuple[str, ...] = ("val_map10", "val_acc")
# seed 001's weighting of the metric-learning objective
TRIPLET_WEIGHT, CLASSIFICATION_WEIGHT, CENTER_WEIGHT = 0.6, 0.3, 0.1
LAST, BEST, LOG = "last.pt", "best.pt", "train-log.json"


@dataclass
class TrainConfig:
    """One training run; saved in every checkpoint, and --resume refuses a different one."""

    source: str
    out_dir: str
    split: str | None = "train"  # the index split; the test split is never read
    val_split: str | None = None  # an existing split to validate on; default: carve val_fraction out of `split`
    val_fraction: float = 0.15
    label_column: str = "label"
    image_column: str = "image"
    manifest: str | None = None
    group_column: str | None = None  # e.g. patient_id: a group never straddles train/val (or folds)
    folds: int = 0  # > 0: hold fold `fold` of the groups out entirely (cross-fitting for leave-one-patient-out)
    fold: int = 0
    limit: int | None = None
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    random_init: bool = False
    input_size: int = 192
    loss: str = "ce"
    embedding_dim: int = 512  # projection size for --loss metric
    epochs: int = 12
    batch_size: int = 32
    lr_backbone: float = 1e-4
    lr_head: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    margin: float = 0.3
    patience: int = 4
    select: str = "val_map10"
    freeze_blocks: int = 6  # EfficientNet-Lite0 has 7 stages: only the last one (+ conv_head) trains
    views: int = 4  # cached views per training image: the clean one + (views - 1) augmented
    precision: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.select not in SELECT_METRICS:
            raise ValueError(f"unknown --select {self.select!r}; choose one of {', '.join(SELECT_METRICS)}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.folds and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold must be in [0, {self.folds}), got {self.fold}")
        for name in ("epochs", "batch_size", "input_size", "views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2 and self.loss == "metric":
            raise ValueError("--loss metric needs batches of at least 2 images")


@dataclass
class LabelledImages:
    """Pre-decoded images (uint8 N x 3 x S x S) with labels and what identifies them."""

    pixels: torch.Tensor
    labels: list[str]
    names: list[str]
    ids: list[str]
    groups: list[str]


@dataclass
class TrainResult:
    out_dir: Path
    best_path: Path
    epochs_run: int
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- data


def load_images(config: TrainConfig, split: str | None, progress: bool = False) -> LabelledImages:
    """List `split` of the source with ingestion's listing and decode it with ingestion's reader."""
    from cbmir.ingestion.batches import ID, PIXEL_DTYPE, PIXELS, REASON, SHAPE, STATUS, STATUS_OK, item_row
    from cbmir.ingestion.config import IngestConfig
    from cbmir.ingestion.reader import read_item
    from cbmir.ingestion.sources import list_source
    from cbmir.ingestion.wire import unpack

    listing = list_source(IngestConfig(source=config.source, manifest=config.manifest, split=split,
                                       image_column=config.image_column, label_column=config.label_column,
                                       limit=config.limit, report_path=None, progress=False))
    groups_by_name = _read_groups(config, listing) if config.group_column else {}
    size = config.input_size
    to_unit = Preprocessing(input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    pixels = torch.empty((len(listing.items), 3, size, size), dtype=torch.uint8)
    labels, names, ids, groups = [], [], [], []
    items = listing.items
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc=f"decode {split or 'all'}", unit="img", leave=False)
    for item in items:
        row = read_item(item_row(item, listing.dataset), None, input_size=size)
        if row[STATUS] != STATUS_OK:
            log.warning("skipping %s: %s", item.name, row[REASON])
            continue
        if not item.label:
            raise ValueError(f"{item.name} has no label (pass --label-column; MIAS density: --label-column tissue)")
        image = unpack(row[PIXELS], row[SHAPE], row[PIXEL_DTYPE]).copy()  # frombuffer is read-only
        # Already resized by the reader (the resize ingestion and the service do); kept as uint8 to hold a data
        # set in little memory.
        unit = to_batch_tensor([image], to_unit)[0]
        pixels[len(labels)] = unit.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        labels.append(item.label)
        names.append(item.name)
        ids.append(row[ID])
        groups.append(groups_by_name.get(item.name, item.name) if config.group_column else item.name)
    return LabelledImages(pixels[: len(labels)].clone(), labels, names, ids, groups)


def _read_groups(config: TrainConfig, listing: Any) -> dict[str, str]:
    """image name -> group (patient) id, read from the manifest (ingestion keeps patient ids out of the store)."""
    source = Path(config.source)
    manifest = Path(config.manifest) if config.manifest else (source if source.suffix.lower() == ".csv"
                                                               else source / "labels.csv")
    if listing.kind != "manifest" or not manifest.is_file():
        raise ValueError(f"--group-column {config.group_column} needs a CSV manifest; {config.source} has none")
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if config.group_column not in (reader.fieldnames or []):
            raise ValueError(f"manifest {manifest} has no column {config.group_column!r} "
                             f"(columns: {', '.join(reader.fieldnames or [])})")
        return {Path((row.get(config.image_column) or "").strip()).as_posix(): (row.get(config.group_column) or "")
                for row in reader}


def _group_label(labels: list[str], groups: list[str]) -> dict[str, str]:
    """Each group's majority label (MIAS: both breasts of a woman have the same density)."""
    counts: dict[str, dict[str, int]] = {}
    for label, group in zip(labels, groups, strict=True):
        counts.setdefault(group, {}).setdefault(label, 0)
        counts[group][label] += 1
    return {g: max(sorted(c), key=lambda k: c[k]) for g, c in counts.items()}


def assign_groups(labels: list[str], groups: list[str], parts: int, seed: int) -> dict[str, int]:
    """Group -> part in [0, parts), stratified by each group's majority label, seed-fixed: within every label
    the groups are shuffled and dealt round-robin, so every part gets each label in proportion."""
    by_label: dict[str, list[str]] = {}
    for group, label in sorted(_group_label(labels, groups).items()):
        by_label.setdefault(label, []).append(group)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, int] = {}
    offset = 0
    for label in sorted(by_label):
        members = by_label[label]
        order = torch.randperm(len(members), generator=g).tolist()
        for rank, index in enumerate(order):
            out[members[index]] = (rank + offset) % parts
        offset += len(members)
    return out


def carve_validation(labels: list[str], groups: list[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation images: per label, ceil(fraction * groups) of its groups, seed-fixed."""
    by_label: dict[str, list[str]] = {}
    for group, label in sorted(_group_label(labels, groups).items()):
        by_label.setdefault(label, []).append(group)
    g = torch.Generator().manual_seed(seed + 7919)
    val_groups: set[str] = set()
    for label in sorted(by_label):
        members = by_label[label]
        take = min(len(members) - 1, max(1, math.ceil(fraction * len(members))))
        order = torch.randperm(len(members), generator=g).tolist()
        val_groups.update(members[i] for i in order[:take])
    return np.array([gr in val_groups for gr in groups], dtype=bool)


def _subset(data: LabelledImages, mask: np.ndarray) -> LabelledImages:
    idx = np.flatnonzero(mask)
    return LabelledImages(data.pixels[torch.from_numpy(idx)], [data.labels[i] for i in idx],
                          [data.names[i] for i in idx], [data.ids[i] for i in idx], [data.groups[i] for i in idx])


def data_digest(train: LabelledImages, val: LabelledImages) -> str:
    """sha256 over the sorted (split, image id, label) rows: which pixels with which labels a model saw."""
    rows = sorted([f"train\t{i}\t{la}" for i, la in zip(train.ids, train.labels, strict=True)]
                  + [f"val\t{i}\t{la}" for i, la in zip(val.ids, val.labels, strict=True)])
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- augmentation


def augment(batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Float N x 3 x S x S in [0, 1] -> the same, lightly augmented: horizontal flip, small affine (rotation
    +-10 degrees, scale 0.9-1.1, shift +-5%), brightness +-0.1 and contrast x0.9-1.1. Mild on purpose: the
    anatomy and intensity of a medical image carry the label."""
    n = batch.shape[0]
    flip = torch.rand(n, generator=g) < 0.5
    batch = torch.where(flip.view(n, 1, 1, 1), torch.flip(batch, dims=(3,)), batch)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(10)
    scale = 1.0 + (torch.rand(n, generator=g) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.1  # grid units: 2 = the image width
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    batch = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brightness = (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * 0.1
    contrast = 1.0 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * 0.1
    mean = batch.mean(dim=(1, 2, 3), keepdim=True)
    return ((batch - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)


def _normalise(unit: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (unit - mean) / std


# ---------------------------------------------------------------------------------------------- metrics


def map_at_k(embeddings: torch.Tensor, labels: torch.Tensor, k: int = 10) -> float:
    """Leave-one-out mAP@k by cosine within one set, as `cbmir eval` reports it (seed 003: mean of P@1..P@k)."""
    n = embeddings.shape[0]
    if n < 2:
        return 0.0
    e = F.normalize(embeddings.float(), dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(float("-inf"))
    top = sim.topk(min(k, n - 1), dim=1).indices
    rel = (labels[top] == labels.unsqueeze(1)).numpy()
    return float(seed003_average_precision(rel, k_max=k).mean())


# ---------------------------------------------------------------------------------------------- training


class _Objective(torch.nn.Module):
    def __init__(self, config: TrainConfig, num_classes: int, dim: int) -> None:
        super().__init__()
        self.config = config
        self.center = CenterLoss(num_classes, dim) if config.loss == "metric" else None

    def forward(self, embedding: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        if self.center is None:
            return ce
        triplet = batch_hard_triplet_loss(embedding, y, self.config.margin)
        return TRIPLET_WEIGHT * triplet + CLASSIFICATION_WEIGHT * ce + CENTER_WEIGHT * self.center(embedding, y)


def _autocast(precision: str) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _build(config: TrainConfig, num_classes: int) -> RetrievalNet:
    spec = get_backbone(config.backbone)
    kind = "projection" if config.loss == "metric" else "backbone"
    net = build_net(spec, num_classes, kind, config.embedding_dim, config.freeze_blocks)
    if config.freeze_blocks and not is_blocked_efficientnet(net.backbone):
        raise ValueError(f"--freeze-blocks needs an EfficientNet backbone; pass --freeze-blocks 0 for "
                         f"{config.backbone}")
    backbone, _ = build_backbone(spec, config.weights, config.random_init)
    net.backbone.load_state_dict(backbone.state_dict())
    return net


@torch.inference_mode()
def _trunk_features(net: RetrievalNet, unit_batches: Callable[[], Any], prep: Preprocessing,
                    precision: str) -> torch.Tensor:
    """Run the frozen trunk over batches of [0, 1] images; bf16 storage halves memory at no cost to a bf16
    tail (fp32 runs keep fp32)."""
    net.eval()
    parts = []
    for unit in unit_batches():
        x = _normalise(unit, prep).contiguous(memory_format=torch.channels_last)
        with _autocast(precision):
            parts.append(net.trunk(x).to(torch.bfloat16 if precision == "bf16" else torch.float32))
    return torch.cat(parts)


def _batches(pixels: torch.Tensor, size: int) -> Callable[[], Any]:
    def gen() -> Any:
        for s in range(0, pixels.shape[0], size):
            yield pixels[s:s + size].float() / 255.0
    return gen


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Train, writing OUT/last.pt every epoch, OUT/best.pt when the selected validation metric improves, and
    OUT/train-log.json. stop_after: end after this many epochs of this call (what an interruption does)."""
    out = Path(config.out_dir)
    last_path, best_path, log_path = out / LAST, out / BEST, out / LOG
    saved: dict[str, Any] | None = None
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {last_path} does not exist (drop --resume to start)")
        saved = read_raw(last_path)
        _check_same_config(config, saved["training"]["config"], last_path)
    elif last_path.exists():
        raise FileExistsError(f"{out} already holds a run ({last_path}); pass --resume to continue it, or a new "
                              "--out")
    precision = resolve_precision(config.precision, "cpu")
    torch.manual_seed(config.seed)

    started = time.perf_counter()
    data = load_images(config, config.split, progress)
    heldout: list[str] = []
    if config.folds:
        part = assign_groups(data.labels, data.groups, config.folds, config.seed)
        keep = np.array([part[g] != config.fold for g in data.groups])
        heldout = sorted({g for g in data.groups if part[g] == config.fold})
        data = _subset(data, keep)
    if config.val_split is not None:
        train_set, val_set = data, load_images(config, config.val_split, progress)
    else:
        val_mask = carve_validation(data.labels, data.groups, config.val_fraction, config.seed)
        train_set, val_set = _subset(data, ~val_mask), _subset(data, val_mask)
    classes = sorted(set(train_set.labels))
    if len(classes) < 2:
        raise ValueError(f"training needs at least 2 labels, {config.source} split {config.split} has {classes}")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(val_set.labels) - set(classes))
    if unknown:
        raise ValueError(f"validation labels {unknown} do not occur in training")
    y_train = torch.tensor([index[c] for c in train_set.labels])
    y_val = torch.tensor([index[c] for c in val_set.labels])
    digest = data_digest(train_set, val_set)
    if saved is not None and saved["training"]["data"]["digest"] != digest:
        raise ValueError(f"the data changed since {last_path} was written (digest differs); start a new --out")
    decode_seconds = time.perf_counter() - started
    log.info("data: %d train, %d val images, classes %s, decoded in %.1f s", len(y_train), len(y_val), classes,
             decode_seconds)

    spec = get_backbone(config.backbone)
    prep = Preprocessing(input_size=config.input_size, mean=spec.mean, std=spec.std)
    net = _build(config, len(classes)).to(memory_format=torch.channels_last)
    objective = _Objective(config, len(classes), net.dim)
    for p in net.parameters():
        p.requires_grad_(False)
    backbone_params = net.trainable_backbone_parameters()
    head_params = net.head_parameters() + list(objective.parameters())
    for p in backbone_params + head_params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW([{"params": backbone_params, "lr": config.lr_backbone},
                                   {"params": head_params, "lr": config.lr_head}],
                                  weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(y_train) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))

    start_epoch, best_value, best_epoch, bad_epochs = 1, -math.inf, 0, 0
    history: list[dict[str, Any]] = []
    if saved is not None:
        net.load_state_dict(saved["state_dict"])
        state = saved["resume"]
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        best_value, best_epoch, bad_epochs = float(state["best_value"]), int(state["best_epoch"]), int(
            state["bad_epochs"])
        history = list(saved["training"]["history"])
        log.info("resuming %s after epoch %d", out, start_epoch - 1)

    # Frozen trunk: its outputs for every view, computed once. View 0 is the clean image; the others are
    # augmented with a generator of their own, so they are the same in every run (and after --resume).
    cache_started = time.perf_counter()
    cached = bool(config.freeze_blocks)
    views: list[torch.Tensor] = []
    if cached:
        for v in range(config.views):
            g = torch.Generator().manual_seed(config.seed * 1_000_003 + 104_729 * (v + 1))

            def view_batches(v: int = v, g: torch.Generator = g) -> Any:
                for unit in _batches(train_set.pixels, 64)():
                    yield unit if v == 0 else augment(unit, g)
            views.append(_trunk_features(net, view_batches, prep, precision))
        val_inputs = _trunk_features(net, _batches(val_set.pixels, 64), prep, precision)
    cache_seconds = time.perf_counter() - cache_started
    if cached:
        log.info("cached the frozen trunk's output for %d views in %.1f s", config.views, cache_seconds)

    def inputs(idx: torch.Tensor, g: torch.Generator, train_mode: bool) -> torch.Tensor:
        if cached:
            if not train_mode:
                return val_inputs[idx].float().contiguous(memory_format=torch.channels_last)
            view = torch.randint(config.views, (len(idx),), generator=g)
            stacked = torch.stack([views[int(v)][int(i)] for v, i in zip(view, idx, strict=True)])
            return stacked.float().contiguous(memory_format=torch.channels_last)
        source = train_set.pixels if train_mode else val_set.pixels
        unit = source[idx].float() / 255.0
        if train_mode:
            unit = augment(unit, g)
        return _normalise(unit, prep).contiguous(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return net.head(net.tail(x))

    for epoch in range(start_epoch, config.epochs + 1):
        if bad_epochs >= config.patience:
            break
        if stop_after is not None and epoch - start_epoch >= stop_after:
            break
        epoch_started = time.perf_counter()
        # Everything random in an epoch derives from (seed, epoch): a resumed run repeats it exactly.
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        torch.manual_seed(config.seed * 1_000_003 + epoch)
        net.train()
        if cached:
            net.backbone.conv_stem.eval()
            net.backbone.bn1.eval()
            for block in net.backbone.blocks[: config.freeze_blocks]:
                block.eval()
        order = torch.randperm(len(y_train), generator=g)
        seen, loss_sum, correct = 0, 0.0, 0
        batches = [order[s:s + config.batch_size] for s in range(0, len(order), config.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on a batch of one
            batches = batches[:-1]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False)
        for idx in batches:
            x, y = inputs(idx, g, True), y_train[idx]
            with _autocast(precision):
                embedding, logits = forward(x)
                loss = objective(embedding, logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        if bar is not None:
            bar.close()
        train_seconds = time.perf_counter() - epoch_started
        val = _validate(net, forward, inputs, y_val, objective, precision, config.batch_size * 2)
        record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                  **val, "lr_backbone": optimizer.param_groups[0]["lr"], "lr_head": optimizer.param_groups[1]["lr"],
                  "train_seconds": round(train_seconds, 2),
                  "epoch_seconds": round(time.perf_counter() - epoch_started, 2)}
        history.append(record)
        improved = record[config.select] > best_value + 1e-9
        if improved:
            best_value, best_epoch, bad_epochs = record[config.select], epoch, 0
        else:
            bad_epochs += 1
        training = _training_record(config, history, best_epoch, digest, train_set, val_set, heldout, classes,
                                    decode_seconds, cache_seconds)
        resume_state = {"epoch": epoch, "best_value": best_value, "best_epoch": best_epoch,
                        "bad_epochs": bad_epochs, "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "objective": objective.state_dict()}
        if improved:
            save_checkpoint(best_path, checkpoint_dict(net, config.backbone, config.input_size, classes, training))
        save_checkpoint(last_path, checkpoint_dict(net, config.backbone, config.input_size, classes, training,
                                                   resume=resume_state))
        _write_json(log_path, training)
        log.info("epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f mAP@10 %.3f | %.0f s%s", epoch,
                 record["train_loss"], record["train_acc"], record["val_loss"], record["val_acc"],
                 record["val_map10"], record["epoch_seconds"], " (best)" if improved else "")
    return TrainResult(out, best_path, len(history), best_epoch, history)


@torch.inference_mode()
def _validate(net: RetrievalNet, forward: Callable[..., Any], inputs: Callable[..., torch.Tensor],
              y_val: torch.Tensor, objective: _Objective, precision: str, batch_size: int) -> dict[str, float]:
    net.eval()
    embeddings, logits_all = [], []
    for s in range(0, len(y_val), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(y_val)))
        with _autocast(precision):
            embedding, logits = forward(inputs(idx, torch.Generator(), False))
        embeddings.append(embedding.float())
        logits_all.append(logits.float())
    embedding, logits = torch.cat(embeddings), torch.cat(logits_all)
    return {"val_loss": float(F.cross_entropy(logits, y_val)), "val_acc": float((logits.argmax(1) == y_val).float()
                                                                                .mean()),
            "val_map10": map_at_k(embedding, y_val, 10)}


def _training_record(config: TrainConfig, history: list[dict[str, Any]], best_epoch: int, digest: str,
                     train_set: LabelledImages, val_set: LabelledImages, heldout: list[str], classes: list[str],
                     decode_seconds: float, cache_seconds: float) -> dict[str, Any]:
    best = next((h for h in history if h["epoch"] == best_epoch), {})
    counts = {c: train_set.labels.count(c) for c in classes}
    return {
        "config": asdict(config), "seed": config.seed, "epochs": len(history), "best_epoch": best_epoch,
        "selected_by": config.select, "metrics": dict(best), "history": list(history),
        "data": {"source": str(config.source), "split": config.split, "digest": digest,
                 "train_images": len(train_set.labels), "val_images": len(val_set.labels),
                 "train_per_class": counts, "val_names": list(val_set.names), "heldout_groups": heldout},
        "timing": {"decode_seconds": round(decode_seconds, 2), "trunk_cache_seconds": round(cache_seconds, 2)},
        "versions": {"torch": str(torch.__version__), "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
    }


def _check_same_config(config: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    current = asdict(config)
    differ = [f"{f.name}: {saved.get(f.name)!r} -> {current[f.name]!r}" for f in fields(TrainConfig)
              if f.name != "out_dir" and saved.get(f.name) != current[f.name]]
    if differ:
        raise ValueError(f"--resume with other settings than {path} was trained with ({'; '.join(differ)}); pass "
                         "the same flags, or start a new --out")


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, path)
