"""A model skeleton on the meta device whose tensors are read from the
safetensors files only when a module needs them, and dropped after.

The block pipeline alone moves weights between disk, host and device; this
module is the part of it that knows the checkpoint files.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from prune_job.checkpoint.dtypes import COMPUTE_DTYPES
from prune_job.checkpoint.headers import StoredTensor, read_header, read_tensor
from prune_job.pipeline.memory import release_freed_memory
from prune_job.sources.models import ModelFormatError, model_folder_problem, weight_files
from prune_job.spec import SpecError

DTYPES = COMPUTE_DTYPES
PRUNABLE = (nn.Linear, Conv1D)


def read_safetensors_header(path: Path) -> dict[str, StoredTensor]:
    """A source model file's tensors, every header entry checked against the file (checkpoint.headers)."""
    return read_header(path, ModelFormatError)


class WeightIndex:
    """Which file holds each tensor, read with plain positioned reads.

    No memory map: a mapped checkpoint's pages count as resident memory for as
    long as the mapping (or any tensor viewing it) lives, which is what makes
    other tools' peak RSS grow with the model. Here each read copies exactly
    one tensor's bytes into fresh memory and the page cache stays the kernel's.
    """

    def __init__(self, files: Iterable[Path]):
        self.location: dict[str, StoredTensor] = {}
        for path in files:
            self.location.update(read_safetensors_header(Path(path)))

    def __contains__(self, key: str) -> bool:
        return key in self.location

    def read(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        return {key: read_tensor(self.location[key], key, ModelFormatError) for key in keys}


def find_blocks(model: nn.Module, override: Optional[str] = None) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: the spec's dotted path if given, else the ModuleList
    whose children are the model's `_no_split_modules` classes, else the
    longest ModuleList of same-typed children."""
    if override:
        try:
            found = model.get_submodule(override)
        except AttributeError:
            raise SpecError([("spec.model.blocks", f"no module {override!r} in this model")]) from None
        if not isinstance(found, nn.ModuleList):
            raise SpecError([("spec.model.blocks", f"{override!r} is a {type(found).__name__}, not a ModuleList")])
        return override, found
    block_classes = set(getattr(model, "_no_split_modules", None) or [])
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(child) for child in module}
            if len(kinds) == 1:
                preferred = next(iter(kinds)).__name__ in block_classes
                candidates.append((preferred, len(module), name, module))
    if not candidates:
        raise SpecError([("spec.model.blocks", "no list of decoder blocks found; name it, e.g. model.layers")])
    _, _, name, module = max(candidates, key=lambda c: (c[0], c[1]))
    return name, module


@dataclass
class Target:
    """One prunable layer: a Linear, or transformers' Conv1D whose weight is stored transposed."""

    name: str
    module: nn.Module

    @property
    def transposed(self) -> bool:
        return isinstance(self.module, Conv1D)

    @property
    def in_features(self) -> int:
        w = self.module.weight
        return w.shape[0] if self.transposed else w.shape[1]

    def get_weight(self) -> torch.Tensor:
        """[out, in] view of the weight."""
        w = self.module.weight.data
        return w.t() if self.transposed else w

    def set_weight(self, w: torch.Tensor) -> None:
        self.module.weight.data = (w.t() if self.transposed else w).contiguous()


def select_targets(block: nn.Module, prefix: str, include: list[str], exclude: list[str]) -> list[Target]:
    targets = []
    for rel, module in block.named_modules():
        if not isinstance(module, PRUNABLE):
            continue
        name = f"{prefix}.{rel}"
        if include and not any(re.search(p, name) for p in include):
            continue
        if any(re.search(p, name) for p in exclude):
            continue
        targets.append(Target(name, module))
    return targets


@dataclass
class ModelHandle:
    """The meta-device skeleton, the weight index, and where blocks live."""

    model_dir: Path
    model: nn.Module
    index: WeightIndex
    dtype: torch.dtype
    device: torch.device
    blocks_path: str
    blocks: nn.ModuleList
    aliases: dict[str, list[str]] = field(default_factory=dict)
    stored_as: dict[str, str] = field(default_factory=dict)  # model name -> checkpoint key, where they differ

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def block_prefix(self, i: int) -> str:
        return f"{self.blocks_path}.{i}"

    def checkpoint_key(self, name: str) -> Optional[str]:
        """The key under which a parameter is stored (tied weights are stored once)."""
        keys = (self.stored_key(alias) for alias in [name, *self.aliases.get(name, [])])
        return next((key for key in keys if key in self.index), None)

    def stored_key(self, name: str) -> str:
        """The key the source would store a model parameter under (renamed or not)."""
        return self.stored_as.get(name, name)

    def load(self, module: nn.Module, prefix: str) -> None:
        """Materialise a module's own meta parameters (not its children's) from disk."""
        names = [f"{prefix}.{n}" if prefix else n for n, p in module.named_parameters(recurse=False) if p.is_meta]
        self._load_names(names)

    def load_tree(self, prefix: str) -> None:
        module = self.model.get_submodule(prefix)
        names = [f"{prefix}.{n}" for n, p in module.named_parameters() if p.is_meta]
        self._load_names(names)
        for n, b in module.named_buffers():
            if b.device != self.device and not b.is_meta:
                set_module_tensor_to_device(self.model, f"{prefix}.{n}", self.device)

    def _load_names(self, names: list[str]) -> None:
        keys = {}
        for name in names:
            key = self.checkpoint_key(name)
            if key is None:
                raise ModelFormatError(f"{self.model_dir}: no tensor for {name} in the safetensors files")
            keys[name] = key
        tensors = self.index.read(set(keys.values()))
        for name, key in keys.items():
            value = tensors[key]
            dtype = self.dtype if value.is_floating_point() else None
            for alias in [name, *self.aliases.get(name, [])]:
                set_module_tensor_to_device(self.model, alias, self.device, value=value, dtype=dtype)

    def load_all(self) -> nn.Module:
        """The whole model on the device, every tensor read from the index once and put in
        place of its meta parameter (no second copy), tied weights tied again after."""
        for prefix, module in self.model.named_modules():
            self.load(module, prefix)
        self.model.tie_weights()
        return self.model.to(self.device)  # the buffers the model computes itself (rotary tables) were built on the CPU

    def release_tree(self, prefix: str) -> None:
        """Send a module's parameters back to the meta device, freeing them."""
        module = self.model.get_submodule(prefix)
        for n, _ in list(module.named_parameters()):
            set_module_tensor_to_device(self.model, f"{prefix}.{n}", "meta")
        release_freed_memory()

    def release_outer(self) -> None:
        """Send the parameters outside the blocks (embeddings, final norm, head) back to
        the meta device; they load again on use (forward.outer_modules_loaded_on_use)."""
        in_blocks = {id(p) for p in self.blocks.parameters()}
        for name, p in list(self.model.named_parameters(remove_duplicate=False)):
            if id(p) not in in_blocks and not p.is_meta:
                set_module_tensor_to_device(self.model, name, "meta")
        release_freed_memory()

    def state_keys(self, prefix: str) -> list[tuple[str, str]]:
        """(model name, checkpoint key) of every tensor of a module tree that the source
        stores, under the key the source stored it (tied copies are stored once)."""
        module = self.model.get_submodule(prefix)
        names = [f"{prefix}.{n}" for n in module.state_dict(keep_vars=True)]
        pairs = [(n, self.stored_key(n)) for n in names]
        return [(n, k) for n, k in pairs if k in self.index]


def stored_names(model: nn.Module, keys: Iterable[str]) -> dict[str, str]:
    """Model parameter name -> checkpoint key, for the keys that transformers renames
    when it loads this architecture (e.g. GPT-NeoX stores `lm_head` as `embed_out`;
    old checkpoints store LayerNorm `gamma`/`beta`). Keys that it would fuse into one
    parameter (MoE experts stacked into one tensor) cannot be read block by block
    and are refused with ModelFormatError."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key
    except ImportError:  # transformers < 5 loads checkpoint keys as they are
        return {}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    own = model.state_dict(keep_vars=True)
    names: dict[str, str] = {}
    for key in keys:
        name, fused_from = rename_source_key(key, renamings, converters, model.base_model_prefix, own)
        if fused_from is not None:
            raise ModelFormatError(
                f"{type(model).__name__} fuses the stored tensor {key} with others into {name} when it loads; "
                "the block-streaming pipeline reads stored tensors one by one and does not support this "
                "architecture's checkpoint layout"
            )
        if name != key:
            names[name] = key
    return names


def tied_aliases(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names that share one tensor (e.g. lm_head and the embeddings)."""
    groups: dict[int, list[str]] = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        groups[id(param)].append(name)
    return {n: [a for a in names if a != n] for names in groups.values() if len(names) > 1 for n in names}


def open_model(
    model_dir: Path,
    dtype: str = "float32",
    device: Optional[torch.device] = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    blocks: Optional[str] = None,
    index: Optional["WeightIndex"] = None,
) -> ModelHandle:
    """Build the skeleton with empty weights; reads only config and file headers.
    `index` replaces the plain safetensors reader (e.g. one that decodes a
    compressed checkpoint); it needs `location`, `__contains__` and `read(keys)`."""
    model_dir = Path(model_dir)
    problem = model_folder_problem(model_dir)
    if problem:
        raise SpecError([("spec.model.uri", problem)])
    if index is None:
        index = WeightIndex(weight_files(model_dir, allow_pickle))
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    config.use_cache = False
    torch_dtype = DTYPES[dtype]
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(
            config, trust_remote_code=trust_remote_code, dtype=torch_dtype
        )
    model.tie_weights()  # tied tensors (head = embeddings) are stored once; share the meta parameter
    model.eval()
    device = device or default_device()
    blocks_path, block_list = find_blocks(model, blocks)
    stored_as = stored_names(model, index.location)
    check_shapes(model, index, stored_as)
    return ModelHandle(
        model_dir=model_dir,
        model=model,
        index=index,
        dtype=torch_dtype,
        device=device,
        blocks_path=blocks_path,
        blocks=block_list,
        aliases=tied_aliases(model),
        stored_as=stored_as,
    )


def check_shapes(model: nn.Module, index: "WeightIndex", stored_as: dict[str, str]) -> None:
    """Every stored tensor the skeleton uses has the shape config.json gives it (before any read)."""
    for name, param in model.state_dict(keep_vars=True).items():
        stored = index.location.get(stored_as.get(name, name))
        shape = getattr(stored, "shape", None)  # a local file's or a bucket object's header entry
        if shape is not None and tuple(shape) != tuple(param.shape):
            where = stored.path.name if isinstance(stored, StoredTensor) else stored.key
            raise ModelFormatError(f"{where}: tensor {stored_as.get(name, name)} has shape "
                                   f"{list(shape)}, but config.json makes {name} {list(param.shape)}")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
