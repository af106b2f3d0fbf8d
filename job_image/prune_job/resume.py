"""Resuming a PruneJob from its journal (docs/resume.md).

`open_location` looks at the output location (local folder, and the bucket for s3://)
before anything is written: a journal of this run's identity is resumed (its shards
verified, fetched from the bucket when the local folder lacks them), a finished
checkpoint of this identity is reported without pruning again, and anything of
another identity is refused, naming what differs, unless `spec.output.overwrite`, in
which case its manifest.json and journal are retired first. `BlockJournal` is what the
block loop sees: where to start, the blocks to replay, and the commit after each block.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from prune_job import __version__
from prune_job.checkpoint import CheckpointWriter
from prune_job.checkpoint.journal import (Journal, WrittenShards, differences, entries, final_name_of, identity,
                                          read_journal, restore_provisional_names, verify_files, write_journal)
from prune_job.checkpoint.manifest import MANIFEST, CheckpointError
from prune_job.checkpoint.writer import COMPRESSED_INDEX, DENSE_INDEX
from prune_job.data import ids_digest
from prune_job.evaluation.report import RESULTS_JSON
from prune_job.faults import fault_point
from prune_job.interrupt import Interrupted, check_stop, disarm
from prune_job.pipeline.forward import MicroBatch, advance
from prune_job.pipeline.model import ModelHandle
from prune_job.spec import LayerSparsity, PruneJob, ResultsDetail, SpecError
from prune_job.storage.transfer import JOURNAL

log = logging.getLogger(__name__)
OnFile = Callable[[Path], Any]


def identity_fields(job: PruneJob, model_dir: Path, windows: list[torch.Tensor]) -> dict[str, Any]:
    """What changes the written bytes: source model, dtype, pruning, calibration (with the digest of the
    token ids actually used), output format and shard size, tool version."""
    spec = job.spec
    config = Path(model_dir) / "config.json"
    cal = spec.calibration
    return {
        "model": {"uri": spec.model.uri, "revision": spec.model.revision, "dtype": spec.model.dtype,
                  "blocks": spec.model.blocks,
                  "configSha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None},
        "pruning": json.loads(spec.pruning.model_dump_json(by_alias=True)),
        "calibration": {"uri": cal.uri, "samples": cal.samples, "sequenceLength": cal.sequence_length,
                        "seed": cal.seed, "idsSha256": ids_digest(windows)} if windows else None,
        "output": {"format": spec.output.format, "maxShardBytes": spec.output.max_shard_bytes},
        "tool": {"version": __version__},
    }


class Bucket:
    """The s3:// side of the location, through the Uploader's store."""

    def __init__(self, uploader: Any):
        self.store, self.bucket, self.prefix = uploader.store, uploader.bucket, uploader.prefix
        self.uploader = uploader

    def key(self, name: str) -> str:
        from prune_job.storage import join_key

        return join_key(self.prefix, name)

    def names(self) -> dict[str, tuple[int, str]]:
        start = len(self.prefix.rstrip("/")) + 1 if self.prefix else 0
        return {key[start:]: (size, etag) for key, size, etag in self.store.list(self.bucket, self.prefix)}

    def fetch(self, name: str, dest: Path, sha256: Optional[str] = None) -> None:
        self.store.download(self.bucket, self.key(name), dest, sha256)

    def remove(self, name: str) -> None:
        self.store.remove(self.bucket, self.key(name))


@dataclass
class Opened:
    """What the location holds for this run: a journal to continue (possibly new), or finished results."""

    journal: Journal
    finished: Optional[ResultsDetail] = None


def open_location(job: PruneJob, model_dir: Path, windows: list[torch.Tensor], blocks_total: int, out_dir: Path,
                  uploader: Any = None) -> Opened:
    ident = identity(identity_fields(job, model_dir, windows))
    bucket = Bucket(uploader) if uploader is not None else None
    remote = bucket.names() if bucket is not None else {}
    if bucket is not None:
        _mirror_bookkeeping(bucket, remote, out_dir)
    journal = read_journal(out_dir)
    has_manifest = (out_dir / MANIFEST).is_file()
    other = journal is not None and journal.identity.get("sha256") != ident["sha256"]
    if other or (has_manifest and journal is None):
        if not job.spec.output.overwrite:
            raise SpecError(_refusal(job, journal, ident))
        retire(out_dir, bucket)
        journal = None
    if journal is None:
        return Opened(Journal(identity=ident, blocks_total=blocks_total, tool_version=__version__))
    if journal.blocks_total != blocks_total:
        raise CheckpointError(f"{out_dir / JOURNAL}: {journal.blocks_total} blocks, the model has {blocks_total}")
    if has_manifest and ((out_dir / RESULTS_JSON).is_file() or RESULTS_JSON in remote):
        return Opened(journal, _finished(out_dir, bucket))
    _bring_shards(journal, out_dir, bucket, remote)
    journal.resumes += 1
    journal.resumed_from_block = journal.blocks_done
    log.info("resuming from block %d of %d: blocks before it are in %s and verified", journal.blocks_done,
             blocks_total, job.spec.output.uri)
    return Opened(journal)


def _refusal(job: PruneJob, journal: Optional[Journal], ident: dict[str, Any]) -> list[tuple[str, str]]:
    where = job.spec.output.uri
    hint = "; set spec.output.overwrite: true to start over there, or choose another spec.output.uri"
    if journal is None:
        return [("spec.output.uri", f"{where} holds a finished checkpoint with no {JOURNAL} (another run's, "
                                    f"or an older tool's){hint}")]
    diffs = differences(journal.identity.get("fields", {}), ident["fields"])
    named = [(f"spec.{path}" if not path.startswith("tool") else path, old, new) for path, old, new in diffs]
    return [(path, f"differs from the run recorded in {where}{JOURNAL} (there {old!r}, here {new!r}){hint}")
            for path, old, new in named] or [("spec.output.uri", f"{where} holds another run's {JOURNAL}{hint}")]


def retire(out_dir: Path, bucket: Optional[Bucket]) -> None:
    """Another run's checkpoint is being replaced: its manifest goes first (bucket, then local), then its
    journal, so that at no moment does a manifest sit beside shards it does not describe."""
    for name in (MANIFEST, JOURNAL):
        if bucket is not None:
            bucket.remove(name)
        (out_dir / name).unlink(missing_ok=True)
    log.warning("output.overwrite: retired the %s and %s of the run that was in %s", MANIFEST, JOURNAL, out_dir)


def _mirror_bookkeeping(bucket: Bucket, remote: dict[str, tuple[int, str]], out_dir: Path) -> None:
    """The bucket is the truth for s3:// outputs: its journal and manifest replace the local ones."""
    for name in (JOURNAL, MANIFEST):
        if name in remote:
            bucket.fetch(name, out_dir / name)
        else:
            (out_dir / name).unlink(missing_ok=True)


def _bring_shards(journal: Journal, out_dir: Path, bucket: Optional[Bucket], remote: dict) -> None:
    """The finished blocks' shards, verified; for s3://, fetched when the local folder lacks them."""
    restore_provisional_names(out_dir, journal)
    for entry in journal.files:
        path = out_dir / entry.name
        if bucket is None:
            continue
        if not _matches(path, entry.size, entry.sha256):
            name = entry.name if entry.name in remote else next(
                (n for n in remote if final_name_of(entry.name).match(n)), entry.name)
            bucket.fetch(name, path, entry.sha256)
        if entry.name in remote:
            bucket.uploader.adopt(path)
    verify_files(out_dir, journal)


def _matches(path: Path, size: int, sha256: str) -> bool:
    from prune_job.storage.checksums import sha256_file

    return path.is_file() and path.stat().st_size == size and sha256_file(path) == sha256


def _finished(out_dir: Path, bucket: Optional[Bucket]) -> ResultsDetail:
    """A finished run of the same identity: its files verified, its results read, nothing pruned again."""
    from prune_job.checkpoint.reader import VerifiedFolder

    if bucket is not None:  # each object's size and recorded sha256 against the manifest: nothing downloaded
        from prune_job.checkpoint.manifest import manifest_entries, read_manifest

        for entry in manifest_entries(read_manifest(out_dir)).values():
            head = bucket.store.head(bucket.bucket, bucket.key(entry.name))
            if head is None or head[0] != entry.size or head[1] != entry.sha256:
                raise CheckpointError(f"{bucket.uploader.uri}{entry.name}: missing or not as {MANIFEST} lists it; "
                                      "set spec.output.overwrite: true to write the checkpoint again")
        bucket.fetch(RESULTS_JSON, out_dir / RESULTS_JSON)
    else:
        VerifiedFolder(out_dir).verify_all()
    log.info("%s already holds this run's finished checkpoint (verified); nothing to prune again", out_dir)
    return ResultsDetail.model_validate_json((out_dir / RESULTS_JSON).read_text())


@contextlib.contextmanager
def made_durable_on_interrupt(uploader: Any, journal: Optional["BlockJournal"]) -> Iterator[None]:
    """On SIGTERM (`Interrupted`), wait for the uploads of the finished blocks and their journal, and say
    where a rerun resumes."""
    try:
        yield
    except Interrupted:
        disarm()
        if uploader is not None:
            uploader.close()
        if journal is None:  # a rank that writes no journal (distributed: not the writer)
            raise
        j = journal.journal
        done = f"blocks 0-{j.blocks_done - 1} are" if j.blocks_done else "no block is"
        log.warning("interrupted: %s durable in %s; a rerun resumes from block %d of %d", done,
                    journal.out_dir if uploader is None else uploader.uri, j.blocks_done, j.blocks_total)
        raise


class BlockJournal:
    """The block loop's view of the journal: where to start, the finished blocks to replay, and the commit
    of each block (shard closed, journal written and handed to `on_file`, e.g. the uploader)."""

    def __init__(self, out_dir: Path, journal: Journal, on_file: Optional[OnFile] = None):
        self.out_dir, self.journal, self.on_file = Path(out_dir), journal, on_file
        self.writer: Optional[CheckpointWriter] = None

    def attach(self, writer: CheckpointWriter) -> "BlockJournal":
        """The writer (made with `on_file_written=self.on_file_written`) continues where the journal ends."""
        self.writer = writer
        if self.journal.blocks_done:
            writer.restore(self.journal.writer)
        if self.journal.resumes:
            self._write()  # the resume is on record (status.progress.resumes) even if nothing is pruned
        return self

    @property
    def start_block(self) -> int:
        return self.journal.blocks_done

    @property
    def layers(self) -> list[LayerSparsity]:
        return [LayerSparsity.model_validate(d) for d in self.journal.layers]

    def replay(self, handle: ModelHandle, inputs: list[MicroBatch]) -> None:
        """Block `start_block`'s inputs: the calibration forwarded through the finished blocks, each read
        back from its shards (one block in memory at a time)."""
        if not inputs or not 0 < self.start_block < handle.num_blocks:
            return
        source, handle.index = handle.index, WrittenShards(self.out_dir, self.journal.writer)
        try:
            for j in range(self.start_block):
                prefix = handle.block_prefix(j)
                handle.load_tree(prefix)
                advance(handle.blocks[j], inputs, handle.device)
                handle.release_tree(prefix)
        finally:
            handle.index = source

    def commit(self, i: int, layers: list[LayerSparsity]) -> None:
        """Block i is finished: close its shard, then write the journal that names it (sent after the shard)."""
        fault_point("block-written", i)
        closed = self.writer.end_block()
        j = self.journal
        j.files += entries(self.out_dir, closed)
        j.blocks_done = i + 1
        j.writer = self.writer.state()
        j.layers = [layer.model_dump(by_alias=True, mode="json") for layer in layers]
        self._write()
        fault_point("block-committed", i)
        check_stop(f"block {i} (journal written; a rerun resumes from block {i + 1} of {j.blocks_total})")

    def _write(self) -> None:
        path = write_journal(self.out_dir, self.journal)
        if self.on_file is not None:
            self.on_file(path)

    def on_file_written(self, path: Path) -> None:
        """The writer's `on_file_written`: forwarded (to the uploader), with the fault point before the manifest."""
        if self.on_file is not None:
            self.on_file(path)
        if Path(path).name in (COMPRESSED_INDEX, DENSE_INDEX):
            fault_point("index-written")
