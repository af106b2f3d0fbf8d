"""One PruneJob, start to end, on this machine: resolve the model, read the
calibration windows, prune block by block into the checkpoint writer,
evaluate, and assemble the results (docs/architecture.md, "The path of one PruneJob")."""
from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from prune_job import __version__
from prune_job import storage
from prune_job.checkpoint import CheckpointWriter, WriteSummary
from prune_job.data import LazyTokenizer, ids_digest, micro_batches, token_windows
from prune_job.evaluation import evaluate, write_report
from prune_job.evaluation.driver import Evaluation, dense_perplexity
from prune_job.pipeline.memory import micro_batch_tokens
from prune_job.pipeline import distributed
from prune_job.pipeline.distributed import SingleProcess, World, first_on_each_node
from prune_job.pipeline.model import ModelHandle, default_device, open_model
from prune_job.pipeline.prune import PruneResult, check_targets, prune_model
from prune_job.resume import BlockJournal, made_durable_on_interrupt, open_location
from prune_job.resume_ranks import FINISHED, decide, replay_journal
from prune_job.sources.builtin import cache_root
from prune_job.sources.model_config import config_problems
from prune_job.storage.ranged import plan_blocks, streamed_model
from prune_job.sources.models import output_dir, resolve_model
from prune_job.sources.output import clear_if_asked, output_problems
from prune_job.sources.tasks import task_problems
from prune_job.sources.texts import read_source
from prune_job.sources.uris import parse_uri
from prune_job.spec import CalibrationUsed, PruneJob, ResultsDetail, SpecError, StageSeconds
from prune_job.status import NullReporter, RunProgress, StatusReporter

log = logging.getLogger(__name__)
COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja")


def peak_host_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_device_bytes() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


@dataclass
class Prepared:
    """Everything resolved and checked before heavy work starts."""

    model_dir: Path
    handle: ModelHandle
    tokenizer: LazyTokenizer
    windows: list[torch.Tensor]


def prepare(job: PruneJob, fetch: Any = None, cache: Optional[dict] = None) -> Prepared:
    """`cache` (a sweep's, shared by its runs) keeps the resolved model and the calibration windows."""
    spec = job.spec
    cache = {} if cache is None else cache
    if spec.model.stream:  # only config and tokenizer on disk; tensors by ranged GETs, block by block
        model_dir, index = streamed_model(spec.model.uri, cache_root() / "s3-files")
    else:
        model_dir = _cached(cache, ("model", spec.model.model_dump_json()), lambda: resolve_model(spec.model))
        index = None
    problems = config_problems(model_dir, spec) + output_problems(job, model_dir)
    if problems:
        raise SpecError(problems)
    handle = open_model(
        model_dir, spec.model.dtype, default_device(), spec.model.allow_pickle,
        spec.model.trust_remote_code, spec.model.blocks, index=index,
    )
    if index is not None:
        plan_blocks(index, handle)
    check_targets(handle, spec.pruning)
    tokenizer = LazyTokenizer(model_dir, spec.model.trust_remote_code)
    windows: list[torch.Tensor] = []
    if spec.pruning.needs_calibration:
        cal = spec.calibration
        windows = _cached(cache, ("calibration", str(model_dir), cal.model_dump_json()), lambda: token_windows(
            read_source(cal.uri, "spec.calibration.uri", fetch), tokenizer, cal.samples, cal.sequence_length,
            cal.seed, "spec.calibration.uri", vocab_size=_vocab_size(handle)))
    return Prepared(model_dir, handle, tokenizer, windows)


def _cached(cache: dict, key: tuple, make: Any) -> Any:
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _vocab_size(handle: ModelHandle) -> Optional[int]:
    emb = handle.model.get_input_embeddings()
    return getattr(emb, "num_embeddings", None)


def _fetch(uri: str) -> Path:
    return storage.fetch_data(uri, cache_root() / "s3")


def run_job(job: PruneJob, workdir: Path, reporter: Optional[StatusReporter] = None, show_bar: bool = True,
            world: Optional[World] = None, cache: Optional[dict] = None) -> Optional[ResultsDetail]:
    """Run a PruneJob; return results.json's model (also written beside the checkpoint).
    In a group of ranks (`world`), rank 0 alone writes, uploads and reports; the others return None.
    `cache`: what runs of one sweep share (prepare)."""
    spec = job.spec
    world = world or SingleProcess()
    reporter = reporter if reporter is not None and world.is_writer else NullReporter()
    progress = RunProgress(reporter, show_bar and world.is_writer)
    t_start = time.perf_counter()
    torch.manual_seed(spec.calibration.seed)

    progress.stage("resolving")
    problems = output_problems(job) + task_problems(job)
    if problems:
        raise SpecError(problems)
    prepared = first_on_each_node(world, lambda: prepare(job, _fetch, cache))
    distributed.check_calibration_share(world, prepared.windows)
    handle = prepared.handle
    out_dir = output_dir(spec.output.uri, workdir)
    write_dir, read_dir = distributed.checkpoint_dirs(world, out_dir, workdir, spec.evaluation.enabled)
    uploader, journal, opened = None, None, None
    if world.is_writer:
        clear_if_asked(job)
        out_dir.mkdir(parents=True, exist_ok=True)
        if parse_uri(spec.output.uri).is_remote:
            uploader = storage.Uploader(spec.output.uri, out_dir)
        opened = open_location(job, prepared.model_dir, prepared.windows, handle.num_blocks, out_dir, uploader)
        if opened.finished is not None and world.size == 1:
            return _report_finished(opened.finished, uploader, progress, reporter)
    replay = None
    if world.size > 1:  # rank 0's decision on every rank; each replays its share (resume_ranks.py)
        decision, shared = decide(world, opened)
        if decision == FINISHED:
            return _report_finished(opened.finished, uploader, progress, reporter) if world.is_writer else None
        if decision > 0:
            replay = replay_journal(world, job, shared, out_dir, workdir, read_dir)
    if world.is_writer:
        journal = BlockJournal(out_dir, opened.journal, uploader)
        progress.resumed(opened.journal.resumed_from_block, opened.journal.resumes)

    measured = None  # a sweep's measurer: the dense perplexity before pruning, posted at once for the other children
    ev = spec.evaluation
    if ev.enabled and ev.measure_dense_first and ev.dense_baseline is None:
        measured = dense_perplexity(job=job, dense_dir=prepared.model_dir, tokenizer=prepared.tokenizer,
                                    fetch=_fetch, progress=progress, world=world,
                                    dense_weights=_dense_weights(job, handle))
        reporter.dense_baseline(measured)

    progress.stage("pruning", total=handle.num_blocks)
    t_prune = time.perf_counter()
    batches = micro_batches(world.share(prepared.windows), micro_batch_tokens(handle.device))
    method = distributed.method_for(world, spec.pruning)
    if write_dir is None:
        pruned, written = prune_model(handle, spec.pruning, batches, None, method=method, journal=replay), None
        seconds_prune = time.perf_counter() - t_prune
        _verify_source(job, handle)
    else:
        write_dir.mkdir(parents=True, exist_ok=True)
        with made_durable_on_interrupt(uploader, journal), CheckpointWriter(
                write_dir, format=spec.output.format, max_shard_bytes=spec.output.max_shard_bytes,
                on_file_written=journal.on_file_written if journal is not None else None) as writer:
            journal_of_rank = journal or replay  # a replica (another node) continues after the finished blocks
            pruned = prune_model(handle, spec.pruning, batches, writer, on_block=progress.block_done, method=method,
                                 journal=journal_of_rank.attach(writer) if journal_of_rank is not None else None)
            seconds_prune = time.perf_counter() - t_prune
            progress.stage("writing")
            _verify_source(job, handle)  # before the manifest makes the checkpoint complete
            for name in COPIED_FILES:
                if (prepared.model_dir / name).is_file():
                    writer.add_file(name, prepared.model_dir / name)
            written = writer.finish(_manifest_fields(job, prepared))
    world.barrier()  # every copy of the checkpoint is written before any rank reads one

    evaluation, seconds_evaluate = None, 0.0
    if spec.evaluation.enabled:
        progress.stage("evaluating")
        t_eval = time.perf_counter()
        # with stream the dense tensors are read from the bucket again, by the same verified ranged GETs
        evaluation = evaluate(job=job, dense_dir=prepared.model_dir, sparse_dir=read_dir,
                              tokenizer=prepared.tokenizer, fetch=_fetch, progress=progress, world=world,
                              measured_dense=measured, dense_weights=_dense_weights(job, handle))
        seconds_evaluate = time.perf_counter() - t_eval
    if spec.model.stream:
        handle.index.close()  # its prefetch threads
    peak_host = distributed.peak_over_ranks(world, peak_host_bytes())
    if not world.is_writer:
        return None

    detail = assemble_results(job, prepared, pruned, written, evaluation)
    detail.seconds.prune = seconds_prune
    if pruned.clock:
        detail.seconds.stages = StageSeconds(**pruned.clock.breakdown(seconds_prune))
        cpu = pruned.clock.cpu_breakdown()
        detail.seconds.stage_cpu = StageSeconds(**cpu) if cpu else None
    detail.seconds.evaluate = seconds_evaluate
    detail.seconds.total = time.perf_counter() - t_start
    detail.memory.peak_host_bytes = peak_host
    detail.memory.peak_device_bytes = peak_device_bytes()
    write_report(detail, out_dir)  # results.json, report.md and plots: once, with the final seconds and memory
    if uploader is not None:
        progress.stage("uploading")
        uploader.sync()  # results.json, report.md and plots written after the checkpoint
        uploader.close()
    progress.stage("done")
    reporter.results(detail.summary())
    reporter.close()
    return detail


def _dense_weights(job: PruneJob, handle: Any) -> Any:
    """The dense tensors when the model folder holds only its small files (`model.stream`: the
    pruning's verified ranged reads from the bucket); None when they are in the folder."""
    return handle.index if job.spec.model.stream else None


def _verify_source(job: PruneJob, handle: Any) -> None:
    """Under `model.stream`, check the objects whose sha256 the source records (storage/ranged.py)."""
    if job.spec.model.stream:
        handle.index.verify()


def _report_finished(detail: ResultsDetail, uploader: Any, progress: RunProgress,
                     reporter: StatusReporter) -> ResultsDetail:
    """A rerun of a finished job: the same results, nothing pruned again."""
    if uploader is not None:
        uploader.close()
    progress.stage("done")
    reporter.results(detail.summary())
    reporter.close()
    return detail


def assemble_results(job: PruneJob, prepared: Prepared, pruned: PruneResult, written: WriteSummary,
                     evaluation: Optional[Evaluation]) -> ResultsDetail:
    """results.json from what each stage returned: the pruned layers (zeros counted by the
    checkpoint writer), the written checkpoint, and the evaluation."""
    spec = job.spec
    detail = ResultsDetail(
        sparsity=pruned.sparsity,
        method=spec.pruning.method,
        recipe=spec.pruning.recipe_name,
        pattern=spec.pruning.pattern,
        target_sparsity=spec.pruning.sparsity,
        device=str(prepared.handle.device),
        layers=pruned.layers,
        calibration=_calibration_used(job, prepared),
    )
    detail.artifact.uri = spec.output.uri
    detail.artifact.bytes = written.bytes
    detail.artifact.dense_bytes = written.dense_bytes
    detail.artifact.manifest = parse_uri(spec.output.uri).join(written.manifest.name)
    if evaluation is not None:
        for name, value in vars(evaluation).items():
            if value is not None:  # not measured (e.g. generation disabled): keep the results' empty default
                setattr(detail, name, value)
    return detail


def _calibration_used(job: PruneJob, prepared: Prepared) -> Optional[CalibrationUsed]:
    if not prepared.windows:
        return None
    cal = job.spec.calibration
    return CalibrationUsed(
        uri=cal.uri, samples=len(prepared.windows), sequence_length=cal.sequence_length, seed=cal.seed,
        tokens=sum(len(w) for w in prepared.windows), ids_sha256=ids_digest(prepared.windows),
    )


def _manifest_fields(job: PruneJob, prepared: Prepared) -> dict[str, Any]:
    """What the manifest records of the job; the writer adds the sparsity it counted."""
    spec = job.spec
    calibration = _calibration_used(job, prepared)
    return {
        "tool": {"name": "prune-job", "version": __version__},
        "source": {"uri": spec.model.uri, "revision": spec.model.revision, "dtype": spec.model.dtype},
        "pruning": json.loads(spec.pruning.model_dump_json(by_alias=True)),
        "calibration": json.loads(calibration.model_dump_json(by_alias=True)) if calibration else None,
        "sparsity": {"target": spec.pruning.sparsity},
    }
