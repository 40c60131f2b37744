"""The per-deployment id salt: where it lives, its creation on first use, and which salt a command uses.

Image ids are HMAC-SHA256(salt, content key): without the salt nobody can recompute an id from a SOP Instance UID.
When no salt is given (`--id-salt`, `--id-salt-file`, env CBMIR_ID_SALT), cbmir uses `$CBMIR_HOME/id-salt`
(CBMIR_HOME defaults to ~/.config/cbmir): a random secret created on first use, mode 0600, outside any
collection, never overwritten. A k8s Secret mounted there (or passed with --id-salt-file) takes its place.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from cbmir.services.embedding.decode import id_salt_digest

log = logging.getLogger(__name__)

HOME_ENV = "CBMIR_HOME"
SALT_FILE_NAME = "id-salt"
MIGRATION_DOC = "docs/migration.md#id-salt"


class IdSaltError(ValueError):
    """The default salt does not match the collection, or cannot be read or created (a user can fix it)."""


def cbmir_home() -> Path:
    """`$CBMIR_HOME`, else ~/.config/cbmir: per-deployment state that belongs to no collection."""
    configured = os.environ.get(HOME_ENV, "")
    return Path(configured).expanduser() if configured else Path.home() / ".config" / "cbmir"


def default_salt_path() -> Path:
    return cbmir_home() / SALT_FILE_NAME


def _read_salt(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        log.warning("the id salt %s is readable by other users: chmod 600 it", path)
    text = path.read_text(encoding="utf-8").splitlines()
    salt = text[0].strip() if text else ""
    if not salt:
        raise IdSaltError(f"the id salt file {path} is empty: restore it, or pass --id-salt-file")
    return salt


def read_default_salt(create: bool = True) -> str:
    """The deployment's salt from `default_salt_path()`, created (0600, atomically, never overwritten) if missing.

    Creation writes a private temporary file and hard-links it into place: the link fails if another process got
    there first, and then its salt is read instead, so two first runs at once agree on one salt.
    """
    path = default_salt_path()
    if path.exists():
        return _read_salt(path)
    if not create:
        raise IdSaltError(f"no id salt at {path}")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{SALT_FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
            log.warning("created the id salt %s (mode 0600): keep it with the deployment's secrets; ids of new "
                        "collections depend on it", path)
        except FileExistsError:
            pass  # another first run won: use its salt
    finally:
        tmp.unlink(missing_ok=True)
    return _read_salt(path)


def warn_if_unsalted(stored_digest: str, collection: str) -> None:
    """One warning for a legacy collection whose ids are unsalted (it keeps working, unsalted)."""
    if stored_digest == "":
        log.warning("collection %r keys its image ids unsalted (sha256 of the DICOM UID): anyone holding a UID can "
                    "test whether an image is indexed; re-ingest into a new collection to salt them (see %s)",
                    collection, MIGRATION_DOC)


def resolve_id_salt(explicit: str, stored_digest: str | None, collection: str) -> str:
    """The salt one command keys its ids with, decided once before any work starts.

    `explicit`: a salt the user gave (checked against the collection by the store, as before). Otherwise
    `stored_digest` is the collection's `cbmir.id_salt_digest` (None: the collection does not exist yet):
    "" → a legacy unsalted collection, kept unsalted with a warning; a digest → the default salt, which must match;
    None → the default salt, created if missing.
    """
    if explicit:
        return explicit
    if stored_digest is None:
        return read_default_salt(create=True)
    if stored_digest == "":
        warn_if_unsalted(stored_digest, collection)
        return ""
    path = default_salt_path()
    try:
        salt = read_default_salt(create=False)
    except (IdSaltError, OSError) as error:
        raise IdSaltError(
            f"collection {collection!r} keys its image ids with salt digest {stored_digest}, and the default id salt "
            f"{path} cannot be read ({error}): pass the salt it was created with (--id-salt-file or CBMIR_ID_SALT), "
            f"or set CBMIR_HOME to the directory holding it") from None
    if id_salt_digest(salt) != stored_digest:
        raise IdSaltError(
            f"collection {collection!r} keys its image ids with salt digest {stored_digest}, the default id salt "
            f"{path} has digest {id_salt_digest(salt)}: pass the salt the collection was created with "
            f"(--id-salt-file or CBMIR_ID_SALT), or use another --collection")
    return salt
