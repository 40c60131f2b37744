"""Sources list directory trees, CSV manifests and MedMNIST npz files into SourceItems, with clear errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.samples import BREASTMNIST_SUBSET, dicom_sample_files
from cbmir.ingestion.sources import SourceError, list_source


def _pngs(archive: Path, n: int) -> list[Path]:
    return sorted((archive / "images").glob("*.png"))[:n]


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_brain_mri_manifest_keeps_only_the_requested_split(tmp_path: Path, breastmnist_png_archive: Path) -> None:
    rows = []
    for i, png in enumerate(_pngs(breastmnist_png_archive, 6)):
        label = ["glioma_tumor", "no_tumor"][i % 2]
        (tmp_path / "images" / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, tmp_path / "images" / label / png.name)
        rows.append({"image": f"images/{label}/{png.name}", "label": label, "split": ["train", "test"][i // 4]})
    _write_csv(tmp_path / "labels.csv", rows)

    listing = list_source(IngestConfig(source=str(tmp_path), split="train"))

    assert listing.kind == "manifest"
    assert [item.name for item in listing.items] == [r["image"] for r in rows[:4]]
    assert [item.label for item in listing.items] == [r["label"] for r in rows[:4]]
    assert all(Path(item.uri).is_file() and item.split == "train" for item in listing.items)
    assert listing.dataset == tmp_path.name


def test_mias_manifest_copies_the_label_column_and_no_patient_ids(tmp_path: Path,
                                                                  breastmnist_png_archive: Path) -> None:
    rows = []
    for i, png in enumerate(_pngs(breastmnist_png_archive, 3)):
        shutil.copy(png, tmp_path / f"mdb{i:03d}.png")
        rows.append({"image": f"mdb{i:03d}.png", "patient_id": str(100 + i), "tissue": "dense",
                     "abnormality": "NORM", "severity": "normal", "lesions_x_y_radius": "", "view": "MLO"})
    manifest = tmp_path / "mias.csv"
    _write_csv(manifest, rows)

    listing = list_source(IngestConfig(source=str(manifest), label_column="tissue"))

    assert [item.label for item in listing.items] == ["dense"] * 3
    for item in listing.items:
        assert item.metadata == {"view": "MLO"}
        assert "100" not in repr(item)  # the patient id goes nowhere near the store


def test_manifest_without_the_label_column_names_the_option_to_pass(tmp_path: Path) -> None:
    _write_csv(tmp_path / "labels.csv", [{"image": "a.png", "tissue": "fatty"}])
    with pytest.raises(SourceError, match="no column 'label'.*--label-column"):
        list_source(IngestConfig(source=str(tmp_path)))


def test_folder_per_class_tree_labels_each_image_with_its_folder(tmp_path: Path,
                                                                 breastmnist_png_archive: Path) -> None:
    for i, png in enumerate(_pngs(breastmnist_png_archive, 4)):
        folder = tmp_path / "images" / ["benign", "malignant"][i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, folder / png.name.replace(".png", ".PNG"))
    (tmp_path / "images" / "notes.txt").write_text("not an image")

    listing = list_source(IngestConfig(source=str(tmp_path)))

    assert listing.kind == "directory"
    assert sorted(item.label for item in listing.items) == ["benign", "benign", "malignant", "malignant"]
    assert all(item.name.startswith("images/") for item in listing.items)


def test_nested_tree_is_not_mistaken_for_class_folders(tmp_path: Path, breastmnist_png_archive: Path) -> None:
    pngs = _pngs(breastmnist_png_archive, 2)
    (tmp_path / "patient1" / "study1").mkdir(parents=True)
    shutil.copy(pngs[0], tmp_path / "patient1" / "study1" / "a.png")
    shutil.copy(pngs[1], tmp_path / "b.png")

    listing = list_source(IngestConfig(source=str(tmp_path)))

    assert [item.label for item in listing.items] == ["", ""]


def test_extensionless_file_is_listed_only_with_a_dicom_preamble(tmp_path: Path) -> None:
    shutil.copy(dicom_sample_files()[0], tmp_path / "IM0001")
    (tmp_path / "README").write_bytes(b"x" * 200)

    listing = list_source(IngestConfig(source=str(tmp_path)))

    assert [item.name for item in listing.items] == ["IM0001"]


def test_npz_yields_one_item_per_row_of_every_split() -> None:
    listing = list_source(IngestConfig(source=str(BREASTMNIST_SUBSET)))

    assert len(listing.items) == 120 + 40
    assert {item.split for item in listing.items} == {"train", "test"}
    assert {item.label for item in listing.items} <= {"0", "1"}
    assert listing.items[0].name == f"{BREASTMNIST_SUBSET.name}#{listing.items[0].split}/0"
    assert listing.dataset == BREASTMNIST_SUBSET.stem


def test_npz_split_and_limit_select_rows() -> None:
    listing = list_source(IngestConfig(source=str(BREASTMNIST_SUBSET), split="test", limit=5))

    assert [(item.split, item.array_index) for item in listing.items] == [("test", i) for i in range(5)]
    with pytest.raises(SourceError, match="no split 'val'"):
        list_source(IngestConfig(source=str(BREASTMNIST_SUBSET), split="val"))


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="source not found: .*nowhere"):
        list_source(IngestConfig(source=str(tmp_path / "nowhere")))


def test_directory_without_images_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing to see")
    with pytest.raises(SourceError, match="no images found"):
        list_source(IngestConfig(source=str(tmp_path)))


def test_demo_dicom_samples_are_labelled_by_what_a_person_recognises(dicom_archive: Path) -> None:
    with open(dicom_archive / "labels.csv", newline="") as handle:
        labels = {row["label"] for row in csv.DictReader(handle)}
    assert "unknown" not in labels and "" not in labels
    assert {"CT", "MR", "US"} <= labels
    # Samples without a Modality element are named by their SOP class, e.g. "Secondary Capture Image Storage".
    assert any(label.endswith("Storage") for label in labels)
