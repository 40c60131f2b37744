"""The streamed listing: chunks add up to the full listing in its order, blocks are cut the same way every run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import ray

import cbmir.ingestion.reader as reader
from cbmir.ingestion.batches import ITEM_SCHEMA, item_row, items_table
from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.pipeline import MAX_LISTING_BLOCKS, listing_block_rows, listing_dataset
from cbmir.ingestion.reader import sorted_id_array
from cbmir.ingestion.samples import BREASTMNIST_SUBSET
from cbmir.ingestion.sources import SourceItem, iter_source_chunks, list_source, scan_source


def _held_list_directory_listing(root: Path) -> list[tuple[str, str, str]]:
    """The directory listing as it was before streaming (every path held, then the class folder found)."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".png"))
    relative = [f.relative_to(root) for f in files]
    common, first = 0, relative[0].parts[:-1]
    while common < len(first) and all(len(p.parts) > common + 1 and p.parts[common] == first[common]
                                      for p in relative):
        common += 1
    depth = common if all(len(p.parts) == common + 2 for p in relative) else None
    return [(str(f.resolve()), rel.as_posix(), rel.parts[depth] if depth is not None else "")
            for f, rel in zip(files, relative, strict=True)]


def _tree(root: Path, png: Path, paths: list[str]) -> Path:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, root / path)
    return root


def _sources(breastmnist_png_archive: Path, tmp_path: Path) -> dict[str, IngestConfig]:
    """One config per kind of source: a folder-per-class tree, a labels.csv manifest, a MedMNIST npz."""
    pngs = sorted((breastmnist_png_archive / "images").glob("*.png"))[:23]
    for i, png in enumerate(pngs):
        folder = tmp_path / "tree" / "images" / ["benign", "malignant", "normal"][i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, folder / png.name)
    return {"directory": IngestConfig(source=str(tmp_path / "tree")),
            "manifest": IngestConfig(source=str(breastmnist_png_archive), split="train"),
            "npz": IngestConfig(source=str(BREASTMNIST_SUBSET))}


@pytest.mark.parametrize("kind", ["directory", "manifest", "npz"])
@pytest.mark.parametrize("chunk_size", [1, 7, 10_000])
def test_chunks_add_up_to_the_full_listing_in_its_order(kind: str, chunk_size: int, tmp_path: Path,
                                                        breastmnist_png_archive: Path) -> None:
    config = _sources(breastmnist_png_archive, tmp_path)[kind]
    full = list_source(config)

    chunks = list(iter_source_chunks(config, chunk_size))

    assert [item for chunk in chunks for item in chunk] == full.items
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
    assert 1 <= len(chunks[-1]) <= chunk_size
    scan = scan_source(config)
    assert (scan.kind, scan.root, scan.dataset, scan.count) == (kind, full.root, full.dataset, len(full.items))


def test_chunk_boundaries_are_the_same_on_every_pass(tmp_path: Path, breastmnist_png_archive: Path) -> None:
    scan = scan_source(_sources(breastmnist_png_archive, tmp_path)["directory"])

    first = [[item.name for item in chunk] for chunk in scan.iter_chunks(5)]
    again = [[item.name for item in chunk] for chunk in scan.iter_chunks(5)]

    assert first == again
    assert [len(chunk) for chunk in first] == [5, 5, 5, 5, 3]


@pytest.mark.parametrize("paths", [
    ["images/benign/a.png", "images/benign/b.png", "images/malignant/c.png"],  # folder-per-class under images/
    ["benign/a.png", "malignant/b.png"],  # folder-per-class at the root
    ["patient1/study1/a.png", "b.png"],  # mixed depths: no labels
    ["p1/s1/a.png", "p1/s2/b.png", "p2/s1/c.png"],  # patient/study tree: no labels
    ["images/a.png", "images/b.png"],  # one folder: no labels
    ["x/y/benign/a.png", "x/y/malignant/b.png", "x/y/malignant/c.png"],  # two shared leading folders
])
def test_streamed_directory_labels_match_the_held_list_listing(paths: list[str], tmp_path: Path,
                                                               breastmnist_png_archive: Path) -> None:
    png = next((breastmnist_png_archive / "images").glob("*.png"))
    root = _tree(tmp_path / "tree", png, paths)

    listing = list_source(IngestConfig(source=str(root)))

    assert [(i.uri, i.name, i.label) for i in listing.items] == _held_list_directory_listing(root)


def test_scan_counts_the_split_and_the_limit_without_listing(breastmnist_png_archive: Path) -> None:
    limited = scan_source(IngestConfig(source=str(breastmnist_png_archive), split="test", limit=5))
    nothing = scan_source(IngestConfig(source=str(BREASTMNIST_SUBSET), limit=0))

    assert limited.count == 5
    assert [item.split for item in limited.iter_items()] == ["test"] * 5
    assert scan_source(IngestConfig(source=str(BREASTMNIST_SUBSET), split="test")).count == 40
    assert nothing.count == 0 and list(nothing.iter_chunks(4)) == []


def test_a_chunk_of_items_becomes_the_rows_item_row_gives(breastmnist_png_archive: Path) -> None:
    items = list_source(IngestConfig(source=str(breastmnist_png_archive), limit=4)).items
    items.append(SourceItem(uri="/x.npz", label="1", metadata={"dataset": "other", "view": "MLO"}, split="test",
                            array_index=3, name="x.npz#test/3"))

    table = items_table(items, "breast")

    assert table.schema == ITEM_SCHEMA
    assert table.to_pylist() == [item_row(item, "breast") for item in items]


def test_stored_ids_array_is_built_in_steps_sorted_and_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "ID_ARRAY_STEP", 3)
    ids = (f"{i % 7:064x}" for i in range(20))  # a generator: never a set of all ids

    array = sorted_id_array(ids)

    assert array.tolist() == [f"{i:064x}".encode() for i in range(7)]
    assert sorted_id_array(()).size == 0


@pytest.mark.parametrize(("count", "batch_size", "chunk", "rows"), [
    (60, 16, 10_000, 16),  # a small run: one batch per block, as many read tasks as batches
    (60, 16, 7, 7),  # the chunk caps a block
    (5_000, 32, 10_000, 32),
    (100_000, 32, 10_000, 416),  # whole batches, at most ~MAX_LISTING_BLOCKS blocks
    (10**7, 32, 10_000, 10_000),  # past 256 chunks: blocks of one chunk
])
def test_listing_blocks_are_whole_batches_bounded_by_the_chunk(count: int, batch_size: int, chunk: int,
                                                               rows: int) -> None:
    assert listing_block_rows(count, batch_size, chunk) == rows
    if rows < chunk:
        assert -(-count // rows) <= MAX_LISTING_BLOCKS


def test_listing_dataset_block_i_holds_items_i_b_to_i_plus_one_b(ray_local: None,
                                                                  breastmnist_png_archive: Path) -> None:
    scan = scan_source(IngestConfig(source=str(breastmnist_png_archive), limit=30))
    names = [item.name for item in scan.iter_items()]

    dataset = listing_dataset(items_table(chunk, scan.dataset) for chunk in scan.iter_chunks(8))

    assert dataset is not None
    blocks = [ray.get(ref) for ref in dataset.to_arrow_refs()]
    assert [block.column("name").to_pylist() for block in blocks] == [names[i:i + 8] for i in range(0, 30, 8)]
    assert listing_dataset(iter(())) is None
