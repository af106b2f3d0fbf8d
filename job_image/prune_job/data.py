"""Calibration and evaluation token windows (README, "Running a PruneJob on one machine").

`.txt` is tokenised and cut into consecutive windows of `sequenceLength`
tokens, BOS first where the tokenizer has one. `.jsonl` rows are
`{"text": ...}` (tokenised, truncated) or `{"input_ids": [...]}` (used exactly,
one sample per row). Reading the files is `sources.texts`'s job.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Optional, Union

import torch

from prune_job.sources.texts import TextSource
from prune_job.spec import SpecError

log = logging.getLogger(__name__)


def token_windows(
    source: TextSource,
    tokenizer: Any,
    samples: int,
    length: int,
    seed: int,
    field: str,
    vocab_size: Optional[int] = None,
) -> list[torch.Tensor]:
    """`samples` windows (1-D token id tensors), taken in order from the start."""
    if source.rows is not None:
        windows = [_row_ids(row, tokenizer, length, field, n) for n, row in enumerate(source.rows[:samples], 1)]
        if len(windows) < samples:
            raise SpecError([(f"{field.rsplit('.', 1)[0]}.samples",
                              f"asks for {samples} samples but {source.name} has {len(windows)} rows")])
    else:
        windows = _text_windows(source, tokenizer, samples, length, seed, field)
    if vocab_size is not None:
        for n, w in enumerate(windows):
            if len(w) and (int(w.max()) >= vocab_size or int(w.min()) < 0):
                raise SpecError([(field, f"sample {n}: token ids must lie in [0, {vocab_size})")])
    return windows


def _require_tokenizer(tokenizer: Any, field: str) -> Any:
    if isinstance(tokenizer, LazyTokenizer):
        tokenizer = tokenizer.get()
    if tokenizer is None:
        raise SpecError([(field, "text needs a tokenizer, and the model folder has none; "
                                 'give token ids instead (.jsonl rows {"input_ids": [...]})')])
    return tokenizer


def _row_ids(row: dict[str, Any], tokenizer: Any, length: int, field: str, n: int) -> torch.Tensor:
    if "input_ids" in row:
        ids = row["input_ids"]
        if not isinstance(ids, list) or not ids or not all(type(i) is int and 0 <= i < 2**31 for i in ids):
            raise SpecError([(field, f"row {n}: input_ids must be a non-empty list of integers in [0, 2^31) "
                                     "(true/false are not token ids)")])
        if len(ids) > length:  # used exactly: never cut, never recorded under a shorter length
            raise SpecError([(field, f"row {n}: {len(ids)} input_ids, longer than sequenceLength {length}; "
                                     "shorten the row or raise sequenceLength")])
        return torch.tensor(ids, dtype=torch.long)
    if not isinstance(row["text"], str):
        raise SpecError([(field, f"row {n}: text must be a string")])
    ids = _require_tokenizer(tokenizer, field)(row["text"], truncation=True, max_length=length)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _text_windows(source: TextSource, tokenizer: Any, samples: int, length: int, seed: int, field: str) -> list[torch.Tensor]:
    tok = _require_tokenizer(tokenizer, field)
    ids = torch.tensor(tok(source.text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    bos = getattr(tok, "bos_token_id", None)
    body = length - 1 if bos is not None else length
    if body < 1 or len(ids) < body:
        raise SpecError([(f"{field.rsplit('.', 1)[0]}.sequenceLength",
                          f"{length} tokens is longer than {source.name} ({len(ids)} tokens)")])
    count = min(samples, len(ids) // body)
    starts = [k * body for k in range(count)]
    if count < samples:
        # Not enough distinct text: the rest start at seeded random offsets (recorded in the log).
        log.warning("%s gives %d windows of %d tokens; %d more start at random offsets (seed %d)",
                    source.name, count, length, samples - count, seed)
        g = torch.Generator().manual_seed(seed)
        starts += torch.randint(0, len(ids) - body + 1, (samples - count,), generator=g).tolist()
    prefix = torch.tensor([bos], dtype=torch.long) if bos is not None else torch.empty(0, dtype=torch.long)
    return [torch.cat([prefix, ids[s : s + body]]) for s in starts]


def micro_batches(windows: list[torch.Tensor], tokens_per_batch: int) -> list[torch.Tensor]:
    """Stack windows of equal length into [B, L] batches of about `tokens_per_batch` tokens."""
    batches: list[torch.Tensor] = []
    by_length: dict[int, list[torch.Tensor]] = {}
    for w in windows:
        by_length.setdefault(len(w), []).append(w)
    for length, group in by_length.items():
        size = max(1, tokens_per_batch // max(length, 1))
        batches += [torch.stack(group[k : k + size]) for k in range(0, len(group), size)]
    return batches


def ids_digest(windows: list[torch.Tensor]) -> str:
    """sha256 of the token ids used, for the manifest."""
    h = hashlib.sha256()
    for w in windows:
        h.update(w.to(torch.int64).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()


class LazyTokenizer:
    """The model folder's tokenizer, loaded the first time text has to be tokenised:
    token-id data never pay for it (its imports and tables are tens of MB of host memory)."""

    def __init__(self, model_dir: Union[str, Path], trust_remote_code: bool = False):
        self.model_dir = model_dir
        self.trust_remote_code = trust_remote_code
        self._loaded = False
        self._tokenizer: Any = None

    def get(self) -> Any:
        """The tokenizer, or None when the folder ships none."""
        if not self._loaded:
            self._tokenizer = load_tokenizer(self.model_dir, self.trust_remote_code)
            self._loaded = True
        return self._tokenizer


def load_tokenizer(model_dir: Union[str, Path], trust_remote_code: bool = False) -> Any:
    """The model folder's tokenizer, or None when it ships none."""
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
    if not any((Path(model_dir) / n).exists() for n in names):
        return None
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
