"""Resuming a PruneJob of several ranks (docs/resume.md, docs/scaling.md).

Rank 0 (the writer) opens the location (`resume.open_location`) and decides; the decision
(finished, or the journal's count of finished blocks) and the journal itself go to every rank
by broadcast. Every rank then replays its own share of the calibration through the finished
blocks, read back from the written shards:

- ranks on node 0 read the writer's output folder (the same filesystem);
- ranks on other nodes: for an s3:// output, the finished blocks' shards are fetched from the
  bucket into the node's own scratch (`workdir/resume-shards`, once per node); for a local
  output, `spec.output.uri` must be a folder every node mounts (the shards are verified there),
  else every rank refuses with a message saying so.

Only rank 0 commits the journal; the others' journals replay and commit nothing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import torch

from prune_job.checkpoint.journal import Journal, final_name_of, verify_files
from prune_job.resume import BlockJournal, Bucket, Opened, _matches
from prune_job.spec import LayerSparsity, PruneJob

FINISHED = -1
SCRATCH = "resume-shards"


class ReplayJournal(BlockJournal):
    """A non-writer rank's journal: where to start and the replay; nothing is committed."""

    def attach(self, writer: Any) -> "ReplayJournal":
        """A replica writer (evaluation on another node) continues after the finished blocks' shards."""
        self.writer = writer
        writer.restore(self.journal.writer)
        return self

    @property
    def layers(self) -> list[LayerSparsity]:
        return []  # this rank reports no results

    def commit(self, i: int, layers: list[LayerSparsity]) -> None:
        if self.writer is not None:
            self.writer.end_block()

    def on_file_written(self, path: Path) -> None:
        return None


def _broadcast_bytes(world: Any, data: bytes) -> bytes:
    size = torch.tensor([len(data)], dtype=torch.float64)
    world.broadcast(size, 0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8)
    if world.is_writer:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    world.broadcast(buf, 0)
    return data if world.is_writer else buf.numpy().tobytes()


def decide(world: Any, opened: Optional[Opened]) -> tuple[int, Optional[Journal]]:
    """(rank 0's decision: FINISHED or the blocks done, the journal) on every rank; `opened` on rank 0 only."""
    t = torch.tensor([0.0], dtype=torch.float64)
    if world.is_writer:
        t[0] = FINISHED if opened.finished is not None else opened.journal.blocks_done
    world.broadcast(t, 0)
    decision = int(t.item())
    if decision <= 0 or world.size == 1:
        return decision, opened.journal if opened is not None else None
    doc = _broadcast_bytes(world, opened.journal.to_json().encode() if world.is_writer else b"")
    journal = opened.journal if world.is_writer else Journal.from_doc(json.loads(doc), Path("journal.json"))
    return decision, journal


def replay_journal(world: Any, job: PruneJob, journal: Journal, out_dir: Path, workdir: Path,
                   read_dir: Path) -> Optional[ReplayJournal]:
    """A non-writer's replay of the finished blocks, from shards this rank can read (None on the
    writer). On a node other than 0 they are brought into `read_dir` (the evaluation's replica) when
    evaluating. Every rank calls it (collectives): if any rank cannot read the shards, every rank raises."""
    from prune_job.pipeline.distributed import first_on_each_node
    from prune_job.sources.uris import parse_uri

    remote = parse_uri(job.spec.output.uri).is_remote
    folder = out_dir
    if world.node != 0:
        folder = Path(read_dir) if job.spec.evaluation.enabled else Path(workdir) / SCRATCH if remote else out_dir

    def bring() -> str:
        if world.node == 0:
            return ""  # the writer's own folder, verified by open_location
        try:
            if remote:  # local rank 0 fetches first; the node's other ranks find the files there
                fetch_shards(job, journal, folder)
            else:
                verify_files(out_dir, journal)
                if folder != out_dir:  # the replica continues after copies of the finished blocks
                    folder.mkdir(parents=True, exist_ok=True)
                    for entry in journal.files:
                        shutil.copyfile(out_dir / entry.name, folder / entry.name)
        except Exception as err:
            if remote:
                return f"rank {world.rank} (node {world.node}): fetching the finished blocks failed: {err}"
            return (f"rank {world.rank} (node {world.node}) cannot read the finished blocks in {out_dir} ({err}): "
                    "resuming a run of several nodes with a local spec.output.uri needs a folder every node "
                    "shares at that path; use such a folder, an s3:// output, or one node")
        return ""

    problem = first_on_each_node(world, bring)
    failed = torch.tensor([1.0 if problem else 0.0], dtype=torch.float64)
    world.all_reduce(failed)
    if failed.item():
        raise RuntimeError(problem or "another rank cannot read the finished blocks to resume (see its log)")
    return None if world.is_writer else ReplayJournal(folder, journal)


def fetch_shards(job: PruneJob, journal: Journal, folder: Path) -> None:
    """The journal's files from the s3:// output into `folder` (kept when already there and verified)."""
    from prune_job.storage import S3Store, parse_s3_uri

    folder.mkdir(parents=True, exist_ok=True)
    bucket_name, prefix = parse_s3_uri(job.spec.output.uri)
    bucket = Bucket(SimpleNamespace(store=S3Store(), bucket=bucket_name, prefix=prefix))  # reads only: no uploader
    remote = bucket.names()
    for entry in journal.files:
        path = folder / entry.name
        if _matches(path, entry.size, entry.sha256):
            continue
        name = entry.name if entry.name in remote else next(
            (n for n in remote if final_name_of(entry.name).match(n)), entry.name)
        bucket.fetch(name, path, entry.sha256)
    verify_files(folder, journal)
