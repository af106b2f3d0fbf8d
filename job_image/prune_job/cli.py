"""`prune-job`: validate or run one PruneJob document on this machine (or in its pod);
`prune-job sweep` runs a PruneSweep here (prune_job.sweep.cli)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from prune_job.sources.names import UnsafeName
from prune_job.sources.uris import redact
from prune_job.spec import PruneJob, SpecError, parse_prunejob

from prune_job import exit_codes
from prune_job.interrupt import Interrupted, stop_on_sigterm

EXIT_BAD_SPEC = exit_codes.BAD_SPEC
EXIT_FAILED = exit_codes.FAILED


class CliError(Exception):
    """A failure the user can act on: printed as one message, no traceback."""


def load_document(path: str, kinds: tuple[str, ...] = ("PruneJob",)) -> dict[str, Any]:
    """The one document of one of `kinds` in a YAML file (a document without `kind` is a PruneJob)."""
    file = Path(path)
    if not file.is_file():
        raise CliError(f"{path}: no such file")
    try:
        docs = [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d is not None]
    except UnicodeDecodeError as err:
        raise CliError(f"{path}: not UTF-8 text (byte {err.start}); save the spec as UTF-8") from None
    except yaml.YAMLError as err:
        raise CliError(f"{path}: not valid YAML: {err}") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind", "PruneJob") in kinds]
    if len(jobs) != 1:
        others = sorted({str(d.get("kind")) if isinstance(d, dict) else type(d).__name__ for d in docs} - set(kinds))
        found = f", and {len(docs) - len(jobs)} other document(s) of kind {', '.join(others)}" if others else ""
        raise CliError(f"{path}: expected exactly one {' or '.join(kinds)} document, found {len(jobs)}{found}")
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

    from prune_job.pipeline.distributed import launched_by_torchrun, world_from_env
    from prune_job.run import run_job

    if args.nproc is not None and not launched_by_torchrun():
        from prune_job.launch import launch, strip_nproc

        failure = launch(args.nproc, strip_nproc(args.argv))
        if failure:
            raise CliError(failure)
        return 0
    threads = cpu_quota()
    if threads:
        threads = max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # shared by this node's ranks
    if threads and threads < torch.get_num_threads() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)  # more threads than granted CPUs thrash under a CPU limit

    workdir = Path(args.workdir or os.environ.get("PRUNE_JOB_WORKDIR") or ".prune-job-work")
    world = world_from_env()
    reporter = make_reporter(args.report, job) if world.is_writer else None
    try:
        with stop_on_sigterm(job.spec.run_policy.termination_grace_period_seconds):
            detail = run_job(job, workdir, reporter, show_bar=not args.no_progress, world=world)
    except MemoryError as err:
        raise CliError(f"out of memory ({err}); use fewer calibration samples or a shorter sequenceLength, "
                       "or give the pod more memory (spec.resources.memory)") from None
    except torch.cuda.OutOfMemoryError as err:  # the device's memory, not the host's
        raise CliError(f"out of GPU memory ({str(err).splitlines()[0]}); use fewer calibration samples or a "
                       "shorter sequenceLength, or a GPU with more memory") from None
    finally:
        world.close()
    if detail is None:
        return 0  # a rank other than 0: rank 0 prints and reports
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
            CheckpointError, StorageError, UnsafeName)


def permanent_failures() -> tuple[type[BaseException], ...]:
    """Known failures that a retry would repeat: the Job fails at once (exit_codes.PERMANENT)."""
    from prune_job.algorithms import FactorizationError
    from prune_job.sources.models import ModelFormatError

    return (FactorizationError, ModelFormatError)


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
    r.add_argument("--nproc", type=_nproc, metavar="N",
                   help="run as N local ranks with torch.distributed (torchrun; gloo on CPU, one GPU per rank on CUDA)")
    r.set_defaults(func=cmd_run)
    from prune_job.sweep.cli import add_commands

    add_commands(sub)
    return parser


def _nproc(value: str) -> int:
    from prune_job.launch import MAX_LOCAL_RANKS

    n = int(value)
    if not 1 <= n <= MAX_LOCAL_RANKS:
        raise argparse.ArgumentTypeError(f"--nproc must be between 1 and {MAX_LOCAL_RANKS}")
    return n


class RedactingFormatter(logging.Formatter):
    """Log lines (tracebacks included) with credentials cut out (sources.uris.redact)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _error(text: str) -> None:
    print(redact(text), file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    try:
        return args.func(args)
    except SpecError as err:
        _error(f"error: invalid {getattr(args, 'kind', 'PruneJob')} {args.spec}:")
        for path, reason in err.problems:
            _error(f"  {path or '(document)'}: {reason}")
        if args.command == "run":
            _error(status_block("Failed", message=str(err)))
        _record_for_launcher(err)
        return EXIT_BAD_SPEC
    except known_failures() as err:
        _error(f"error: {err}")
        if args.command == "run":
            _error(status_block("Failed", message=str(err)))
        _record_for_launcher(err)
        return exit_codes.PERMANENT if isinstance(err, permanent_failures()) else EXIT_FAILED
    except Interrupted as err:
        _error(f"interrupted: {err}. The finished blocks and the journal are durable; "
               f"rerunning the same PruneJob resumes (exit code {exit_codes.INTERRUPTED})")
        if argv is None:  # the process's own entry point: what is left of the grace period is not spent on
            _exit_now(exit_codes.INTERRUPTED)  # the interpreter's teardown (seconds with torch loaded)
        return exit_codes.INTERRUPTED
    except Exception as err:  # a bug: its traceback, but never a credential in it
        _error("".join(traceback.format_exception(err)))
        if args.command == "run":
            _error(status_block("Failed", message=f"internal error ({type(err).__name__}: {err}); please report it"))
        _record_for_launcher(err)
        return EXIT_FAILED


def _record_for_launcher(err: BaseException) -> None:
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from prune_job.launch import record_for_launcher

        record_for_launcher(err)


def _exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
