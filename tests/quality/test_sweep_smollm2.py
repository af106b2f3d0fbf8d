"""A sweep on a real pretrained model: SmolLM2-135M, Wanda and SparseGPT at
0.3, 0.5 and 0.7 (16 × 256 calibration tokens), through `prune-job sweep`'s
runner: perplexity rises with sparsity for each method, the dense model is
evaluated once, and the choice under maxPerplexityIncreasePercent meets it."""
from __future__ import annotations

import pytest

from prune_job.spec import parse_sweep
from prune_job.sweep.local import run_sweep
from prune_job.sweep.report import PLOT_PNG, publish

pytestmark = pytest.mark.slow
LIMIT = 40.0


def test_sweep_on_smollm2(tmp_path):
    sweep = parse_sweep({
        "apiVersion": "pruning.dev/v1alpha1", "kind": "PruneSweep", "metadata": {"name": "smol"},
        "spec": {
            "template": {
                "model": {"uri": "builtin:smollm2-135m"},
                "calibration": {"uri": "builtin:pydoc", "samples": 16, "sequenceLength": 256},
                "output": {"uri": str(tmp_path / "out"), "format": "compressed"},
                "evaluation": {"perplexity": {"uri": "builtin:pydoc-heldout", "samples": 8, "sequenceLength": 256},
                               "generation": {"enabled": False}},  # speed is not what this test is about
            },
            "matrix": {"method": ["wanda", "sparsegpt"], "sparsity": [0.3, 0.5, 0.7]},
            "select": {"objective": "maxSparsity", "maxPerplexityIncreasePercent": LIMIT},
        }})
    status = run_sweep(sweep, tmp_path / "work", show_bar=False)
    rows = {r.child: r for r in status.rows}
    print({name: (r.sparsity, r.perplexity_increase_percent) for name, r in rows.items()})
    assert all(r.phase == "Succeeded" for r in rows.values()) and status.done == "6/6"
    for method in ("wanda", "sparsegpt"):
        increases = [rows[f"smol-{method}-{s}"].perplexity_increase_percent for s in (30, 50, 70)]
        assert increases[0] < increases[1] < increases[2], (method, increases)
    best = status.best
    assert best is not None and best.child is not None, best
    assert rows[best.child].perplexity_increase_percent <= LIMIT
    within = [r for r in rows.values() if r.perplexity_increase_percent <= LIMIT]
    assert rows[best.child].sparsity == max(r.sparsity for r in within)
    publish("smol", sweep.spec, status, tmp_path / "work")
    assert (tmp_path / "out" / "sweep" / PLOT_PNG).stat().st_size > 0
