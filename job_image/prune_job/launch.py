"""`prune-job run SPEC --nproc N`: the same job as N local ranks, started by torchrun's own
launcher (torch.distributed.run: c10d rendezvous on this machine, gloo on CPU, NCCL with
one GPU per local rank). A rank that fails ends the whole group at once
(`--max-restarts 0`); the error names the first rank that failed and its cause."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

MAX_LOCAL_RANKS = 64


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """The command line without `--nproc N` / `--nproc=N`: what each rank runs."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def torchrun_args(nproc: int, worker_argv: Sequence[str]) -> list[str]:
    return ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.5",
            "-m", "prune_job", *worker_argv]


def failure_cause(message: object) -> str:
    """The first line a failed rank recorded (its exception), or torchrun's own description."""
    if isinstance(message, dict):
        message = message.get("message", json.dumps(message))
    return str(message).strip().splitlines()[0] if str(message).strip() else "no message"


def launch(nproc: int, worker_argv: Sequence[str]) -> Optional[str]:
    """Run the worker command as `nproc` local ranks; None on success, else why it failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(torchrun_args(nproc, worker_argv)))
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        return (f"rank {rank} (local rank {failure.local_rank}) failed with exit code {failure.exitcode}: "
                f"{failure_cause(failure.message)}")
    return None


def record_for_launcher(err: BaseException) -> None:
    """Under torchrun, leave the cause of a handled failure where the launcher reads it."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(err)
