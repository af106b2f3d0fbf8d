"""Progress of a run: a terminal bar per block with ETA, and the throttled
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
    def __init__(self, reporter: StatusReporter, show_bar: bool = True):
        self.reporter = reporter
        self.show_bar = show_bar
        self.bar: Optional[tqdm] = None
        self.state = Progress(stage="pending")

    def stage(self, name: str, total: Optional[int] = None) -> None:
        self.close_bar()
        self.state = self.state.model_copy(update={"stage": name})
        if total is not None:
            self.state = self.state.model_copy(update={"blocks_total": total, "blocks_done": 0, "eta_seconds": None})
            if self.show_bar:
                from tqdm import tqdm  # the [job] extra's; `prune_job.status` itself imports only the API types

                self.bar = tqdm(total=total, desc=name, unit="block", file=sys.stderr, dynamic_ncols=True)
        self._started = time.perf_counter()
        self.reporter.progress(self.state)

    def resumed(self, from_block: Optional[int], resumes: int) -> None:
        """This run continues an interrupted one (status.progress.resumedFromBlock, .resumes)."""
        self.state = self.state.model_copy(update={"resumed_from_block": from_block, "resumes": resumes})

    def block_done(self, done: int, total: int, seconds: float) -> None:
        elapsed = time.perf_counter() - self._started
        eta = elapsed / done * (total - done) if done else None
        self.state = self.state.model_copy(update={"blocks_done": done, "blocks_total": total, "eta_seconds": eta})
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        self.reporter.progress(self.state)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
