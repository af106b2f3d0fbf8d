"""What the upload, download and cache modules share: the record of one transfer and the
names the package gives things on the server and on disk."""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
SHA_META = "x-amz-meta-sha256"  # an object's sha256, recorded when we upload it
MANIFEST = "manifest.json"  # a checkpoint's list of files (sent last, fetched first)
JOURNAL = "journal.json"  # the finished blocks of a run in progress (docs/resume.md); sent after their shards
ETAGS_FILE = ".prune-job-etags.json"  # the download cache's record of what each file was fetched as


@dataclass
class Transfer:
    """What one upload or download did."""

    key: str
    size: int
    bytes_sent: int = 0  # payload bytes that crossed the network
    action: str = "sent"  # sent | skipped | resumed | copied | downloaded | cached
