"""Pure pruning algorithms: tensors in, tensors out (fp32 maths, results in the input's
dtype and on the input's device). No devices, files, hooks or Kubernetes in here."""
from prune_job.algorithms.magnitude import magnitude_prune
from prune_job.algorithms.masks import removed_count, select_mask
from prune_job.algorithms.sparsegpt import (
    Factor, FactorizationError, HessianStats, factorise, sparsegpt_prune, sparsegpt_prune_shared,
)
from prune_job.algorithms.wanda import WandaStats, wanda_prune

__all__ = [
    "Factor",
    "FactorizationError",
    "HessianStats",
    "WandaStats",
    "factorise",
    "magnitude_prune",
    "removed_count",
    "select_mask",
    "sparsegpt_prune",
    "sparsegpt_prune_shared",
    "wanda_prune",
]
