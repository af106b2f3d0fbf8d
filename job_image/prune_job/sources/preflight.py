"""Cheap checks of a parsed spec against this machine: local paths exist,
builtins are installed, pickle is refused unless allowed. No torch, no
network, nothing heavy: `prune-job validate` runs only these. Each check asks
the function the runtime asks, so the two never disagree."""
from __future__ import annotations

import os
from pathlib import Path

from prune_job.sources.builtin import builtin_problem
from prune_job.sources.model_config import config_problems
from prune_job.sources.models import ModelFormatError, model_folder_problem, weight_files
from prune_job.sources.output import output_problems
from prune_job.sources.tasks import task_problems
from prune_job.sources.texts import data_file_problem
from prune_job.sources.uris import parse_uri
from prune_job.spec import PruneJob, SpecError

Problems = list[tuple[str, str]]


def check_model(job: PruneJob) -> Problems:
    m = job.spec.model
    uri = parse_uri(m.uri)
    if uri.scheme == "builtin":
        problem = builtin_problem(uri.authority)
        return [("spec.model.uri", problem)] if problem else []
    if not uri.is_local:
        return []
    path = uri.local_path()
    problem = model_folder_problem(path)
    if problem:
        return [("spec.model.uri", problem)]
    try:
        weight_files(path, m.allow_pickle)
    except SpecError as err:
        return err.problems
    except ModelFormatError as err:
        return [("spec.model.allowPickle", str(err))]
    return config_problems(path, job.spec)


def check_data(uri: str, field: str) -> Problems:
    parsed = parse_uri(uri)
    if not parsed.is_local:
        return []
    problem = data_file_problem(parsed.local_path())
    return [(field, problem)] if problem else []


def check_output(job: PruneJob) -> Problems:
    uri = parse_uri(job.spec.output.uri)
    if not uri.is_local:
        return []
    path = uri.local_path()
    if path.exists() and not path.is_dir():
        return [("spec.output.uri", f"{path} exists and is not a directory")]
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK):
        return [("spec.output.uri", f"{parent} is not writable")]
    return []


def preflight(job: PruneJob) -> Problems:
    spec = job.spec
    problems = check_model(job) + check_output(job) + output_problems(job)
    if spec.pruning.needs_calibration:
        problems += check_data(spec.calibration.uri, "spec.calibration.uri")
    if spec.evaluation.enabled:
        problems += check_data(spec.evaluation.perplexity.uri, "spec.evaluation.perplexity.uri")
        problems += task_problems(job)
    return problems
