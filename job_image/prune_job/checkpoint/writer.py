"""CheckpointWriter: tensors in, a checkpoint folder out, one tensor in memory at a time.

    w = CheckpointWriter(directory, format="compressed"|"dense", max_shard_bytes=..., on_file_written=fn)
    w.add(name, tensor, pattern=None, pruned=False)
    w.add_file("config.json", path_or_bytes)
    summary = w.finish(manifest_fields)

Shards are written as `model-0000N.safetensors` while tensors arrive and
renamed `model-0000N-of-0000M.safetensors` by `finish`, which then sets
config.json's dtype to the stored one, writes the index and, last,
`manifest.json`. `on_file_written(path)` is called for every finished file:
each shard as it closes (so an upload can start while later blocks are still
being pruned), again under its final name after the rename, then the add_file
files, the index, and the manifest last.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from prune_job.checkpoint.encoding import Encoded, encode
from prune_job.checkpoint.manifest import FORMAT_VERSION, MANIFEST, CheckpointError, FileEntry, file_entry, write_manifest
from prune_job.checkpoint.shards import ShardFile
from prune_job.checkpoint.sparsity import count_layer, overall_sparsity
from prune_job.spec import LayerSparsity, Pattern

log = logging.getLogger(__name__)
FORMATS = ("compressed", "dense")
DENSE_INDEX = "model.safetensors.index.json"
COMPRESSED_INDEX = "model.compressed.index.json"
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000
OnFileWritten = Callable[[Path], Any]


@dataclass
class WriteSummary:
    """What `finish` wrote. `bytes`: every file of the checkpoint, manifest included.
    `dense_bytes`: what the same tensors take dense (numel x element size) plus the
    files added with add_file; a dense checkpoint's `bytes` exceeds it only by its
    safetensors headers, index and manifest."""

    directory: Path
    format: str
    files: list[FileEntry]
    manifest: Path
    bytes: int
    tensor_bytes: int
    dense_tensor_bytes: int
    dense_bytes: int
    encodings: dict[str, int] = field(default_factory=dict)


class CheckpointWriter:
    def __init__(self, directory: Union[str, Path], format: str = "compressed",
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, on_file_written: Optional[OnFileWritten] = None):
        if format not in FORMATS:
            raise ValueError(f"checkpoint format must be one of {FORMATS}, not {format!r}")
        if max_shard_bytes <= 0:
            raise ValueError("max_shard_bytes must be positive")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / MANIFEST).unlink(missing_ok=True)  # incomplete until finish() writes it again
        self.format = format
        self.max_shard_bytes = max_shard_bytes
        self.on_file_written = on_file_written
        self._shard: Optional[ShardFile] = None
        self._closed: list[Path] = []  # provisional shard paths, in order
        self._weight_map: dict[str, int] = {}  # stored tensor name -> shard number (1-based)
        self._tensors: dict[str, dict[str, Any]] = {}  # original name -> encoding info (compressed)
        self._files: list[str] = []  # add_file names
        self._config_sha: Optional[str] = None  # of config.json as handed over (the source's)
        self._float_dtype: Optional[torch.dtype] = None  # of the first floating-point tensor
        self.tensor_bytes = 0
        self.dense_tensor_bytes = 0
        self.encodings: dict[str, int] = {}
        self.layers: dict[str, LayerSparsity] = {}  # stored key -> zeros counted while encoding
        self._finished = False
        self._reported_upto = 0  # shards already returned by end_block

    # -- tensors ---------------------------------------------------------------------------------
    def add(self, name: str, tensor: torch.Tensor, pattern: Optional[Pattern] = None, pruned: bool = False,
            transposed: bool = False) -> Optional[LayerSparsity]:
        """Store one tensor under its state-dict key; its bytes are on disk when this returns. A pruned
        weight's zeros are counted here (and `pattern` checked; `transposed`: stored [in, out], as
        transformers' Conv1D does, so its N:M groups do not run along stored rows and it is encoded as
        unstructured); the count is returned and goes into the manifest."""
        self._check_open()
        if name in self._tensors or name in self._weight_map:
            raise ValueError(f"tensor {name!r} was already added")
        counted = count_layer(name, tensor, pattern, transposed) if pruned else None
        if counted is not None:
            self.layers[name] = counted
        if self.format == "dense":
            enc = Encoded({name: tensor}, {"encoding": "dense"})
        else:
            enc = encode(name, tensor, pattern if pruned and not transposed else None, pruned)
            self._tensors[name] = enc.info
        size = sum(t.numel() * t.element_size() for t in enc.parts.values())
        shard = self._shard_for(size)
        for part_name, part in enc.parts.items():
            shard.add(part_name, part)
            self._weight_map[part_name] = len(self._closed) + 1
        self.tensor_bytes += size
        self.dense_tensor_bytes += tensor.numel() * tensor.element_size()
        kind = enc.info["encoding"]
        self.encodings[kind] = self.encodings.get(kind, 0) + 1
        if self._float_dtype is None and tensor.is_floating_point():
            self._float_dtype = tensor.dtype
        return counted

    def _shard_for(self, size: int) -> ShardFile:
        if self._shard is not None and self._shard.entries and self._shard.nbytes + size > self.max_shard_bytes:
            self._close_shard()
        if self._shard is None:
            self._shard = ShardFile(self.directory / f"model-{len(self._closed) + 1:05d}.safetensors")
        return self._shard

    def _close_shard(self) -> None:
        meta = {"format": "pt"} if self.format == "dense" else {"prune_job.format": "compressed",
                                                                 "prune_job.format_version": str(FORMAT_VERSION)}
        path = self._shard.close(meta)
        self._shard = None
        self._closed.append(path)
        self._notify(path)

    def end_block(self) -> list[Path]:
        """Close the shard being written: a block's tensors never share a shard with the next block's,
        so the shards' contents do not depend on where a run was interrupted (docs/resume.md).
        Returns the shards closed since the last call."""
        self._check_open()
        if self._shard is not None:
            self._close_shard()
        closed = self._closed[self._reported_upto:]
        self._reported_upto = len(self._closed)
        return closed

    def state(self) -> dict[str, Any]:
        """What the writer knows of the shards closed so far (the journal keeps it; `restore` takes it back)."""
        if self._shard is not None:
            raise CheckpointError(f"{self.directory}: a shard is open; end_block() first")
        return {
            "shards": [p.name for p in self._closed], "weightMap": dict(self._weight_map),
            "tensors": dict(self._tensors), "tensorBytes": self.tensor_bytes,
            "denseTensorBytes": self.dense_tensor_bytes, "encodings": dict(self.encodings),
            "floatDtype": None if self._float_dtype is None else str(self._float_dtype).removeprefix("torch."),
            "layers": {k: v.model_dump(by_alias=True, mode="json") for k, v in self.layers.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue after the shards of an earlier, interrupted run (their files must be in the folder)."""
        if self._closed or self._shard is not None or self._weight_map:
            raise CheckpointError(f"{self.directory}: restore() must come before any tensor")
        self._closed = [self.directory / name for name in state["shards"]]
        self._reported_upto = len(self._closed)
        self._weight_map = {k: int(v) for k, v in state["weightMap"].items()}
        self._tensors = dict(state["tensors"])
        self.tensor_bytes = int(state["tensorBytes"])
        self.dense_tensor_bytes = int(state["denseTensorBytes"])
        self.encodings = dict(state["encodings"])
        self._float_dtype = getattr(torch, state["floatDtype"]) if state.get("floatDtype") else None
        self.layers = {k: LayerSparsity.model_validate(v) for k, v in state["layers"].items()}

    # -- other files -----------------------------------------------------------------------------
    def add_file(self, relative_name: str, content: Union[str, Path, bytes]) -> None:
        """Copy a file (or write bytes) into the checkpoint, e.g. config.json or tokenizer files.
        They are handed to `on_file_written` by `finish`, after config.json's dtype is set to the
        stored one (so `from_pretrained` loads a bfloat16 checkpoint as bfloat16)."""
        self._check_open()
        rel = Path(relative_name)
        if rel.is_absolute() or ".." in rel.parts or rel.name in (MANIFEST, DENSE_INDEX, COMPRESSED_INDEX):
            raise ValueError(f"add_file: {relative_name!r} is not a name the writer may take")
        target = self.directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        if rel.as_posix() not in self._files:
            self._files.append(rel.as_posix())
        if rel.as_posix() == "config.json":
            self._config_sha = hashlib.sha256(data).hexdigest()

    # -- the end ---------------------------------------------------------------------------------
    def finish(self, manifest_fields: Optional[dict[str, Any]] = None) -> WriteSummary:
        """Close the last shard, rename shards -of-M, write the index, then manifest.json (last)."""
        self._check_open()
        if self._shard is not None:
            self._close_shard()
        names = self._rename_shards()
        for name in names:
            self._notify(self.directory / name)
        self._set_config_dtype()
        for name in self._files:
            self._notify(self.directory / name)
        index_name = self._write_index(names)
        self._notify(self.directory / index_name)
        entries = [file_entry(self.directory, n) for n in [*names, index_name, *self._files]]
        manifest = write_manifest(self.directory, self._manifest_doc(manifest_fields or {}), entries)
        self._finished = True
        self._notify(manifest)
        return self._summary(entries, manifest)

    def _set_config_dtype(self) -> None:
        path = self.directory / "config.json"
        if "config.json" not in self._files or self._float_dtype is None:
            return
        try:
            config = json.loads(path.read_text())
        except ValueError:
            return  # not ours to judge; transformers will say what is wrong with it
        name = str(self._float_dtype).removeprefix("torch.")
        keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["dtype"]
        if all(config.get(k) == name for k in keys):
            return
        for k in keys:
            config[k] = name
        tmp = path.with_name("config.json.tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    def _rename_shards(self) -> list[str]:
        total = len(self._closed)
        names = []
        for i, path in enumerate(self._closed, 1):
            final = path.with_name(f"model-{i:05d}-of-{total:05d}.safetensors")
            os.replace(path, final)
            names.append(final.name)
        return names

    def _write_index(self, names: list[str]) -> str:
        index: dict[str, Any] = {
            "metadata": {"total_size": self.tensor_bytes},
            "weight_map": {k: names[n - 1] for k, n in sorted(self._weight_map.items())},
        }
        if self.format == "compressed":
            index["metadata"].update({"format": "compressed", "format_version": FORMAT_VERSION,
                                      "dense_total_size": self.dense_tensor_bytes})
            index["tensors"] = dict(sorted(self._tensors.items()))
        name = DENSE_INDEX if self.format == "dense" else COMPRESSED_INDEX
        (self.directory / name).write_text(json.dumps(index, indent=2) + "\n")
        return name

    def _manifest_doc(self, fields: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "formatVersion": FORMAT_VERSION,
            "format": self.format,
            "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self._config_sha is not None:
            doc["configSha256"] = self._config_sha  # the source's config.json, before its dtype was set
        doc.update(fields)
        doc["tensors"] = {"bytes": self.tensor_bytes, "denseBytes": self.dense_tensor_bytes,
                          "encodings": dict(sorted(self.encodings.items()))}
        if self.layers:
            doc.setdefault("sparsity", {})
            doc["sparsity"].update({"measured": overall_sparsity(list(self.layers.values())),
                                    "layers": {key.removesuffix(".weight"): layer.sparsity
                                               for key, layer in self.layers.items()}})
        return doc

    def _summary(self, entries: list[FileEntry], manifest: Path) -> WriteSummary:
        total = sum(e.size for e in entries) + manifest.stat().st_size
        other = sum(e.size for e in entries if e.name in self._files)
        return WriteSummary(
            directory=self.directory, format=self.format, files=entries, manifest=manifest, bytes=total,
            tensor_bytes=self.tensor_bytes, dense_tensor_bytes=self.dense_tensor_bytes,
            dense_bytes=other + self.dense_tensor_bytes, encodings=dict(self.encodings),
        )

    def abort(self) -> None:
        """Drop the shard being written (finished shards stay on disk)."""
        if self._shard is not None:
            self._shard.abort()
            self._shard = None

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is not None:
            self.abort()

    def _check_open(self) -> None:
        if self._finished:
            raise CheckpointError(f"{self.directory}: the checkpoint is already finished")

    def _notify(self, path: Path) -> None:
        if self.on_file_written is not None:
            self.on_file_written(path)
