"""Data sources: a data URI read into one running text or into rows.

`builtin:pydoc` is the CPython pydoc topics text minus its last quarter, which
is `builtin:pydoc-heldout`: evaluation never sees calibration text. Files are
`.txt` (one text) or `.jsonl` (rows of `{"text": ...}` or `{"input_ids": [...]}`);
`s3://` objects are fetched into the cache first.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from prune_job.sources.uris import parse_uri
from prune_job.spec import SpecError

HELDOUT_FRACTION = 0.25
DATA_SUFFIXES = (".txt", ".jsonl")


def pydoc_text(part: str) -> str:
    """Deterministic split of pydoc_data.topics: 'pydoc' (calibration) or 'pydoc-heldout'."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    cut = text.rfind("\n\n", 0, int(len(text) * (1 - HELDOUT_FRACTION)))
    return text[:cut] if part == "pydoc" else text[cut + 2 :]


@dataclass
class TextSource:
    """Either one running text, or rows (each text or exact token ids)."""

    text: Optional[str] = None
    rows: Optional[list[dict[str, Any]]] = None
    name: str = ""


def read_source(uri: str, field: str, fetch: Optional[Callable[[str], Path]] = None) -> TextSource:
    """Read a data URI; `fetch` turns remote URIs (s3://) into local files."""
    parsed = parse_uri(uri)
    if parsed.scheme == "builtin":
        return TextSource(text=pydoc_text(parsed.authority), name=uri)
    if parsed.is_remote:
        if fetch is None:
            raise SpecError([(field, "s3:// data needs the storage extra (minio)")])
        path = fetch(uri)
    else:
        path = parsed.local_path()
    problem = data_file_problem(path)
    if problem:
        raise SpecError([(field, problem)])
    try:
        if path.suffix == ".txt":
            return TextSource(text=path.read_text(encoding="utf-8"), name=uri)
        return TextSource(rows=_read_jsonl(path, field), name=uri)
    except UnicodeDecodeError as err:
        raise SpecError([(field, f"{path.name}: not UTF-8 text (byte {err.start}); save it as UTF-8")]) from None


def data_file_problem(path: Path) -> Optional[str]:
    """Why `path` cannot be a calibration or evaluation file, or None (also run by preflight)."""
    if not path.is_file():
        return f"{path} does not exist or is not a file"
    if path.suffix not in DATA_SUFFIXES:
        return f"{path.name}: use a .txt or .jsonl file"
    return None


def _read_jsonl(path: Path, field: str) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SpecError([(field, f"{path.name} line {n}: not JSON ({err.msg})")]) from None
            if not isinstance(row, dict) or not ({"text", "input_ids"} & row.keys()):
                raise SpecError([(field, f'{path.name} line {n}: expected {{"text": ...}} or {{"input_ids": [...]}}')])
            rows.append(row)
    if not rows:
        raise SpecError([(field, f"{path.name} has no rows")])
    return rows


