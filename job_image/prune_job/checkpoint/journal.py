"""journal.json: the finished blocks of a run, beside its checkpoint (docs/resume.md).

Written after every finished block, once that block's shards are closed (and, for s3://
outputs, sent before it): the run's identity, the blocks done, their shard files with
size and sha256, and the writer's state, so that a rerun of the same identity continues
where the last one stopped and writes the same bytes. The file is replaced atomically
(tmp + rename); it is not part of the checkpoint (manifest.json does not list it).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from prune_job.checkpoint.manifest import CheckpointError, FileEntry, file_entry
from prune_job.storage.checksums import sha256_file
from prune_job.storage.transfer import JOURNAL

JOURNAL_VERSION = 1


def identity(fields: dict[str, Any]) -> dict[str, Any]:
    """The run's identity: the fields that change the written bytes, and their hash."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return {"sha256": hashlib.sha256(canonical.encode()).hexdigest(), "fields": fields}


def differences(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, old value, new value) for every leaf that differs between two identities' fields."""
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        where = f"{path}.{key}" if path else key
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, where)
        elif a != b:
            out.append((where, a, b))
    return out


@dataclass
class Journal:
    identity: dict[str, Any]
    blocks_total: int
    blocks_done: int = 0
    files: list[FileEntry] = field(default_factory=list)  # shards of the finished blocks, in order
    writer: dict[str, Any] = field(default_factory=dict)  # CheckpointWriter.state()
    layers: list[dict[str, Any]] = field(default_factory=list)  # the pruned layers so far (results.json's)
    resumes: int = 0
    resumed_from_block: Optional[int] = None
    tool_version: str = ""

    def to_json(self) -> str:
        doc = {"journalVersion": JOURNAL_VERSION, "tool": {"name": "prune-job", "version": self.tool_version},
               "identity": self.identity, "blocksTotal": self.blocks_total, "blocksDone": self.blocks_done,
               "resumes": self.resumes, "resumedFromBlock": self.resumed_from_block,
               "files": [asdict(f) for f in self.files], "writer": self.writer, "layers": self.layers}
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_doc(cls, doc: dict[str, Any], where: Path) -> "Journal":
        try:
            if doc.get("journalVersion", 0) > JOURNAL_VERSION:
                raise CheckpointError(f"{where}: journal version {doc['journalVersion']} is newer than this tool's")
            return cls(identity=doc["identity"], blocks_total=int(doc["blocksTotal"]),
                       blocks_done=int(doc["blocksDone"]),
                       files=[FileEntry(f["name"], int(f["size"]), f["sha256"]) for f in doc["files"]],
                       writer=doc["writer"], layers=list(doc.get("layers", [])), resumes=int(doc.get("resumes", 0)),
                       resumed_from_block=doc.get("resumedFromBlock"),
                       tool_version=doc.get("tool", {}).get("version", ""))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: not a journal this tool can read ({e})") from None


def read_journal(directory: Path) -> Optional[Journal]:
    path = Path(directory) / JOURNAL
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: not a journal")
    return Journal.from_doc(doc, path)


def write_journal(directory: Path, journal: Journal) -> Path:
    path = Path(directory) / JOURNAL
    tmp = path.with_name(JOURNAL + ".tmp")
    tmp.write_text(journal.to_json())
    tmp.replace(path)
    return path


def in_progress_message(directory: Path) -> Optional[str]:
    """For a folder without manifest.json: what its journal says is done, if it has one."""
    try:
        journal = read_journal(directory)
    except CheckpointError as e:
        return str(e)
    if journal is None:
        return None
    done = journal.blocks_done
    blocks = "no block" if not done else ("block 0" if done == 1 else f"blocks 0-{done - 1}")
    return (f"{directory}: the checkpoint is in progress ({blocks} of {journal.blocks_total} done, per {JOURNAL}); "
            "it has no manifest.json yet (written last). Rerun the PruneJob to complete it.")


def final_name_of(name: str) -> re.Pattern:
    """model-00003.safetensors is renamed model-00003-of-000NN.safetensors when the checkpoint is finished."""
    stem = re.escape(name.removesuffix(".safetensors"))
    return re.compile(rf"^{stem}-of-\d+\.safetensors$")


def restore_provisional_names(directory: Path, journal: Journal) -> None:
    """A run interrupted while finishing may have renamed some shards -of-M: name them back."""
    directory = Path(directory)
    for entry in journal.files:
        if (directory / entry.name).exists():
            continue
        pattern = final_name_of(entry.name)
        for path in directory.glob("model-*-of-*.safetensors"):
            if pattern.match(path.name):
                path.replace(directory / entry.name)
                break


def verify_files(directory: Path, journal: Journal) -> None:
    """Every finished block's shard is there with the journal's size and sha256, or CheckpointError naming it."""
    for entry in journal.files:
        path = Path(directory) / entry.name
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {JOURNAL} but missing")
        if path.stat().st_size != entry.size or sha256_file(path, cached=False) != entry.sha256:
            raise CheckpointError(f"{path}: does not match {JOURNAL} (size or sha256); the file is corrupt")


def entries(directory: Path, paths: list[Path]) -> list[FileEntry]:
    return [file_entry(Path(directory), p.name) for p in paths]


class WrittenShards:
    """The tensors of the finished blocks, read back from their shards by stored key (a resumed run
    forwards the calibration through them). Quacks like pipeline.model.WeightIndex."""

    def __init__(self, directory: Path, writer_state: dict[str, Any]):
        self.directory = Path(directory)
        self.shards: list[str] = writer_state["shards"]
        self.weight_map: dict[str, int] = writer_state["weightMap"]
        self.infos: dict[str, dict[str, Any]] = writer_state["tensors"]
        names = set(self.infos) | (set() if self.infos else set(self.weight_map))
        self.location = {name: self._shard(name) for name in names}

    def _parts(self, name: str) -> dict[str, str]:
        info = self.infos.get(name, {})
        return dict(info["parts"]) if "parts" in info else {"": name}

    def _shard(self, name: str) -> Path:
        first = next(iter(self._parts(name).values()))
        return self.directory / self.shards[int(self.weight_map[first]) - 1]

    def __contains__(self, key: str) -> bool:
        return key in self.location

    def read(self, keys: Any) -> dict[str, Any]:
        from safetensors import safe_open

        from prune_job.checkpoint.encoding import decode

        out = {}
        for key in keys:
            parts = self._parts(key)
            with safe_open(self._shard(key), framework="pt") as f:
                stored = {role: f.get_tensor(name) for role, name in parts.items()}
            out[key] = stored[""] if "" in stored else decode(self.infos[key], stored)
        return out
