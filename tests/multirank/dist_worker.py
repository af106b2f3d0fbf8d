"""One rank of a spawned group (env RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): prunes a
tiny model for each case through the distributed path; rank 0 saves the pruned weights."""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from prune_job.data import micro_batches
from prune_job.pipeline import distributed
from prune_job.pipeline.distributed import DistributedMethod, world_from_env
from prune_job.pipeline.model import open_model
from prune_job.pipeline.prune import prune_model
from prune_job.spec import Pruning

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from memory_sink import MemorySink  # noqa: E402


def main(model: str, windows_file: str, cases_file: str, out: str) -> None:
    torch.set_num_threads(1)
    distributed.REDUCE_CHUNK_BYTES = 8 * 64 * 5  # Hessians of 64 inputs reduced 5 rows at a time (uneven tail)
    world = world_from_env()
    windows = [torch.tensor(w) for w in json.loads(Path(windows_file).read_text())]
    for k, case in enumerate(json.loads(Path(cases_file).read_text())):
        pruning = Pruning.model_validate(case)
        handle = open_model(Path(model), device=torch.device("cpu"))
        sink = MemorySink() if world.is_writer else None
        batches = micro_batches(world.share(windows), 64)
        prune_model(handle, pruning, batches, sink, method=DistributedMethod(pruning, world))
        if sink is not None:
            save_file({n: t.contiguous() for n, t in sink.tensors.items()}, f"{out}/case{k}.safetensors")
    world.barrier()
    world.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
