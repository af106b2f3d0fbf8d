"""The checkpoint format: a streaming writer (dense or compressed), its
manifest, and the loader that rebuilds a transformers model (docs/format.md)."""
from prune_job.checkpoint.manifest import CheckpointError, FileEntry
from prune_job.checkpoint.writer import DEFAULT_MAX_SHARD_BYTES, CheckpointWriter, WriteSummary

__all__ = ["CheckpointError", "CheckpointWriter", "CompressedReader", "DEFAULT_MAX_SHARD_BYTES", "FileEntry",
           "WriteSummary", "load_pretrained"]


def __getattr__(name: str):
    if name in ("CompressedReader", "load_pretrained"):
        from prune_job.checkpoint import reader

        return getattr(reader, name)
    raise AttributeError(name)
