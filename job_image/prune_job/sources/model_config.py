"""A model folder's config.json, checked cheaply before heavy work: it must be a JSON mapping
with a `model_type`, sizes that are positive integers of a sane magnitude, and a position limit
that the spec's sequence lengths respect. `prune-job validate` (local models) and `run` (after
resolving the model, before building it) ask `config_problems`; no torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from prune_job.spec import PruneJobSpec

Problems = list[tuple[str, str]]
SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
             "vocab_size", "max_position_embeddings", "n_embd", "n_layer", "n_head", "n_positions", "d_model",
             "head_dim", "ffn_dim")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
MAX_SIZE = 1 << 24  # no dimension, layer count or vocabulary of a real model comes near this


def read_config(model_dir: Path) -> tuple[Optional[dict[str, Any]], Problems]:
    """(config, problems): the problems name config.json and the key."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None, [("spec.model.uri", f"{model_dir} has no config.json (not a Hugging Face model folder)")]
    except (UnicodeDecodeError, ValueError) as err:
        return None, [("spec.model.uri", f"{path}: not JSON ({type(err).__name__})")]
    if not isinstance(config, dict):
        return None, [("spec.model.uri", f"{path}: a {type(config).__name__}, not a mapping")]
    problems = []
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        problems.append(("spec.model.uri", f"{path}: no model_type (which architecture is this?)"))
    for key in SIZE_KEYS:
        value = config.get(key)
        if value is not None and (type(value) is not int or not 0 < value <= MAX_SIZE):
            problems.append(("spec.model.uri", f"{path}: {key} = {value!r} is not a size (a whole number "
                                               f"from 1 to {MAX_SIZE})"))
    return config, problems


def position_limit(config: dict[str, Any]) -> Optional[tuple[str, int]]:
    for key in POSITION_KEYS:
        value = config.get(key)
        if type(value) is int and value > 0:
            return key, value
    return None


def config_problems(model_dir: Path, spec: PruneJobSpec) -> Problems:
    """What config.json says against itself and against the spec's sequence lengths."""
    config, problems = read_config(model_dir)
    if config is None or problems:
        return problems
    limit = position_limit(config)
    if limit is None:
        return []
    key, n = limit
    lengths = []
    if spec.pruning.needs_calibration:
        lengths.append(("spec.calibration.sequenceLength", spec.calibration.sequence_length))
    if spec.evaluation.enabled:
        lengths.append(("spec.evaluation.perplexity.sequenceLength", spec.evaluation.perplexity.sequence_length))
        g = spec.evaluation.generation
        if g.enabled:
            lengths.append(("spec.evaluation.generation.promptTokens", g.prompt_tokens + g.new_tokens))
    return [(field, f"{value} tokens exceed the model's position limit ({key} = {n} in config.json)"
             + (" with newTokens" if field.endswith("promptTokens") else ""))
            for field, value in lengths if value > n]
