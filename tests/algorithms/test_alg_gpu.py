"""The same functions on CUDA give the CPU's masks (skipped cleanly without a GPU)."""
import pytest
import torch

from prune_job.algorithms import HessianStats, WandaStats, factorise, magnitude_prune, sparsegpt_prune, wanda_prune
from prune_job.spec import Pattern

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("pattern", [None, Pattern(2, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(pattern, dtype):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 128, generator=g).to(dtype)
    X = (torch.randn(256, 32, generator=g) @ torch.randn(32, 128, generator=g)).to(dtype)
    results = {}
    for device in ("cpu", "cuda"):
        Wd, Xd = W.to(device), X.to(device)
        hs, ws = HessianStats(128, device=torch.device(device)), WandaStats(128, device=torch.device(device))
        hs.add(Xd)
        ws.add(Xd)
        results[device] = [
            magnitude_prune(Wd, 0.5, pattern),
            wanda_prune(Wd, 0.5, pattern, ws),
            sparsegpt_prune(Wd, factorise(hs.H, 0.01), 0.5, pattern, 32),
        ]
        assert all(r.device.type == device and r.dtype == dtype for r in results[device])
    for cpu, cuda in zip(results["cpu"][:2], results["cuda"][:2]):
        assert torch.equal(cpu, cuda.cpu())
    sg_cpu, sg_cuda = results["cpu"][2].float(), results["cuda"][2].float().cpu()
    assert ((sg_cpu == 0) != (sg_cuda == 0)).float().mean() < 0.01  # masks agree up to rounding near ties
    assert (sg_cuda == 0).sum() == W.numel() // 2
