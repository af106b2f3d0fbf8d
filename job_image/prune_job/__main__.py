"""`python -m prune_job run SPEC.yaml`: the same as the `prune-job` command."""
import sys

from prune_job.cli import main

sys.exit(main())
