"""Start a torch.distributed group as local processes on 127.0.0.1, as torchrun would."""
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, size: int, port: int, local_size: int = 0, node: int = 0) -> dict[str, str]:
    local_size = local_size or size
    env = dict(os.environ)
    env.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank % local_size),
               LOCAL_WORLD_SIZE=str(local_size), GROUP_RANK=str(node or rank // local_size),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(REPO / "job_image"), str(REPO / "operator"), env.get("PYTHONPATH", "")]))
    return env


def run_group(size: int, argv: list[str], timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Run `python argv...` as ranks 0..size-1 of one group; every rank must succeed."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, *argv], env=rank_env(r, size, port), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(size)]
    return wait_for_ranks(procs, timeout)


def wait_for_ranks(procs: list[subprocess.Popen], timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Wait for every rank's process; each must succeed. Whatever is left running is killed."""
    done = []
    try:
        for r, p in enumerate(procs):
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
            assert p.returncode == 0, f"rank {r} failed ({p.returncode}):\n{err[-4000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done
