"""Where the checkpoint goes, checked before any work: a local output folder may not be, contain,
or lie inside the model folder, and may not be or contain the folder of a local calibration or
evaluation file (a folder beside the data, such as `data/out` for `data/cal.jsonl`, is fine: the
writer never leaves its folder, so it cannot reach the file); and a
non-empty folder that holds no previous run of this tool (no manifest.json, no journal.json, no
shard named as the checkpoint writer names them) is
refused, or cleared when `spec.output.overwrite: true`. So a stale `model.safetensors` never sits
beside a new checkpoint, and a run never writes into its own inputs. No torch.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Optional

from prune_job.sources.uris import parse_uri
from prune_job.spec import PruneJob

Problems = list[tuple[str, str]]
RUN_MARKERS = ("manifest.json", "journal.json")  # what a previous run of prune-job leaves


def _local(uri: str) -> Optional[Path]:
    parsed = parse_uri(uri)
    return parsed.local_path().resolve() if parsed.is_local else None


def _inputs(job: PruneJob, model_dir: Optional[Path]) -> list[tuple[str, Path, bool]]:
    """(what, folder, whether the output may not lie inside it either)."""
    spec = job.spec
    found = []
    model = Path(model_dir).resolve() if model_dir is not None else _local(spec.model.uri)
    if model is not None:
        found.append(("the model folder (spec.model.uri)", model, True))
    data = [("spec.calibration.uri", spec.calibration.uri)] if spec.pruning.needs_calibration else []
    if spec.evaluation.enabled:
        data.append(("spec.evaluation.perplexity.uri", spec.evaluation.perplexity.uri))
    for field, uri in data:
        path = _local(uri)
        if path is not None:
            found.append((f"the folder of {field}", path.parent, False))
    return found


# Shards as the checkpoint writer names them, final or provisional: a run that crashed before its
# manifest (the writer removes an old manifest first) is still a run of prune-job.
WRITER_SHARD = re.compile(r"^model-[0-9]{5}(-of-[0-9]{5})?[.]safetensors([.]data|[.]tmp)?$")


def is_previous_run(folder: Path) -> bool:
    """The folder holds a run of prune-job: its manifest, its journal, or the writer's shards."""
    return any((folder / marker).exists() for marker in RUN_MARKERS) or any(
        WRITER_SHARD.match(p.name) for p in folder.iterdir())


def output_problems(job: PruneJob, model_dir: Optional[Path] = None) -> Problems:
    """Why the output location cannot be written, or []: overlap with an input, or a foreign non-empty folder."""
    out = _local(job.spec.output.uri)
    if out is None:
        return []
    for what, folder, not_inside in _inputs(job, model_dir):
        if out == folder or (not_inside and out.is_relative_to(folder)) or folder.is_relative_to(out):
            relation = "is" if out == folder else "lies inside" if out.is_relative_to(folder) else "contains"
            return [("spec.output.uri", f"{out} {relation} {what} ({folder}); write the checkpoint elsewhere")]
    if out.is_dir() and any(out.iterdir()) and not is_previous_run(out) and not job.spec.output.overwrite:
        return [("spec.output.uri", f"{out} is not empty and holds no previous run of prune-job (no "
                                    f"{' or '.join(RUN_MARKERS)}); choose an empty folder, or set "
                                    "spec.output.overwrite: true to clear it first")]
    return []


def clear_if_asked(job: PruneJob) -> None:
    """With `overwrite: true`, empty a local output folder that is not a previous run (checked by
    `output_problems` first: never an input's folder)."""
    out = _local(job.spec.output.uri)
    if out is None or not job.spec.output.overwrite or not out.is_dir() or is_previous_run(out):
        return
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
