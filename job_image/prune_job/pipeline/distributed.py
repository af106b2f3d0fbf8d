"""Data-parallel pruning over `torch.distributed`: the calibration windows are
split across ranks, statistics are reduced, solves are spread.

A `World` is this process's place in the group. `SingleProcess` is the plain
path (no collectives); `TorchWorld` wraps a process group started by torchrun
(gloo on CPU, NCCL on CUDA, one device per local rank). The pipeline sees only
the `World` interface:

- `share(items)`: this rank's contiguous share of the calibration (or
  evaluation) windows; each rank forwards only its share.
- statistics: each group's accumulator is reduced to the rank that solves it,
  in fp64, weighted by its token count (Hessians are running means, Wanda
  norms plain sums); with one rank the fp64 round trip is exact, so world size
  1 gives the plain path's bytes.
- solves: a block's layer groups are spread over the ranks, largest first
  (greedy longest-processing-time), and each pruned weight is broadcast from
  the rank that solved it, as raw bytes (any dtype, either backend).
"""
from __future__ import annotations

import datetime
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import torch

from prune_job.pipeline.prune import Method
from prune_job.pipeline.statistics import Group
from prune_job.spec import SpecError

T = TypeVar("T")
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")


def share_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items (sizes differ by at most one)."""
    return n * rank // size, n * (rank + 1) // size


@dataclass
class World:
    """One process of a group of `size` (this one is `rank`); `node` is its pod or machine
    (torchrun's group rank), `local_rank`/`local_size` its place on that node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    node: int = 0

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes the checkpoint, uploads and reports."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def share(self, items: Sequence[T]) -> list[T]:
        start, stop = share_bounds(len(items), self.rank, self.size)
        return list(items[start:stop])

    # Collectives: the single-process world has nothing to exchange.
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return tensor

    def reduce(self, tensor: torch.Tensor, dst: int) -> torch.Tensor:
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        return None


SingleProcess = World


class TorchWorld(World):
    """A process group started from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""

    def __init__(self, backend: Optional[str] = None, timeout_s: float = 1800.0):
        import torch.distributed as dist

        env = {k: int(os.environ.get(k, "0")) for k in ENV_KEYS}
        super().__init__(rank=env["RANK"], size=env["WORLD_SIZE"], local_rank=env["LOCAL_RANK"],
                         local_size=env["LOCAL_WORLD_SIZE"] or 1, node=env["GROUP_RANK"])
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(self.local_rank)  # "cuda" now means this rank's own device
        self.backend = backend or ("nccl" if cuda else "gloo")
        self._dist = dist
        if not dist.is_initialized():
            dist.init_process_group(self.backend, timeout=datetime.timedelta(seconds=timeout_s))

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def _on_device(self, tensor: torch.Tensor, fn: Callable[[torch.Tensor], None]) -> torch.Tensor:
        moved = tensor.to(self.device)
        fn(moved)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        ops = {"sum": self._dist.ReduceOp.SUM, "max": self._dist.ReduceOp.MAX}
        return self._on_device(tensor, lambda t: self._dist.all_reduce(t, ops[op]))

    def reduce(self, tensor: torch.Tensor, dst: int) -> torch.Tensor:
        return self._on_device(tensor, lambda t: self._dist.reduce(t, dst))

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        return self._on_device(tensor, lambda t: self._dist.broadcast(t, src))

    def barrier(self) -> None:
        self._dist.barrier()

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def world_from_env() -> World:
    """The group torchrun started this process in, or the single-process world."""
    return TorchWorld() if launched_by_torchrun() else SingleProcess()


def first_on_each_node(world: World, fn: Callable[[], T]) -> T:
    """Run `fn` on each node's local rank 0 first, then on the others: downloads into
    a shared cache (model, calibration text) happen once per node. Returns when every
    rank is done (so that timings after it start together)."""
    if world.local_rank == 0:
        result = fn()
        world.barrier()
    else:
        world.barrier()
        result = fn()
    world.barrier()
    return result


# ---------------------------------------------------------------- statistics and solves


def solve_cost(group: Group, factorises: bool = True) -> int:
    """Work of one group's solve. SparseGPT: weights × inputs for the updates plus one
    factorisation of inputs³ (also ADMM's update and DSnoT). A plain Wanda or magnitude mask
    only ranks each row's weights (a sort: weights × log2 inputs); with SparseGPT's cost the
    down projection (inputs³) would outweigh the rest of the block and leave one rank most
    of the sorting."""
    n_in = group.leader.in_features
    weights = sum(t.get_weight().numel() for t in group.members)
    return weights * n_in + n_in ** 3 if factorises else weights * max(1, n_in.bit_length())


def assign_owners(groups: Sequence[Group], size: int, factorises: bool = True) -> list[int]:
    """Rank that solves each group: largest first, each to the least-loaded rank (ties: lowest rank)."""
    cost = [solve_cost(g, factorises) for g in groups]
    load = [0] * size
    owners = [0] * len(groups)
    for k in sorted(range(len(groups)), key=lambda k: (-cost[k], k)):
        rank = min(range(size), key=lambda r: (load[r], r))
        owners[k] = rank
        load[rank] += cost[k]
    return owners


REDUCE_CHUNK_BYTES = 256 << 20  # fp64 staging per collective: a 28672² Hessian goes in ~1 GB of fp32 rows


def _reduce_rows(world: World, acc: torch.Tensor, owner: int, scale: float, total: float) -> None:
    """acc (fp32, 1-D or 2-D) := sum over ranks of acc * scale / total, on `owner`, in fp64
    row chunks (the fp64 copy of a whole Hessian would double its memory)."""
    rows = acc.view(-1, acc.shape[-1])
    step = max(1, REDUCE_CHUNK_BYTES // (8 * rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        part = rows[start:start + step]
        local = part.double().mul_(scale)
        world.reduce(local, owner)
        if world.rank == owner:
            part.copy_(local.div_(total))


def reduce_stats(world: World, groups: Sequence[Group], owners: Sequence[int]) -> None:
    """Every group's statistics, summed over all ranks' tokens, on the group's owner (fp64
    reduction; the owner's accumulator ends in its own fp32). With one rank the round trip
    is exact (x * n / n in fp64 for fp32 x and integer n)."""
    counts = torch.tensor([g.stats.n for g in groups], dtype=torch.float64)
    world.all_reduce(counts)
    for g, owner, total in zip(groups, owners, counts.tolist()):
        stats = g.stats
        if hasattr(stats, "H"):  # SparseGPT: H is a running mean over the local tokens
            _reduce_rows(world, stats.H, owner, float(stats.n), total)
        else:  # Wanda: a sum of squares
            _reduce_rows(world, stats.col_sq_norm, owner, 1.0, 1.0)
        stats.n = int(total)
        if world.rank != owner:
            g.stats = None  # only the owner solves: free what it will never read


def broadcast_weight(world: World, weight: torch.Tensor, src: int) -> None:
    """Send `weight` (a parameter's data, any dtype) from `src` to every rank, in place."""
    flat = weight.detach().view(-1)
    world.broadcast(flat.view(torch.uint8) if flat.is_contiguous() else flat, src)


def check_same_groups(world: World, groups: Sequence[Group]) -> None:
    """Every rank must hold the same groups in the same order before any collective on them
    (a mixture-of-experts share may route no token to an expert): fail loudly, never hang."""
    names = "|".join(",".join(g.names) for g in groups).encode()
    mine = torch.tensor([len(groups), zlib.crc32(names)], dtype=torch.float64)
    high, low = mine.clone(), -mine
    world.all_reduce(high, op="max")
    world.all_reduce(low, op="max")
    if not torch.equal(high, -low):
        raise RuntimeError(
            f"rank {world.rank}: the ranks' calibration shares reached different layers in this block "
            f"(this rank: {len(groups)} groups, first {groups[0].names if groups else []}); with a "
            "mixture of experts every expert must see tokens on every rank: use more samples or fewer ranks")


class DistributedMethod(Method):
    """The method's prune over a `World`: reduce statistics to the solver, solve one's
    own groups, receive the others' pruned weights."""

    def __init__(self, pruning, world: World):
        super().__init__(pruning)
        self.world = world

    def prune_groups(self, groups: list[Group]) -> None:
        world = self.world
        check_same_groups(world, groups)
        plain_mask = self.pruning.effective_update == "none" and self.pruning.refine == "none"
        owners = assign_owners(groups, world.size, factorises=not plain_mask)  # an update or DSnoT reads the Hessian
        if self.permuter is not None:  # the solver folds the consumer; producers wait for fold_permutations
            self.permuter.defer_producers = True
        if self.pruning.needs_calibration:
            reduce_stats(world, groups, owners)
        for g, owner in zip(groups, owners):
            if owner == world.rank:
                self.prune_group(g)
        for g, owner in zip(groups, owners):
            g.stats = None
            for t in g.members:
                broadcast_weight(world, t.module.weight.data, owner)
        if self.permuter is not None:
            fold_permutations(world, self.permuter, groups, owners)

    def reduce_norms(self, groups: list[Group]) -> None:
        """OWL's pre-pass: each group's Wanda norms (sums of squares) and token counts summed over all
        ranks in fp64, on every rank, so every rank computes the same allocation (world size 1: exact)."""
        world = self.world
        check_same_groups(world, groups)
        counts = torch.tensor([g.stats.n for g in groups], dtype=torch.float64)
        world.all_reduce(counts)
        for g, total in zip(groups, counts.tolist()):
            norms = g.stats.col_sq_norm
            summed = norms.double()
            world.all_reduce(summed)
            norms.copy_(summed)
            g.stats.n = int(total)


def fold_permutations(world: World, permuter, groups: Sequence[Group], owners: Sequence[int]) -> None:
    """permute: true over ranks. The consumer's solver searched its permutation and folded it into the
    consumer (broadcast with the pruned weights); its producers' rows (gate/up, v, and their biases) are
    permuted here on every rank, in group order, from the row permutation broadcast by the solver, after
    the producers' own pruned weights arrived: the order one process folds them in."""
    for g, owner in zip(groups, owners):
        producers = permuter.producers_of(g.members)
        if not producers:
            continue
        rows = producers[0].weight.shape[0]
        perm = permuter.pending.pop(g.members[0].name, None) if world.rank == owner else None
        sent = torch.full((rows,), -1, dtype=torch.int64)
        if perm is not None:
            sent.copy_(perm.to(torch.int64).cpu())
        world.broadcast(sent, owner)
        if int(sent[0]) >= 0:
            from prune_job.pipeline.permute import permute_rows

            permute_rows(producers, sent.to(producers[0].weight.device))


# ---------------------------------------------------------------- one PruneJob over a World (prune_job.run)


def method_for(world: World, pruning) -> Optional[Method]:
    """The distributed method in a torch.distributed group (world size 1 included); else the plain one."""
    return DistributedMethod(pruning, world) if isinstance(world, TorchWorld) else None


def check_calibration_share(world: World, windows: Sequence) -> None:
    """Every rank forwards at least one calibration window."""
    if windows and len(windows) < world.size:
        raise SpecError([("spec.calibration.samples",
                          f"{len(windows)} calibration windows cannot be shared by {world.size} ranks; "
                          f"give at least {world.size} samples or fewer ranks")])


REPLICA = "replica-checkpoint"


def checkpoint_dirs(world: World, out_dir: Path, workdir: Path, evaluating: bool) -> tuple[Optional[Path], Path]:
    """(where this rank writes the checkpoint, or None; where it reads it back for evaluation).
    Rank 0 writes the real one. Evaluation needs the pruned weights on every node: on
    the other nodes, local rank 0 writes a replica into its own scratch (no upload)."""
    read = out_dir if world.node == 0 else workdir / REPLICA
    if world.is_writer:
        return out_dir, read
    if evaluating and world.node != 0 and world.local_rank == 0:
        return read, read
    return None, read


def peak_over_ranks(world: World, value: int) -> int:
    """The largest of every rank's figure (peak host memory is per process)."""
    t = torch.tensor([value], dtype=torch.float64)
    world.all_reduce(t, op="max")
    return int(t.item())
