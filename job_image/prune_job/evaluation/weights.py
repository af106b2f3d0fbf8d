"""Where the evaluated weights come from, behind one small interface that the
pipeline's ModelHandle already uses for its safetensors index
(`key in source`, `source.read(keys) -> {key: tensor}`), so that the
block-streaming forward reads the dense folder, a dense-format sparse folder,
a compressed checkpoint or a state dict in memory alike.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable, Mapping, Optional, Protocol, Union

import torch
from torch import nn

from prune_job.checkpoint.reader import CompressedReader
from prune_job.pipeline.model import ModelHandle, WeightIndex, open_model, stored_names, tied_aliases


class WeightSource(Protocol):
    def __contains__(self, key: str) -> bool: ...

    def read(self, keys: Iterable[str]) -> dict[str, torch.Tensor]: ...


class StateDictSource:
    """A state dict in memory (e.g. the pruned tensors the orchestrator kept)."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self.state = state

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def read(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        return {key: self.state[key] for key in keys}

    def keys(self) -> Iterable[str]:
        return self.state.keys()


Sparse = Union[Path, Mapping[str, torch.Tensor]]


def checkpoint_format(folder: Path) -> str:
    """`compressed` or `dense`, from the manifest; a folder without one is a plain HF folder."""
    manifest = Path(folder) / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("format", "dense")
    return "dense"


def weight_source(sparse: Sparse) -> WeightSource:
    if not isinstance(sparse, (str, Path)):
        return StateDictSource(sparse)
    folder = Path(sparse)
    if checkpoint_format(folder) == "compressed":
        return CompressedReader(folder)
    return WeightIndex(sorted(folder.glob("*.safetensors")))


def source_keys(source: WeightSource) -> list[str]:
    if isinstance(source, WeightIndex):
        return sorted(source.location)
    return sorted(source.keys())  # type: ignore[attr-defined]


def streaming_handle(dense_dir: Path, source: WeightSource, dtype: str, device: torch.device,
                     trust_remote_code: bool = False, blocks: Optional[str] = None,
                     dense: Optional[WeightSource] = None) -> ModelHandle:
    """The dense model's skeleton (its tensors in `dense`, default the folder's files), its
    tensors read from `source` block by block."""
    handle = open_model(Path(dense_dir), dtype, device, trust_remote_code=trust_remote_code, blocks=blocks,
                        index=dense)
    return dataclasses.replace(handle, index=source)


def load_full_model(dense_dir: Path, dtype: str, device: torch.device, source: Optional[WeightSource] = None,
                    trust_remote_code: bool = False, dense: Optional[WeightSource] = None) -> nn.Module:
    """The whole model on `device` (for generation); with `source`, every tensor it holds replaces the dense one.
    The dense tensors come from `dense` (e.g. ranged reads from the bucket, storage.ranged), else from the
    folder's files, through the pipeline's loader: the skeleton built empty, each tensor read once into its
    place (no second copy), with the same renames, tied weights and dtype as the block-streaming forward."""
    handle = open_model(Path(dense_dir), dtype, device, trust_remote_code=trust_remote_code, index=dense)
    model = handle.load_all().eval()
    model.config.use_cache = True  # open_model turns the cache off for the block-streaming forward; decoding uses it
    if source is not None:
        overwrite_weights(model, source)
    return model


@torch.no_grad()
def overwrite_weights(model: nn.Module, source: WeightSource) -> None:
    """Copy every parameter/buffer from `source` (tied tensors may be stored under one name only)."""
    aliases = tied_aliases(model)
    stored = stored_names(model, source_keys(source))
    buffers = {name for name, _ in model.named_buffers()}
    for name, tensor in model.state_dict(keep_vars=True).items():
        keys = (stored.get(k, k) for k in [name, *aliases.get(name, [])])
        key = next((k for k in keys if k in source), None)
        if key is None and name in buffers:
            continue  # buffers the model computes itself are not always stored
        if key is None:
            raise KeyError(f"the sparse checkpoint has no tensor for {name}")
        tensor.data.copy_(source.read([key])[key])
