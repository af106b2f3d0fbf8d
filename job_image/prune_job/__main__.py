"""`python -m prune_job …` (and `torchrun … -m prune_job run SPEC`): the `prune-job` CLI."""
import os
import sys

from prune_job.cli import main

if __name__ == "__main__":
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # a rank under torchrun: unexpected errors reach the launcher
        from torch.distributed.elastic.multiprocessing.errors import record

        sys.exit(record(main)())
    sys.exit(main())
