"""Fault injection at named points of a run, for the resume tests (tests/resume/).

`PRUNE_JOB_FAULT="<point>:<block>:<action>"`: at `point` of block `block` (`-` for points that
belong to no block) the process `kill`s itself with SIGKILL, sends itself SIGTERM (`term`), or
sleeps (`sleep<seconds>`, a block that takes long). Unset (always, in production), every call
is one dictionary lookup that does nothing.

Points: `block-written` (the block's tensors are in the open shard, the journal does not name
it yet: mid-block), `block-committed` (the journal names the block), `index-written` (every
shard renamed and the index written; manifest.json not yet).
"""
from __future__ import annotations

import os
import signal
import time

ENV = "PRUNE_JOB_FAULT"


def fault_point(point: str, block: object = "-") -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, at, action = spec.split(":", 2)
    if where != point or at != str(block):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action.startswith("sleep"):
        time.sleep(float(action.removeprefix("sleep") or 60))
    else:
        raise ValueError(f"{ENV}: unknown action {action!r}")
