"""Progress of a run: a terminal bar per stage (blocks, runs) with ETA, and the throttled
`status.progress` updates sent to the reporter."""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Optional

from prune_job.spec import Progress
from prune_job.status.reporter import StatusReporter

if TYPE_CHECKING:
    from tqdm import tqdm


class RunProgress:
    """`stage(name, total, unit)` starts a stage (with a bar when it has a total);
    `advance(done)` moves it on. Stages counted in decoder blocks also fill
    `blocksDone/blocksTotal`; every counted stage fills `fraction` and `etaSeconds`."""

    def __init__(self, reporter: StatusReporter, show_bar: bool = True):
        self.reporter = reporter
        self.show_bar = show_bar
        self.bar: Optional[tqdm] = None
        self.state = Progress(stage="pending")
        self.unit = "block"
        self.total: Optional[int] = None
        self._started = time.perf_counter()

    def stage(self, name: str, total: Optional[int] = None, unit: str = "block") -> None:
        self.close_bar()
        self.state = self.state.model_copy(update={"stage": name, "fraction": None})
        self.unit, self.total = unit, total
        if total is not None:
            update = {"eta_seconds": None, "fraction": 0.0}
            if unit == "block":  # other units leave the last block count (kubectl's Progress column) alone
                update.update(blocks_total=total, blocks_done=0)
            self.state = self.state.model_copy(update=update)
            if self.show_bar:
                from tqdm import tqdm  # the [job] extra's; `prune_job.status` itself imports only the API types

                self.bar = tqdm(total=total, desc=name, unit=unit, file=sys.stderr, dynamic_ncols=True)
        self._started = time.perf_counter()
        self.reporter.progress(self.state)

    def resumed(self, from_block: Optional[int], resumes: int) -> None:
        """This run continues an interrupted one (status.progress.resumedFromBlock, .resumes)."""
        self.state = self.state.model_copy(update={"resumed_from_block": from_block, "resumes": resumes})

    def advance(self, done: int, total: Optional[int] = None) -> None:
        """`done` of `total` (default: the stage's total) units of the current stage are finished."""
        total = self.total if total is None else total
        if not total:
            return
        elapsed = time.perf_counter() - self._started
        update = {"eta_seconds": elapsed / done * (total - done) if done else None, "fraction": min(1.0, done / total)}
        if self.unit == "block":
            update.update(blocks_done=done, blocks_total=total)
        self.state = self.state.model_copy(update=update)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        self.reporter.progress(self.state)

    def block_done(self, done: int, total: int, seconds: float) -> None:
        """The pipeline's per-block callback."""
        self.advance(done, total)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
