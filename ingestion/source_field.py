"""The store's `source` field: where an image came from, as a path relative to the archive, a keyed hash, or nothing.

Hospital paths carry names and record numbers (`/pacs/DOE^JOHN/1234567/...`). The stored path is always relative
to the ingest root; for DICOM, whose trees are organised by patient and study, the default stores only a keyed
hash of it, so a row can be matched to its file by whoever holds the archive (and the salt), and by nobody else.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import pyarrow as pa

from cbmir.services.embedding import image_id

SOURCE_FIELD_MODES: tuple[str, ...] = ("auto", "relative", "hashed", "none")
HASH_PREFIX = "sha256:"


def is_dicom_name(name: str) -> bool:
    """A listed item's name is DICOM: a .dcm file, or an extensionless one (listed only if it has the preamble).

    Rows of an array file (`breast.npz#train/3`) are not files at all.
    """
    if "#" in name:
        return False
    suffix = PurePosixPath(name).suffix.lower()
    return suffix in ("", ".dcm")


def stored_source(name: str, mode: str, salt: str = "") -> str:
    """What `source` holds for the item named `name` (its path relative to the ingest root) under `mode`."""
    if mode == "auto":
        mode = "hashed" if is_dicom_name(name) else "relative"
    if mode == "relative":
        return name
    if mode == "none":
        return ""
    if mode == "hashed":
        # Keyed like the ids: with --id-salt nobody can confirm a guessed path (a patient's name) from the hash.
        return HASH_PREFIX + image_id("source:" + name, salt)
    raise ValueError(f"source field mode must be one of {', '.join(SOURCE_FIELD_MODES)}, got {mode!r}")


def stored_sources(names: pa.Array, mode: str, salt: str = "") -> pa.Array:
    """`stored_source` over a column of names; the relative mode passes the column through untouched."""
    if mode == "relative":
        return names
    if mode == "none":
        return pa.array([""] * len(names), type=pa.string())
    return pa.array([stored_source(name, mode, salt) for name in names.to_pylist()], type=pa.string())
