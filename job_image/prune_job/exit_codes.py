"""The worker's exit codes (docs/resume.md). The operator's Job `podFailurePolicy` reads them:
BAD_SPEC and PERMANENT fail the Job at once (`FailJob`), INTERRUPTED and FAILED are retried.
No torch here: the operator imports this module."""

DONE = 0  # the checkpoint (and the evaluation) is complete
FAILED = 1  # a runtime failure that may heal on a retry (storage, network, out of memory)
BAD_SPEC = 2  # the spec is invalid, or conflicts with the output location (another run's journal)
INTERRUPTED = 3  # SIGTERM: the finished blocks are durable; a rerun resumes from the journal
PERMANENT = 4  # a failure that a retry repeats (e.g. a failed factorisation, a corrupt model)

PERMANENT_CODES = (BAD_SPEC, PERMANENT)  # the Job fails at once, without retries
