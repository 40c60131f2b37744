"""Training's subcommand: `cbmir train`."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from cbmir.services.flags import add_logging_flags

ALL_FOLDS = "all"
FOLD_DIR = "f{fold}"  # `--fold all`: fold i's run in OUT/f<i>, the pattern `cbmir eval --cross-fit` takes


def _fold(value: str) -> int | str:
    if value == ALL_FOLDS:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fold takes a fold number or '{ALL_FOLDS}', not {value!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from cbmir.training.trainer import TrainConfig, train

    every_fold = args.fold == ALL_FOLDS
    if every_fold and args.folds < 2:
        raise SystemExit("cbmir train: --fold all needs --folds K (K >= 2)")
    config = TrainConfig(
        source=args.source, out_dir=args.out, split=args.split or None, val_split=args.val_split,
        val_fraction=args.val_fraction, label_column=args.label_column, image_column=args.image_column,
        manifest=args.manifest, group_column=args.group_column, folds=args.folds, fold=0 if every_fold else args.fold,
        limit=args.limit,
        backbone=args.backbone, weights=args.weights, random_init=args.random_init, input_size=args.input_size,
        loss=args.loss, embedding_dim=args.embedding_dim, epochs=args.epochs, batch_size=args.batch_size,
        lr_backbone=args.lr_backbone, lr_head=args.lr_head, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, margin=args.margin, patience=args.patience, select=args.select,
        freeze_blocks=args.freeze_blocks, views=args.views, precision=args.precision, seed=args.seed,
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not every_fold:
        _train_one(train, config, args.resume, not args.no_progress)
        return 0
    # Cross-fitting in one command: fold i's model never sees fold i's patients; each fold is its own run, so
    # --resume continues the fold that was stopped and leaves the finished ones as they are.
    for fold in range(args.folds):
        out = Path(args.out) / FOLD_DIR.format(fold=fold)
        print(f"fold {fold} of {args.folds}: {out}")
        resume = args.resume and (out / "last.pt").is_file()
        _train_one(train, replace(config, out_dir=str(out), fold=fold), resume, not args.no_progress)
    pattern = str(Path(args.out) / FOLD_DIR / "best.pt")
    group = f" --group-column {args.group_column}" if args.group_column else ""
    print(f"score the {args.folds} folds: cbmir eval {args.source} --protocol leave-one-patient-out "
          f"--label-column {args.label_column}{group} --cross-fit '{pattern}'")
    return 0


def _train_one(train: Any, config: Any, resume: bool, progress: bool) -> None:
    result = train(config, resume=resume, progress=progress)
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    print(f"trained {result.epochs_run} epochs; best epoch {result.best_epoch}: val acc {best.get('val_acc', 0):.4f}, "
          f"val mAP@10 {best.get('val_map10', 0):.4f}")
    print(f"checkpoint: {result.best_path}  (use: --weights {result.best_path} --backbone {config.backbone})")


def add_train_command(sub: Any) -> None:
    """Register `cbmir train` on the `cbmir` subparsers."""
    train_p = sub.add_parser(
        "train", help="fine-tune a classifier / metric-learning head into a checkpoint ingest, serve, eval load",
        description="Train on the index split of SOURCE (validation carved from it, stratified and seed-fixed; "
                    "the test split is never read). Writes OUT/best.pt (load with --weights OUT/best.pt), OUT/last.pt "
                    "(every epoch; --resume continues from it) and OUT/train-log.json. The first --freeze-blocks "
                    "EfficientNet stages keep their ImageNet weights and are computed once per cached view, so an "
                    "epoch only trains the last stage(s): what makes CPU training fit.")
    train_p.add_argument("source", help="a directory with labels.csv, a CSV manifest, or a MedMNIST .npz")
    train_p.add_argument("--out", required=True, help="run directory, e.g. runs/brain-ce")
    train_p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    train_p.add_argument("--backbone", default="efficientnet_lite0",
                         help="efficientnet_lite0 (ImageNet weights offline); others need --weights or --random-init "
                              "and --freeze-blocks 0 (default %(default)s)")
    train_p.add_argument("--weights", default=None, metavar="PATH", help="backbone state_dict to start from")
    train_p.add_argument("--random-init", action="store_true", help="start from a random backbone (plumbing only)")
    train_p.add_argument("--loss", default="ce", choices=["ce", "metric"],
                         help="ce: cross-entropy, embedding = pooled features; metric: 0.6 batch-hard triplet + 0.3 "
                              "cross-entropy + 0.1 center loss into a projection (default %(default)s)")
    train_p.add_argument("--embedding-dim", type=int, default=512, help="projection dim for --loss metric")
    train_p.add_argument("--input-size", type=int, default=192,
                         help="square input side; 192 costs ~0.73x the compute of 224 (default %(default)s)")
    train_p.add_argument("--freeze-blocks", type=int, default=6,
                         help="EfficientNet stages kept frozen and cached (0-7; 0 fine-tunes everything, ~6x slower "
                              "per epoch on CPU) (default %(default)s)")
    train_p.add_argument("--views", type=int, default=4,
                         help="cached views per image: the clean one + augmented ones (default %(default)s)")
    train_p.add_argument("--epochs", type=int, default=12, help="most epochs (default %(default)s)")
    train_p.add_argument("--patience", type=int, default=4,
                         help="early stop after this many epochs without a better --select (default %(default)s)")
    train_p.add_argument("--select", default="val_map10", choices=["val_map10", "val_acc"],
                         help="validation figure best.pt is chosen by (default %(default)s)")
    train_p.add_argument("--batch-size", type=int, default=32, help="(default %(default)s)")
    train_p.add_argument("--lr-backbone", type=float, default=1e-4, help="pretrained layers (default %(default)s)")
    train_p.add_argument("--lr-head", type=float, default=1e-3, help="new layers (default %(default)s)")
    train_p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW (default %(default)s)")
    train_p.add_argument("--label-smoothing", type=float, default=0.1, help="(default %(default)s)")
    train_p.add_argument("--margin", type=float, default=0.3, help="triplet margin (default %(default)s)")
    train_p.add_argument("--split", default="train",
                         help="index split to train on; '' = every row (default %(default)s)")
    train_p.add_argument("--val-split", default=None, help="validate on this existing split instead of carving one")
    train_p.add_argument("--val-fraction", type=float, default=0.15,
                         help="carved validation share (default %(default)s)")
    train_p.add_argument("--group-column", default=None,
                         help="manifest column grouping images (MIAS: patient_id): a group never straddles train/val")
    train_p.add_argument("--folds", type=int, default=0,
                         help="hold one of this many label-stratified group folds out of training entirely "
                              "(cross-fitting for leave-one-patient-out evaluation)")
    train_p.add_argument("--fold", type=_fold, default=0,
                         help=f"which fold --folds holds out, or '{ALL_FOLDS}': every fold in turn, into "
                              f"OUT/f0 .. OUT/f<K-1>, then prints the `cbmir eval --cross-fit` that scores them "
                              "(default %(default)s)")
    train_p.add_argument("--manifest", default=None, help="CSV manifest (default: SOURCE/labels.csv if present)")
    train_p.add_argument("--image-column", default="image", help="manifest column with the image path")
    train_p.add_argument("--label-column", default="label", help="manifest column with the label (MIAS: tissue)")
    train_p.add_argument("--limit", type=int, default=None, help="use at most this many listed images")
    train_p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                         help="auto = bf16 autocast where the CPU has AMX/AVX512-BF16 (default auto)")
    train_p.add_argument("--seed", type=int, default=0, help="fixes split, order, augmentation, init (default 0)")
    train_p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    train_p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_logging_flags(train_p)
    train_p.set_defaults(func=cmd_train)
