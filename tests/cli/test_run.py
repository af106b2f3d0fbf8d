"""`prune-job run` end to end on a tiny model: output folder, results.json, status block."""
import json

import yaml
from transformers import AutoModelForCausalLM

from prune_job.cli import main


def job(tmp_path, model, **spec):
    doc = {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "tiny"},
           "spec": {"model": {"uri": str(model)}, "output": {"uri": str(tmp_path / "out"), "format": "dense"},
                    **spec}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_run_dense_output_loads_and_reports(tmp_path, capsys, tiny_model_factory):
    model = tiny_model_factory("llama")
    ids = tmp_path / "calib.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": list(range(i, i + 16))}) for i in range(8)))
    spec = job(tmp_path, model,
               pruning={"method": "sparsegpt", "sparsity": 0.5, "pattern": "2:4", "blockSize": 16},
               calibration={"uri": str(ids), "samples": 8, "sequenceLength": 16},
               evaluation={"enabled": False})
    assert main(["run", str(spec), "--no-progress"]) == 0
    out = capsys.readouterr().out
    status = yaml.safe_load(out[out.index("status:"):])["status"]
    assert status["phase"] == "Succeeded" and abs(status["results"]["sparsity"] - 0.5) < 1e-9

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results["layers"]) == 14 and results["seconds"]["prune"] > 0
    assert results["memory"]["peakHostBytes"] > 0 and results["calibration"]["samples"] == 8
    stages = results["seconds"]["stages"]  # where the pruning seconds went, adding up to seconds.prune
    assert stages["statistics"] > 0 and stages["factorise"] > 0 and stages["solve"] > 0 and stages["write"] > 0
    assert abs(sum(stages.values()) - results["seconds"]["prune"]) < 1e-2 and "prune seconds by stage:" in out
    assert results["seconds"]["stageCpu"]["statistics"] > 0 and "cores busy by stage:" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sparsity"]["measured"] == results["sparsity"]  # one count: the writer's
    assert manifest["sparsity"]["layers"] == {layer["name"]: layer["sparsity"] for layer in results["layers"]}
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    w = pruned.model.layers[1].mlp.down_proj.weight
    assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) == 2).all()


def test_run_with_evaluation_writes_the_report_once(tmp_path, capsys, tiny_model_factory):
    model = tiny_model_factory("llama")
    ids = tmp_path / "ids.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": list(range(i, i + 16))}) for i in range(8)))
    spec = job(tmp_path, model, pruning={"method": "magnitude", "sparsity": 0.5, "pattern": "2:4"},
               evaluation={"perplexity": {"uri": str(ids), "samples": 4, "sequenceLength": 16},
                           "generation": {"batchSizes": [1], "promptTokens": 4, "newTokens": 2, "repeats": 1}})
    assert main(["run", str(spec), "--no-progress"]) == 0
    out = tmp_path / "out"
    assert {"report.md", "results.json", "sparsity_by_block.png", "dense_vs_sparse.png"} <= {p.name for p in out.iterdir()}
    results = json.loads((out / "results.json").read_text())
    assert results["perplexity"]["dense"] > 1 and results["perplexity"]["sparse"] > 1
    assert results["seconds"]["evaluate"] > 0 and results["seconds"]["total"] >= results["seconds"]["evaluate"]
    assert results["sparsity"] == 0.5 and all(layer["patternOk"] for layer in results["layers"])
    assert "| perplexity" in (out / "report.md").read_text().lower() or "perplexity" in (out / "report.md").read_text()
