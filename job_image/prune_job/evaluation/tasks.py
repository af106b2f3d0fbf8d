"""Task accuracy beside perplexity: zero-shot multiple-choice accuracy of the
dense and the sparse model through lm-evaluation-harness, on the same documents,
with the same limit, batch size, dtype and device (spec.evaluation.tasks).

Each model is loaded whole, wrapped in lm-eval's `HFLM` (which takes a model
instance), scored on every task, and freed before the next. The sparse model is
read from the written checkpoint with `checkpoint.reader.load_pretrained`, as a
user would read it. Nothing is downloaded: lm-eval runs with HF_DATASETS_OFFLINE
and HF_HUB_OFFLINE set. A task that fails is recorded (`skipped`) with its reason;
the other figures stay.

lm-eval is the optional extra `[tasks]`; it is imported only here, when tasks run.
"""
from __future__ import annotations

import gc
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from prune_job.data import LazyTokenizer
from prune_job.pipeline.memory import release_freed_memory
from prune_job.pipeline.model import DTYPES
from prune_job.sources import tasks as sources
from prune_job.sources.tasks import is_task_file, missing_extra, resolve_tasks
from prune_job.spec import Results, ResultsDetail, TaskAccuracy, TaskDetail, TasksDetail, TasksEval

log = logging.getLogger(__name__)
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
METRIC = "acc"

Scores = dict[str, dict[str, Optional[float]]]  # spec name -> {"acc", "stderr", "documents"}


def measure(models: Any, tasks: TasksEval, tokenizer: Any, progress: Any = None
            ) -> tuple[list[TaskAccuracy], Optional[TasksDetail], list[str]]:
    """Dense, then sparse, on every task. Returns the per-task figures, how they were measured, and notes."""
    if not sources.lm_eval_available():
        raise RuntimeError(missing_extra())  # preflight refuses such a spec; this is for direct callers
    tokenizer = tokenizer.get() if isinstance(tokenizer, LazyTokenizer) else tokenizer
    if tokenizer is None:
        reason = "the model folder ships no tokenizer, which lm-eval needs"
        skipped = [TaskAccuracy(task=n, skipped=reason) for n in tasks.names]
        return skipped, None, [f"task accuracy not measured: {reason}"]
    with tempfile.TemporaryDirectory(prefix="prune-job-tasks-") as workdir:
        return _measure(models, tasks, tokenizer, Path(workdir), progress)


def _measure(models: Any, tasks: TasksEval, tokenizer: Any, workdir: Path, progress: Any
             ) -> tuple[list[TaskAccuracy], TasksDetail, list[str]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    resolved = dict(zip(tasks.names, resolve_tasks(tasks, workdir)))
    scores: dict[str, Scores] = {}
    notes: list[str] = []
    loaded_by = "load_pretrained" if models.sparse_dir is not None else "the pruned state dict over the dense model"
    manager = TaskManager(include_defaults=any(isinstance(t, str) for t in resolved.values()))  # index once
    for variant in ("dense", "sparse"):
        model = _load(models, variant == "sparse")
        try:
            scores[variant] = _score(model, tokenizer, resolved, tasks, manager, progress, variant, notes)
        finally:
            del model
            _free(models.device)
    accuracy = [_accuracy(name, scores["dense"][name], scores["sparse"][name]) for name in tasks.names]
    detail = TasksDetail(lm_eval_version=lm_eval.__version__, limit=tasks.limit, batch_size=tasks.batch_size,
                         sparse_loaded_by=loaded_by, seconds=time.perf_counter() - t0,
                         tasks=[TaskDetail(task=n, name=scores["dense"][n].get("name"),
                                           documents=scores["dense"][n].get("documents")) for n in tasks.names])
    return accuracy, detail, notes


def _load(models: Any, sparse: bool) -> nn.Module:
    """The dense model from its folder; the sparse one from the written checkpoint through
    `load_pretrained` (or, evaluating a state dict, over the dense skeleton), in the run's dtype."""
    if sparse and models.sparse_dir is not None:
        from prune_job.checkpoint.reader import load_pretrained

        model = load_pretrained(models.sparse_dir, models.device, trust_remote_code=models.trust_remote_code)
        return model.to(DTYPES[models.dtype])
    return models.load(sparse=sparse).eval()


def _score(model: nn.Module, tokenizer: Any, resolved: dict[str, Any], tasks: TasksEval, manager: Any, progress,
           variant: str, notes: list[str]) -> Scores:
    """Every task on one model; a failing task is recorded, not raised."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=tasks.batch_size, device=str(model.device))
    if progress is not None:
        progress.stage(f"tasks-{variant}", total=len(resolved), unit="task")
    out: Scores = {}
    for k, (name, task) in enumerate(resolved.items()):
        try:
            with _offline():
                found = simple_evaluate(model=lm, tasks=[task], num_fewshot=0, limit=tasks.limit,
                                        task_manager=manager, log_samples=False, bootstrap_iters=1000,
                                        random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                        fewshot_random_seed=0)
            out[name] = _figures(found)
        except Exception as err:  # noqa: BLE001 - recorded in the results with its reason, never lost
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}".rstrip(": ")
            notes.append(f"task {name} ({variant}) not measured: {reason}")
            log.warning("task %s (%s) not measured: %s", name, variant, reason)
            out[name] = {"skipped": reason}
        if progress is not None:
            progress.advance(k + 1)
    return out


@contextmanager
def _offline() -> Iterator[None]:
    """Nothing from a hub for the duration of one lm-eval call: HF_DATASETS_OFFLINE and HF_HUB_OFFLINE
    set, and since huggingface_hub and datasets read them once, at import, their flags set too."""
    import datasets
    import huggingface_hub

    flags = [(huggingface_hub.constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"),
             (datasets.config, "HF_DATASETS_OFFLINE")]
    env = {k: os.environ.get(k) for k in OFFLINE}
    before = [getattr(module, name) for module, name in flags]
    os.environ.update(OFFLINE)
    for module, name in flags:
        setattr(module, name, True)
    try:
        yield
    finally:
        for (module, name), value in zip(flags, before):
            setattr(module, name, value)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _figures(found: Optional[dict]) -> dict[str, Any]:
    """The one task's accuracy, its stderr and the documents scored, from lm-eval's results."""
    results = (found or {}).get("results") or {}
    if len(results) != 1:
        raise ValueError(f"expected one task's results from lm-eval, got {sorted(results)}")
    name, figures = next(iter(results.items()))
    acc = figures.get(f"{METRIC},none")
    if acc is None:
        raise ValueError(f"lm-eval reported no `{METRIC}` for {name} (a multiple_choice task reports it)")
    stderr = figures.get(f"{METRIC}_stderr,none")
    documents = ((found.get("n-samples") or {}).get(name) or {}).get("effective")
    return {"name": name, "acc": float(acc), "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            "documents": documents}


def _accuracy(task: str, dense: dict[str, Any], sparse: dict[str, Any]) -> TaskAccuracy:
    skipped = dense.get("skipped") or sparse.get("skipped")
    d, s = dense.get("acc"), sparse.get("acc")
    return TaskAccuracy(task=task, dense=d, sparse=s, dense_stderr=dense.get("stderr"),
                        sparse_stderr=sparse.get("stderr"), skipped=skipped,
                        change_points=100.0 * (s - d) if d is not None and s is not None else None)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    release_freed_memory()


# ---------------------------------------------------------------- report


def short_name(task: str) -> str:
    """A short name for tables and plots: a task file's name, otherwise the name as given."""
    return Path(task).name if is_task_file(task) else task


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100.0 * value:.1f}%"


def _points(value: Optional[float]) -> str:
    return "" if value is None else f"{value:+.1f} pts"


def summary_rows(results: Results) -> list[list[str]]:
    """[label, dense, sparse, change, ""] rows of the summary table: one per task."""
    return [[f"{short_name(t.task)} accuracy", _pct(t.dense), _pct(t.sparse),
             _points(t.change_points) or (t.skipped or "")[:60], ""] for t in results.tasks]


def _stderr(value: Optional[float], err: Optional[float]) -> str:
    return _pct(value) if err is None else f"{_pct(value)} ± {100.0 * err:.1f}"


def report_section(detail: ResultsDetail) -> list[str]:
    """report.md's "Task accuracy" section (empty when no task ran)."""
    if not detail.tasks:
        return []
    d = detail.tasks_detail
    how = "" if d is None else (
        f"Zero-shot, lm-evaluation-harness {d.lm_eval_version}, {'all' if d.limit is None else f'the first {d.limit}'} "
        f"documents of each task, batch size {d.batch_size}, the same documents for dense and sparse; the sparse "
        f"model read back with {d.sparse_loaded_by}. Accuracy ± lm-eval's standard error; the change in points.")
    names = {t.task: t for t in d.tasks} if d else {}
    rows = [[t.task, (names[t.task].name or "") if t.task in names else "",
             str(names[t.task].documents or "–") if t.task in names else "–", _stderr(t.dense, t.dense_stderr),
             _stderr(t.sparse, t.sparse_stderr), _points(t.change_points), t.skipped or ""] for t in detail.tasks]
    table = ["| task | lm-eval name | documents | dense | sparse | change | skipped |", "|---|---|---|---|---|---|---|"]
    return ["## Task accuracy", "", how, ""] + table + ["| " + " | ".join(r) + " |" for r in rows] + [""]
