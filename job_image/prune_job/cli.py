"""`prune-job`: validate or run one PruneJob document on this machine (or in its pod);
`prune-job sweep` runs a PruneSweep here (prune_job.sweep.cli)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from prune_job.spec import PruneJob, SpecError, parse_prunejob

EXIT_BAD_SPEC = 2
EXIT_FAILED = 1


class CliError(Exception):
    """A failure the user can act on: printed as one message, no traceback."""


def load_document(path: str, kinds: tuple[str, ...] = ("PruneJob",)) -> dict[str, Any]:
    """The one document of one of `kinds` in a YAML file (a document without `kind` is a PruneJob)."""
    file = Path(path)
    if not file.is_file():
        raise CliError(f"{path}: no such file")
    try:
        docs = [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as err:
        raise CliError(f"{path}: not valid YAML: {err}") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind", "PruneJob") in kinds]
    if len(jobs) != 1:
        raise CliError(f"{path}: expected exactly one {' or '.join(kinds)} document, found {len(jobs)}")
    return jobs[0]


def parse_file(path: str, check_machine: bool = True) -> PruneJob:
    job = parse_prunejob(load_document(path))
    if check_machine:
        from prune_job.sources.preflight import preflight

        problems = preflight(job)
        if problems:
            raise SpecError(problems)
    return job


def cmd_validate(args: argparse.Namespace) -> int:
    if load_document(args.spec, ("PruneJob", "PruneSweep")).get("kind") == "PruneSweep":
        from prune_job.sweep.cli import validate_sweep

        args.kind = "PruneSweep"
        return validate_sweep(args.spec)
    job = parse_file(args.spec)
    print(f"{args.spec}: valid PruneJob {job.metadata.name!r} "
          f"({job.spec.pruning.method}, {job.spec.pruning.pattern}, sparsity {job.spec.pruning.sparsity:g})")
    return 0


def make_reporter(kind: str, job: PruneJob):
    if kind == "kubernetes":
        from prune_job.status import KubernetesReporter

        name = os.environ.get("PRUNEJOB_NAME") or job.metadata.name
        namespace = os.environ.get("PRUNEJOB_NAMESPACE") or job.metadata.namespace or "default"
        return KubernetesReporter(name=name, namespace=namespace)
    from prune_job.status import NullReporter

    return NullReporter()


def status_block(phase: str, detail: Any = None, message: Optional[str] = None) -> str:
    status: dict[str, Any] = {"phase": phase}
    if detail is not None:
        status["progress"] = {"stage": "done"}
        status["results"] = detail.summary().model_dump(by_alias=True, exclude_none=True, mode="json")
    if message:
        status["message"] = message
    return yaml.safe_dump({"status": status}, sort_keys=False)


def cpu_quota() -> Optional[int]:
    """CPUs granted by the container's cgroup (a pod sees the node's core count)."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, int(int(quota) / int(period)))


def cmd_run(args: argparse.Namespace) -> int:
    job = parse_file(args.spec)
    import torch

    from prune_job.run import run_job

    threads = cpu_quota()
    if threads and threads < torch.get_num_threads() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)  # more threads than granted CPUs thrash under a CPU limit

    workdir = Path(args.workdir or os.environ.get("PRUNE_JOB_WORKDIR") or ".prune-job-work")
    reporter = make_reporter(args.report, job)
    try:
        detail = run_job(job, workdir, reporter, show_bar=not args.no_progress)
    except MemoryError as err:
        raise CliError(f"out of memory ({err}); use fewer calibration samples or a shorter sequenceLength, "
                       "or give the pod more memory (spec.resources.memory)") from None
    _print_summary(detail)
    print(status_block("Succeeded", detail))
    return 0


def _print_summary(detail: Any) -> None:
    from prune_job.evaluation import summary_table

    print(summary_table(detail))


def known_failures() -> tuple[type[BaseException], ...]:
    """Errors that are the input's or the environment's, not bugs: no traceback.
    Imported here, not at the top: `validate` should not pay for importing torch."""
    from prune_job.algorithms import FactorizationError
    from prune_job.checkpoint import CheckpointError
    from prune_job.sources.models import ModelFormatError
    from prune_job.storage import StorageError

    return (CliError, SpecError, FileNotFoundError, PermissionError, FactorizationError, ModelFormatError,
            CheckpointError, StorageError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune-job", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a PruneJob or PruneSweep document and name every bad field")
    v.add_argument("spec", help="PruneJob or PruneSweep YAML (as applied with kubectl)")
    v.set_defaults(func=cmd_validate)
    r = sub.add_parser("run", help="run a PruneJob on this machine and print the status it would post")
    r.add_argument("spec", help="PruneJob YAML (as applied with kubectl)")
    r.add_argument("--workdir", help="scratch space (staging for s3:// output); default .prune-job-work")
    r.add_argument("--report", choices=["none", "kubernetes"], default="none",
                   help="also patch the PruneJob's status through the in-cluster API")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)
    from prune_job.sweep.cli import add_commands

    add_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SpecError as err:
        print(f"error: invalid {getattr(args, 'kind', 'PruneJob')} {args.spec}:", file=sys.stderr)
        for path, reason in err.problems:
            print(f"  {path or '(document)'}: {reason}", file=sys.stderr)
        if args.command == "run":
            print(status_block("Failed", message=str(err)), file=sys.stderr)
        return EXIT_BAD_SPEC
    except known_failures() as err:
        print(f"error: {err}", file=sys.stderr)
        if args.command == "run":
            print(status_block("Failed", message=str(err)), file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
