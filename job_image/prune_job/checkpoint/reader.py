"""Reading checkpoints back: `CompressedReader` decodes tensors one at a time
(each shard checked against the manifest's sha256 before its first read) and
`load_pretrained` rebuilds an ordinary transformers model from a compressed or
dense checkpoint, shard by shard, without a second copy of the model."""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import torch

from prune_job.checkpoint.dtypes import CODE_DTYPES, NAME_DTYPES, WIDE_FLOATS
from prune_job.checkpoint.encoding import decode
from prune_job.checkpoint.headers import StoredTensor, check_infos, check_parts, read_header, read_index, read_tensor
from prune_job.checkpoint.manifest import MANIFEST, CheckpointError, manifest_entries, read_manifest, verify_file
from prune_job.checkpoint.writer import COMPRESSED_INDEX, DENSE_INDEX
from prune_job.pipeline.memory import release_freed_memory
from prune_job.sources.uris import parse_uri

log = logging.getLogger(__name__)


class VerifiedFolder:
    """A checkpoint folder whose files are checked against manifest.json once, on first use."""

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.entries = manifest_entries(self.manifest, self.folder / MANIFEST)
        self._verified: set[str] = set()

    @property
    def format(self) -> str:
        return self.manifest.get("format", "dense")

    def path(self, name: str) -> Path:
        if name not in self._verified:
            entry = self.entries.get(name)
            if entry is None:
                raise CheckpointError(f"{self.folder / name}: not listed in {MANIFEST}")
            verify_file(self.folder, entry)
            self._verified.add(name)
        return self.folder / name

    def verify_all(self) -> None:
        for name in self.entries:
            self.path(name)


class CompressedReader:
    """Tensors of a compressed checkpoint by their state-dict names: `name in r`,
    `r.keys()`, `r.read(names) -> {name: tensor}`, `r.location` (name -> shard)."""

    def __init__(self, folder: Union[str, Path, VerifiedFolder]):
        self.checked = folder if isinstance(folder, VerifiedFolder) else VerifiedFolder(folder)
        if self.checked.format != "compressed":
            raise CheckpointError(f"{self.checked.folder}: format {self.checked.format!r}, not compressed")
        index = read_index(self.checked.path(COMPRESSED_INDEX), self.checked.entries)
        self.weight_map: dict[str, str] = index["weight_map"]
        self.infos: dict[str, dict[str, Any]] = index["tensors"]
        check_infos(self.checked.folder / COMPRESSED_INDEX, self.infos, self.weight_map)
        self._headers: dict[str, dict[str, StoredTensor]] = {}
        self.location: dict[str, Path] = {
            name: self.checked.folder / self.weight_map[self._stored_names(name)[0]] for name in self.infos
        }

    def _stored_names(self, name: str) -> list[str]:
        info = self.infos[name]
        return list(info["parts"].values()) if "parts" in info else [name]

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def keys(self) -> Iterable[str]:
        return self.infos.keys()

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        by_shard: dict[str, list[str]] = defaultdict(list)
        for name in names:
            if name not in self.infos:
                raise KeyError(f"{self.checked.folder}: no tensor {name!r} in the checkpoint")
            by_shard[self.weight_map[self._stored_names(name)[0]]].append(name)
        out = {}
        for shard, group in by_shard.items():
            header = self.header(shard)
            for name in group:
                out[name] = self._decode(shard, header, name)
        return out

    def header(self, shard: str) -> dict[str, StoredTensor]:
        """A shard's checked safetensors header (verified against the manifest first)."""
        if shard not in self._headers:
            self._headers[shard] = read_header(self.checked.path(shard))
        return self._headers[shard]

    def _decode(self, shard: str, header: dict[str, StoredTensor], name: str) -> torch.Tensor:
        info = self.infos[name]
        where = f"{self.checked.folder / shard}: tensor {name!r}"
        stored = info["parts"] if "parts" in info else {"tensor": name}
        missing = [s for s in stored.values() if s not in header]
        if missing:
            raise CheckpointError(f"{where}: {missing[0]!r} is not in the shard's header")
        if "parts" not in info:
            return read_tensor(header[name], name)
        check_parts(where, info, {role: header[s] for role, s in stored.items()})
        return decode(info, {role: read_tensor(header[s], s) for role, s in stored.items()}, where)

    def iter_shards(self) -> Iterator[tuple[str, list[str]]]:
        """(shard file, the tensor names stored in it), in file order."""
        by_shard: dict[str, list[str]] = defaultdict(list)
        for name in self.infos:
            by_shard[self.weight_map[self._stored_names(name)[0]]].append(name)
        yield from sorted(by_shard.items())

    def pattern_of(self, name: str) -> Optional[str]:
        return self.infos.get(name, {}).get("pattern")


def load_pretrained(path_or_uri: Union[str, Path], device: Union[str, torch.device, None] = None,
                    semi_structured: bool = False, cache_dir: Union[str, Path, None] = None,
                    trust_remote_code: bool = False) -> torch.nn.Module:
    """A transformers model from a checkpoint folder or `s3://bucket/prefix` (downloaded into `cache_dir`).

    Every file is checked against manifest.json (a folder without one is refused as incomplete).
    `semi_structured=True` (CUDA, float16/bfloat16) turns 2:4 Linear weights into PyTorch
    semi-structured sparse tensors."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if semi_structured and device.type != "cuda":
        raise ValueError("semi_structured=True needs a CUDA device (PyTorch's 2:4 sparse kernels are CUDA-only)")
    folder = _local_folder(path_or_uri, cache_dir)
    checked = VerifiedFolder(folder)
    if checked.format == "compressed":
        reader = CompressedReader(checked)
        model = _load_compressed(reader, device, trust_remote_code)
    elif checked.format == "dense":
        checked.verify_all()
        model = _load_dense(checked, device, trust_remote_code)
        reader = None
    else:
        raise CheckpointError(f"{folder}: unknown checkpoint format {checked.format!r}")
    model.eval()
    if semi_structured:
        from prune_job.evaluation.kernels import to_semi_structured  # the one conversion for runtime

        stored_2_4 = None if reader is None else {n for n in reader.infos if reader.pattern_of(n) == "2:4"}
        to_semi_structured(model, stored_2_4)
    return model


def _local_folder(path_or_uri: Union[str, Path], cache_dir: Union[str, Path, None]) -> Path:
    text = str(path_or_uri)
    uri = parse_uri(text)
    if uri.is_remote:
        from prune_job import storage

        if cache_dir is None:
            from prune_job.sources.builtin import cache_root

            cache_dir = cache_root() / "s3"
        return storage.fetch_model(text, Path(cache_dir))
    folder = uri.local_path()
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory")
    return folder


def _first_float_dtype(files: Iterable[Path]) -> Optional[torch.dtype]:
    """The dtype of the first floating-point tensor stored in these safetensors files."""
    for path in files:
        for _, stored in sorted(read_header(path).items()):
            dtype = CODE_DTYPES.get(stored.dtype)
            if dtype in WIDE_FLOATS:
                return dtype
    return None


def _stored_dtype(reader: CompressedReader) -> torch.dtype:
    for info in reader.infos.values():
        if info.get("dtype") in NAME_DTYPES:
            return NAME_DTYPES[info["dtype"]]
    shards = [reader.checked.path(shard) for shard, _ in reader.iter_shards()]
    return _first_float_dtype(shards) or torch.float32


@torch.no_grad()
def _load_compressed(reader: CompressedReader, device: torch.device, trust_remote_code: bool) -> torch.nn.Module:
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    from transformers import AutoConfig, AutoModelForCausalLM

    folder = reader.checked.folder
    config = AutoConfig.from_pretrained(reader.checked.path("config.json").parent, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=_stored_dtype(reader),
                                                 trust_remote_code=trust_remote_code)
    wanted = set(model.state_dict().keys())
    for _, names in reader.iter_shards():  # one shard at a time, one tensor at a time
        for name in names:
            if name not in wanted:
                log.warning("%s: tensor %s has no place in %s; ignored", folder, name, type(model).__name__)
                continue
            tensor = reader.read([name])[name]
            set_module_tensor_to_device(model, name, device, value=tensor)
        release_freed_memory()  # decode buffers of this shard go back to the OS, not to the next peak
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise CheckpointError(f"{folder}: the checkpoint has no tensor for {', '.join(missing[:5])}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return model.to(device)  # the buffers the model computes itself (rotary tables) were built on the CPU


def _load_dense(checked: VerifiedFolder, device: torch.device, trust_remote_code: bool) -> torch.nn.Module:
    folder = checked.folder
    stale = [p.name for p in sorted([*folder.glob("*.safetensors"), *folder.glob("*.safetensors.index.json")])
             if p.name not in checked.entries]
    if stale:  # from_pretrained would load a file the manifest does not vouch for
        raise CheckpointError(f"{folder / stale[0]}: not listed in {MANIFEST}; a file of another run? Remove it")
    if DENSE_INDEX in checked.entries:
        read_index_map(checked.path(DENSE_INDEX), checked.entries)
    files = [checked.path(n) for n in sorted(checked.entries) if n.endswith(".safetensors")]
    dtype = _first_float_dtype(files) or "auto"
    return load_hf_folder(folder, dtype, device, trust_remote_code)


def read_index_map(path: Path, listed: dict[str, Any]) -> None:
    """A dense index (model.safetensors.index.json) names only files of the manifest."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
        shards = set(doc["weight_map"].values())
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: not an index with a weight_map ({type(err).__name__})") from None
    for shard in shards:
        if not isinstance(shard, str) or shard not in listed:
            raise CheckpointError(f"{path}: names shard {shard!r}, which {MANIFEST} does not list")


def load_hf_folder(folder: Path, dtype: Union[str, torch.dtype], device: torch.device,
                   trust_remote_code: bool = False) -> torch.nn.Module:
    """A plain Hugging Face folder, whole, on `device`: the one `from_pretrained` of the project
    (a dense-format checkpoint here, the source model in the evaluation)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map={"": str(device)},
                                                 trust_remote_code=trust_remote_code)
    return model.eval()
