"""`prune-job sweep` and `prune-job validate` on PruneSweep documents, on a tiny model."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from prune_job.cli import main
from prune_job.spec import ObjectMeta, PruneJob, parse_sweep
from prune_job.sweep.grid import child_spec, plan_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from storage.conftest import NanioServer  # noqa: E402  (the storage tests' S3 server)


def sweep_doc(tmp_path, model, matrix, **spec):
    ids = tmp_path / "ids.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": list(range(i, i + 16))}) for i in range(8)))
    template = {"model": {"uri": str(model)}, "output": {"uri": str(tmp_path / "out"), "format": "dense"},
                "calibration": {"uri": str(ids), "samples": 8, "sequenceLength": 16},
                "evaluation": {"perplexity": {"uri": str(ids), "samples": 4, "sequenceLength": 16},
                               "generation": {"batchSizes": [1], "promptTokens": 4, "newTokens": 2, "repeats": 1}}}
    doc = {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneSweep", "metadata": {"name": "tiny"},
           "spec": {"template": template, "matrix": matrix, **spec}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_validate_accepts_a_sweep_and_names_bad_fields(tmp_path, capsys, tiny_model_factory):
    model = tiny_model_factory("llama")
    path = sweep_doc(tmp_path, model, {"method": ["wanda", "magnitude"], "pattern": ["unstructured", "2:4"],
                                       "sparsity": [0.5, 0.7]})
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "6 children" in out and "tiny-wanda-2of4" in out and "2 combinations skipped" in out
    bad = sweep_doc(tmp_path, model, {"method": ["wanda", "lasso"]})
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "invalid PruneSweep" in err and "matrix.method[1]" in err


def test_sweep_runs_every_child_shares_dense_and_writes_the_report(tmp_path, capsys, tiny_model_factory):
    model = tiny_model_factory("llama")
    path = sweep_doc(tmp_path, model, {"method": ["magnitude", "wanda"], "sparsity": [0.3, 0.6]},
                     select={"objective": "maxSparsity", "maxPerplexityIncreasePercent": 1e6})
    assert main(["sweep", str(path), "--no-progress", "--workdir", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    names = ["tiny-magnitude-30", "tiny-magnitude-60", "tiny-wanda-30", "tiny-wanda-60"]
    assert all(n in out for n in names) and "best: tiny-magnitude-60" in out  # tie on sparsity: lower PPL, or name
    results = {n: json.loads((tmp_path / "out" / n / "results.json").read_text()) for n in names}
    dense = results[names[0]]["perplexity"]["dense"]
    assert results[names[0]]["perplexity"].get("denseSource") is None  # the first measures the dense model
    dense_memory = results[names[0]]["generation"]["dense"]["peakMemoryBytes"]  # in a process of its own
    assert dense_memory > 0 and not [m for m in results[names[0]]["notes"] if "memory not measured again" in m]
    for n in names[1:]:  # the others say they took it
        assert results[n]["perplexity"]["dense"] == dense and names[0] in results[n]["perplexity"]["denseSource"]
        assert results[n]["generation"]["dense"]["tokensPerSecond"] > 0  # speed measured beside each child
        assert results[n]["generation"]["dense"]["peakMemoryBytes"] == dense_memory  # memory shared, ...
        assert any("dense peak memory not measured again" in m and names[0] in m for m in results[n]["notes"])
        assert results[n]["generation"]["sparse"]["peakMemoryBytes"] > 0  # ... each sparse one measured
    report = tmp_path / "out" / "sweep"
    table = json.loads((report / "sweep.json").read_text())
    assert [r["child"] for r in table["status"]["rows"]] == names and table["status"]["done"] == "4/4"
    assert "tiny-wanda-60" in (report / "report.md").read_text()
    with Image.open(report / "pareto.png") as png:
        assert png.format == "PNG" and png.size[0] > 100

    # sharing preparation and dense figures changes no sparse figure: one child run alone agrees
    from prune_job.run import run_job

    sweep = parse_sweep(yaml.safe_load(path.read_text()))
    child = plan_grid("tiny", sweep.spec.template, sweep.spec.matrix).children[3]
    spec = child_spec(sweep.spec.template, child, str(tmp_path / "alone"))
    alone = run_job(PruneJob(metadata=ObjectMeta(name=child.name), spec=spec), tmp_path / "w2", show_bar=False)
    assert alone.perplexity.sparse == pytest.approx(results[child.name]["perplexity"]["sparse"], rel=1e-6)
    assert alone.perplexity.dense == pytest.approx(dense, rel=1e-6) and alone.sparsity == results[child.name]["sparsity"]


def test_a_failing_child_is_a_failed_row_and_the_others_go_on(tmp_path, capsys, tiny_model_factory):
    model = tiny_model_factory("llama")
    path = sweep_doc(tmp_path, model, {"method": ["magnitude"], "targets": [{"include": ["nothing-matches"]},
                                                                            {"include": []}]})
    path_doc = yaml.safe_load(path.read_text())
    path_doc["spec"]["template"]["evaluation"] = {"enabled": False}
    path.write_text(yaml.safe_dump(path_doc))
    assert main(["sweep", str(path), "--no-progress", "--workdir", str(tmp_path / "work")]) == 0
    table = json.loads((tmp_path / "out" / "sweep" / "sweep.json").read_text())["status"]
    phases = [r["phase"] for r in table["rows"]]
    assert phases == ["Failed", "Succeeded"] and "selects no Linear layer" in table["rows"][0]["message"]


@pytest.fixture
def s3(tmp_path_factory, monkeypatch):
    server = NanioServer(tmp_path_factory.mktemp("nanio")).start()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


def test_sweep_to_s3_uploads_children_and_the_report(tmp_path, capsys, tiny_model_factory, s3):
    from prune_job.storage import S3Store

    bucket = s3.make_bucket()
    model = tiny_model_factory("llama")
    path = sweep_doc(tmp_path, model, {"method": ["magnitude"], "sparsity": [0.3, 0.5]})
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["template"]["output"] = {"uri": f"s3://{bucket}/grid/"}
    doc["spec"]["template"]["evaluation"] = {"enabled": False}
    path.write_text(yaml.safe_dump(doc))
    assert main(["sweep", str(path), "--no-progress", "--workdir", str(tmp_path / "work")]) == 0
    assert f"report: s3://{bucket}/grid/sweep/" in capsys.readouterr().out
    keys = {key for key, _, _ in S3Store().list(bucket, "grid/")}
    for child in ("tiny-magnitude-30", "tiny-magnitude-50"):
        assert f"grid/{child}/manifest.json" in keys and f"grid/{child}/results.json" in keys
    assert {"grid/sweep/report.md", "grid/sweep/sweep.json", "grid/sweep/pareto.png"} <= keys


def test_sweep_report_from_a_clusters_status(tmp_path, capsys):
    """The cluster seam: `kubectl get pjsw NAME -o yaml` → `prune-job sweep-report` writes the same report."""
    obj = yaml.safe_load((Path(__file__).resolve().parents[2] / "gitops" / "argocd" / "resource_customizations"
                          / "pruning.dev" / "PruneSweep" / "testdata" / "complete.yaml").read_text())
    obj["spec"]["template"]["output"] = {"uri": str(tmp_path / "out")}
    path = tmp_path / "got.yaml"
    path.write_text(yaml.safe_dump(obj))
    assert main(["sweep-report", str(path), "--workdir", str(tmp_path / "work")]) == 0
    report = tmp_path / "out" / "sweep"
    assert "best: smollm2-grid-sparsegpt-50" in (report / "report.md").read_text()
    with Image.open(report / "pareto.png") as png:
        assert png.format == "PNG"
    del obj["status"]
    path.write_text(yaml.safe_dump(obj))
    assert main(["sweep-report", str(path)]) == 1
    assert "no status rows" in capsys.readouterr().err
