"""`prune-job run` with the recipe options: the written checkpoint loads and results.json names the recipe."""
import json

import pytest
import yaml
from transformers import AutoModelForCausalLM

from prune_job.cli import main
from test_run import job


@pytest.mark.parametrize("pruning, recipe", [
    ({"method": "wanda", "score": "ria", "pattern": "2:4", "permute": True, "permuteRounds": 5, "refine": "dsnot",
      "update": "admm"}, "wanda+ria+permute+dsnot+admm"),
    ({"method": "sparsegpt", "sparsity": 0.6, "allocation": "owl", "owlLambda": 0.1, "update": "admm",
      "blockSize": 16}, "sparsegpt+admm+owl"),
])
def test_run_with_a_recipe(tmp_path, capsys, tiny_model_factory, pruning, recipe):
    model = tiny_model_factory("llama")
    ids = tmp_path / "calib.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": list(range(i, i + 16))}) for i in range(8)))
    spec = job(tmp_path, model, pruning={"sparsity": 0.5, **pruning},
               calibration={"uri": str(ids), "samples": 8, "sequenceLength": 16}, evaluation={"enabled": False})
    assert main(["run", str(spec), "--no-progress"]) == 0
    out = capsys.readouterr().out
    status = yaml.safe_load(out[out.index("status:"):])["status"]
    assert status["phase"] == "Succeeded"
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["recipe"] == recipe and len(results["layers"]) == 14
    assert abs(results["sparsity"] - pruning.get("sparsity", 0.5)) < 0.02
    if "pattern" in pruning:
        assert all(layer["patternOk"] for layer in results["layers"])
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # an ordinary checkpoint


def test_validate_names_the_contradictory_field(tmp_path, capsys, tiny_model_factory):
    spec = job(tmp_path, tiny_model_factory("llama"), pruning={"method": "wanda", "update": "obs"})
    assert main(["validate", str(spec)]) != 0
    captured = capsys.readouterr()
    assert "spec.pruning" in captured.out + captured.err and "update: obs" in captured.out + captured.err
