"""manifest.json: written last, it lists every file of the checkpoint with its
size and sha256; a folder without it is an incomplete checkpoint."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prune_job.sources.names import check_name
from prune_job.storage.checksums import sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is incomplete, corrupt or of an unknown format (the message names the file)."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


def file_entry(directory: Path, name: str) -> FileEntry:
    path = directory / name
    return FileEntry(name, path.stat().st_size, sha256_file(path))


def write_manifest(directory: Path, fields: dict[str, Any], files: list[FileEntry]) -> Path:
    doc = dict(fields)
    doc["files"] = [asdict(f) for f in files]
    path = directory / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        from prune_job.checkpoint.journal import in_progress_message  # journal.py imports this module

        raise CheckpointError(in_progress_message(Path(directory))
                              or f"{directory}: no {MANIFEST}; the checkpoint is incomplete (the manifest is written last)")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError included
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise CheckpointError(f"{path}: has no list of files")
    version = doc.get("formatVersion", FORMAT_VERSION)
    if type(version) is not int:
        raise CheckpointError(f"{path}: formatVersion {version!r} is not a whole number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version} is newer than this reader ({FORMAT_VERSION})")
    return doc


def manifest_entries(doc: dict[str, Any], where: Any = MANIFEST) -> dict[str, FileEntry]:
    """{name: entry} of every listed file; a malformed entry or a name that leaves the folder is refused."""
    entries = {}
    for n, f in enumerate(doc["files"]):
        try:
            entry = FileEntry(f["name"], int(f["size"]), str(f["sha256"]))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: files[{n}] is not {{name, size, sha256}} ({type(err).__name__}: {err})") from None
        entries[check_name(entry.name, f"{where}: listed file", CheckpointError)] = entry
    return entries


def verify_file(directory: Path, entry: FileEntry) -> None:
    """Raise CheckpointError naming the file unless it exists with the manifest's size and sha256."""
    path = Path(directory) / entry.name
    if not path.is_file():
        raise CheckpointError(f"{path}: listed in {MANIFEST} but missing")
    size = path.stat().st_size
    if size != entry.size:
        raise CheckpointError(f"{path}: size {size} does not match {MANIFEST} ({entry.size}); the file is corrupt")
    if sha256_file(path, cached=False) != entry.sha256:
        raise CheckpointError(f"{path}: sha256 does not match {MANIFEST}; the file is corrupt")
