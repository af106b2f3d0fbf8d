"""Quality on a real pretrained model: SmolLM2-135M at 50% unstructured.

Perplexity on held-out pydoc windows (never seen in calibration), computed with
the block-streaming forward for the dense model and for each pruned one.
"""
import math

import pytest
import torch

from memory_sink import MemorySink
from prune_job.data import load_tokenizer, micro_batches, token_windows
from prune_job.evaluation.perplexity import perplexity, streamed_nll
from prune_job.pipeline.model import open_model
from prune_job.pipeline.prune import prune_model
from prune_job.sources.builtin import builtin_model_dir
from prune_job.sources.texts import pydoc_text, read_source
from prune_job.spec import Pruning

pytestmark = pytest.mark.slow
LENGTH = 256


@pytest.fixture(scope="module")
def smollm2():
    path = builtin_model_dir("smollm2-135m")
    tok = load_tokenizer(path)
    calib = token_windows(read_source("builtin:pydoc", "c"), tok, 16, LENGTH, 0, "c")
    held = token_windows(read_source("builtin:pydoc-heldout", "e"), tok, 8, LENGTH, 0, "e")
    return path, micro_batches(calib, 4096), micro_batches(held, 2048)


def ppl(path, batches, index=None):
    handle = open_model(path, device=torch.device("cpu"), index=index)
    return perplexity(*streamed_nll(handle, batches))


def test_heldout_text_is_not_calibration_text():
    assert pydoc_text("pydoc-heldout")[:200] not in pydoc_text("pydoc")


def test_sparsegpt_and_wanda_beat_magnitude(smollm2):
    path, calib, held = smollm2
    figures = {"dense": ppl(path, held)}
    for method in ("magnitude", "wanda", "sparsegpt"):
        sink = MemorySink()
        result = prune_model(open_model(path, device=torch.device("cpu")),
                             Pruning(method=method, sparsity=0.5, sequential=False), calib, sink)
        assert abs(result.sparsity - 0.5) < 1e-6
        figures[method] = ppl(path, held, index=sink)
    print("SmolLM2-135M 50% unstructured, held-out pydoc perplexity:", figures)
    assert all(math.isfinite(v) for v in figures.values())
    assert figures["dense"] < figures["sparsegpt"] and figures["dense"] < figures["wanda"]
    # "well below": each calibrated method removes at least half of magnitude's damage.
    for method in ("wanda", "sparsegpt"):
        assert figures[method] - figures["dense"] < 0.5 * (figures["magnitude"] - figures["dense"]), figures
