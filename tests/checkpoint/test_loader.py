"""load_pretrained and CompressedReader: bit-exact against the dense export, refusal of bad checkpoints."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

from ckpt_helpers import write_model
from prune_job.checkpoint import CheckpointError, CompressedReader
from prune_job.spec import Pattern
import prune_job


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("pattern", [None, Pattern(2, 4)], ids=["unstructured", "2:4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compressed_loads_bit_exact_against_the_dense_export(tiny_model_factory, tmp_path, pattern, dtype):
    src = tiny_model_factory("llama")
    dense, state = write_model(src, tmp_path / "dense", "dense", pattern, prune=True, dtype=dtype)
    comp, _ = write_model(src, tmp_path / "comp", "compressed", pattern, prune=True, dtype=dtype,
                          max_shard_bytes=40_000)
    assert len(list((tmp_path / "comp").glob("*.safetensors"))) > 2
    assert comp.encodings["nm" if pattern else "bitmask"] == 14  # 7 Linear weights x 2 blocks
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=dtype)
    loaded = prune_job.load_pretrained(tmp_path / "comp")
    assert_same_model(loaded, reference)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tied again after loading
    assert comp.bytes < dense.bytes and comp.dense_bytes == dense.dense_bytes


def test_dense_checkpoint_loads_too(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama")
    write_model(src, tmp_path, "dense", Pattern(2, 4), prune=True, dtype=torch.float16)
    model = prune_job.load_pretrained(str(tmp_path))
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.float16
    assert_same_model(model, AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float16))


def test_reader_serves_the_pipeline_interface(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama")
    _, state = write_model(src, tmp_path, "compressed", None, prune=True)
    reader = CompressedReader(tmp_path)
    assert set(reader.keys()) == set(state) == set(reader.location)
    name = "model.layers.1.self_attn.q_proj.weight"
    assert name in reader and torch.equal(reader.read([name])[name], state[name])


@pytest.mark.parametrize("fmt", ["compressed", "dense"])
def test_missing_manifest_is_refused(tiny_model_factory, tmp_path, fmt):
    write_model(tiny_model_factory("llama"), tmp_path, fmt, None, prune=True)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no manifest.json; the checkpoint is incomplete"):
        prune_job.load_pretrained(tmp_path)


@pytest.mark.parametrize("fmt", ["compressed", "dense"])
def test_corrupt_shard_is_refused_naming_the_file(tiny_model_factory, tmp_path, fmt):
    write_model(tiny_model_factory("llama"), tmp_path, fmt, None, prune=True, max_shard_bytes=40_000)
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # same size, different content
    victim.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{victim.name}: sha256 does not match manifest.json"):
        prune_job.load_pretrained(tmp_path)


def test_package_import_stays_torch_free():
    code = ("import sys, prune_job; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(prune_job.load_pretrained)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_semi_structured_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="CUDA"):
        prune_job.load_pretrained(tmp_path, device="cpu", semi_structured=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_semi_structured_2_4_on_cuda(tmp_path):
    from torch.sparse import SparseSemiStructuredTensor
    from tiny_models import save_tiny_model

    src = save_tiny_model(tmp_path / "src", "llama", hidden=128)  # 2:4 kernels need dims >= 64, multiples of 64
    write_model(src, tmp_path / "comp", "compressed", Pattern(2, 4), prune=True, dtype=torch.float16)
    write_model(src, tmp_path / "dense", "dense", Pattern(2, 4), prune=True, dtype=torch.float16)
    model = prune_job.load_pretrained(tmp_path / "comp", device="cuda", semi_structured=True)
    up = model.model.layers[0].mlp.up_proj.weight
    assert isinstance(up, SparseSemiStructuredTensor)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=torch.float16).cuda()
    ids = torch.randint(0, 256, (1, 64), device="cuda")
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    assert torch.allclose(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_loading_holds_one_copy_of_the_model(tmp_path):
    """Peak RSS while loading stays under two copies of the weights (measured in a fresh process; ~1.4x
    here: the model plus the allocator's retained decode buffers)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=768, intermediate_size=2048, num_hidden_layers=4,
                         num_attention_heads=12, num_key_value_heads=12)
    src = tmp_path / "src"
    LlamaForCausalLM(config).save_pretrained(src)
    summary, _ = write_model(src, tmp_path / "comp", "compressed", None, prune=True, max_shard_bytes=20_000_000)
    code = textwrap.dedent(f"""
        import threading, time, psutil, torch, transformers, accelerate, prune_job
        from prune_job.checkpoint import reader
        from transformers import AutoConfig, LlamaForCausalLM  # imports are not the model
        AutoConfig.from_pretrained({str(src)!r})
        proc, peak, done = psutil.Process(), [0], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.002)
        before = proc.memory_info().rss
        t = threading.Thread(target=sample); t.start()
        model = prune_job.load_pretrained({str(tmp_path / 'comp')!r})
        done.set(); t.join()
        print(peak[0] - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    growth = int(out.stdout.split()[-1])
    assert growth < 1.75 * summary.dense_tensor_bytes, (growth, summary.dense_tensor_bytes)  # 2 = two copies
