"""`prune-job sweep SWEEP.yaml` and `prune-job sweep-report SWEEP.yaml`
(the report of a sweep whose status is in the document, e.g. from
`kubectl get pjsw NAME -o yaml`), and `validate` for PruneSweep documents."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from prune_job.spec import PruneJob, PruneSweep, SpecError, parse_sweep


def parse_sweep_file(path: str, check_machine: bool = True) -> PruneSweep:
    from prune_job.cli import load_document

    sweep = parse_sweep(load_document(path, ("PruneSweep",)))
    if check_machine:
        from prune_job.sources.preflight import preflight

        problems = preflight(PruneJob(metadata=sweep.metadata, spec=sweep.spec.template))
        if problems:
            raise SpecError([(p.replace("spec.", "spec.template.", 1), reason) for p, reason in problems])
    return sweep


def validate_sweep(path: str) -> int:
    from prune_job.sweep.grid import plan_grid

    sweep = parse_sweep_file(path)
    grid = plan_grid(sweep.metadata.name, sweep.spec.template, sweep.spec.matrix)
    print(f"{path}: valid PruneSweep {sweep.metadata.name!r}: {len(grid.children)} children "
          f"({', '.join(c.name for c in grid.children)}), {len(grid.skipped)} combinations skipped")
    for combination, why in grid.skipped:
        print(f"  skipped {combination}: {why}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    args.kind = "PruneSweep"
    sweep = parse_sweep_file(args.spec)
    from prune_job.sweep.local import run_sweep
    from prune_job.sweep.report import publish, text_table

    workdir = Path(args.workdir or os.environ.get("PRUNE_JOB_WORKDIR") or ".prune-job-work")
    status = run_sweep(sweep, workdir, show_bar=not args.no_progress)
    print(text_table(status))
    print(f"report: {publish(sweep.metadata.name, sweep.spec, status, workdir)}")
    return 0 if any(r.phase == "Succeeded" for r in status.rows) else 1


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from prune_job.cli import CliError, load_document
    from prune_job.sweep.report import publish

    args.kind = "PruneSweep"
    sweep = parse_sweep(load_document(args.spec, ("PruneSweep",)))
    if sweep.status is None or not sweep.status.rows:
        raise CliError(f"{args.spec}: no status rows (use `kubectl get pjsw NAME -o yaml` of a started sweep)")
    workdir = Path(args.workdir or os.environ.get("PRUNE_JOB_WORKDIR") or ".prune-job-work")
    print(f"report: {publish(sweep.metadata.name, sweep.spec, sweep.status, workdir)}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="run a PruneSweep here, one child after another; print the table and the choice")
    s.add_argument("spec", help="PruneSweep YAML (as applied with kubectl)")
    s.add_argument("--workdir", help="scratch space (staging for s3:// output); default .prune-job-work")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sweep)
    r = sub.add_parser("sweep-report", help="write the report of a sweep from its status (kubectl get pjsw -o yaml)")
    r.add_argument("spec", help="PruneSweep YAML with its status")
    r.add_argument("--workdir", help="staging for s3:// output; default .prune-job-work")
    r.set_defaults(func=cmd_sweep_report)
