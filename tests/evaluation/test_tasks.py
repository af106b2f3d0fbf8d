"""Task accuracy beside perplexity (spec.evaluation.tasks): the pydoc cloze task, the spec's checks,
the refusal without the `[tasks]` extra, and `prune-job run` end to end through lm-eval on a tiny
model (and, marked slow, on SmolLM2)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from prune_job.checkpoint.reader import load_pretrained
from prune_job.cli import main
from prune_job.sources import tasks as task_sources
from prune_job.sources.tasks import cloze_items, task_file_problem, write_pydoc_cloze
from prune_job.sources.texts import pydoc_text
from prune_job.spec import SpecError, parse_spec
from tiny_models import VOCAB

EXTRA = "pip install 'prune-operator[tasks]'"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer of exactly VOCAB (256) tokens, for the tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    assert len(alphabet) == VOCAB
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=alphabet[0])


@pytest.fixture
def tiny_with_tokenizer(tiny_model_factory, tmp_path) -> Path:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_model_factory("llama"), folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def write_job(tmp_path: Path, model, evaluation: dict, **spec) -> Path:
    doc = {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "tasks"},
           "spec": {"model": {"uri": str(model)}, "output": {"uri": str(tmp_path / "out")},
                    "pruning": {"method": "magnitude", "sparsity": 0.5, "pattern": "2:4"},
                    "evaluation": evaluation, **spec}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# ---------------------------------------------------------------- the cloze task


def test_cloze_items_are_deterministic_and_answerable_from_the_heldout_text():
    items = cloze_items(200, seed=3)
    assert items == cloze_items(200, seed=3) and items != cloze_items(200, seed=4)
    assert len(items) == 200
    held = pydoc_text("pydoc-heldout")
    for item in items:
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        answer = item.choices[item.label]
        assert f"{item.context} {answer}" in held, item
    counts = [sum(i.label == k for i in items) for k in range(4)]
    assert min(counts) > 30, counts  # the right answer is not always in the same place


def test_written_task_file_is_a_local_lm_eval_task(tmp_path):
    path = write_pydoc_cloze(tmp_path / "t", samples=10)
    assert task_file_problem(path) is None
    config = yaml.safe_load(path.read_text())
    assert config["output_type"] == "multiple_choice" and config["dataset_path"] == "json"
    rows = [json.loads(line) for line in Path(config["dataset_kwargs"]["data_files"]["test"]).read_text().splitlines()]
    assert len(rows) == 10 and set(rows[0]) == {"context", "choices", "label"}
    assert task_sources.main([str(tmp_path / "cli"), "--samples", "5"]) == 0
    assert len((tmp_path / "cli" / "pydoc_cloze.jsonl").read_text().splitlines()) == 5


def test_task_file_problems_name_what_is_wrong(tmp_path):
    hub = tmp_path / "hub.yaml"
    hub.write_text(yaml.safe_dump({"task": "x", "dataset_path": "allenai/ai2_arc"}))
    assert "dataset_path must be `json`" in task_file_problem(hub)
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"task": "x", "dataset_path": "json",
                                       "dataset_kwargs": {"data_files": {"test": "nowhere.jsonl"}}}))
    assert "nowhere.jsonl" in task_file_problem(missing)
    func = tmp_path / "func.yaml"  # read without running it, and refused: lm-eval would import utils.py
    (tmp_path / "utils.py").write_text("raise SystemExit('ran')\n")
    func.write_text("task: x\ndataset_path: json\nprocess_docs: !function utils.boom\n")
    assert "`!function` (process_docs) is refused" in task_file_problem(func)
    nested = tmp_path / "nested.yaml"
    nested.write_text("task: x\nmetric_list:\n  - metric: acc\n    aggregation: !function utils.agg\n")
    assert "`!function` (metric_list[0].aggregation) is refused" in task_file_problem(nested)
    included = tmp_path / "included.yaml"
    included.write_text("task: x\ninclude: func.yaml\n")
    assert "`include:` is refused" in task_file_problem(included)
    assert "does not exist" in task_file_problem(tmp_path / "none.yaml")


# ---------------------------------------------------------------- the spec


def spec_with(tasks) -> dict:
    return {"model": {"uri": "/m"}, "output": {"uri": "/o"}, "evaluation": {"tasks": tasks}}


@pytest.mark.parametrize("tasks, words", [
    ({"names": []}, "at least 1"),
    ({"names": ["builtin:nope"]}, "unknown builtin 'nope'"),
    ({"names": ["s3://bucket/task.yaml"]}, "unsupported scheme"),
    ({"names": ["has space"]}, "neither an lm-eval task name"),
    ({"names": ["hellaswag", "hellaswag"]}, "named twice"),
    ({"names": ["hellaswag"], "limit": 0}, "greater than or equal"),
    ({"names": ["hellaswag"], "shots": 5}, "unknown field"),
])
def test_bad_task_fields_are_named(tasks, words):
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(tasks))
    assert "spec.evaluation.tasks" in str(err.value) and words in str(err.value), str(err.value)


def test_good_task_fields_parse():
    spec = parse_spec(spec_with({"names": ["builtin:pydoc-cloze", "hellaswag", "/data/mine.yaml"], "limit": 50}))
    assert spec.evaluation.tasks.limit == 50 and spec.evaluation.tasks.batch_size == 8
    assert parse_spec(spec_with(None)).evaluation.tasks is None


# ---------------------------------------------------------------- refused without the extra


def test_tasks_refused_without_the_extra_naming_it(tmp_path, capsys, monkeypatch, tiny_with_tokenizer):
    monkeypatch.setattr(task_sources, "lm_eval_available", lambda: False)
    spec = write_job(tmp_path, tiny_with_tokenizer, {"tasks": {"names": ["builtin:pydoc-cloze"]}})
    for command in ("validate", "run"):
        assert main([command, str(spec), "--no-progress"] if command == "run" else [command, str(spec)]) == 2
        err = capsys.readouterr().err
        assert "spec.evaluation.tasks" in err and EXTRA in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was pruned or written
    from prune_job.run import run_job
    from prune_job.cli import parse_file

    job = parse_file(str(spec), check_machine=False)
    with pytest.raises(SpecError, match=r"prune-operator\[tasks\]"):
        run_job(job, tmp_path / "work", show_bar=False)
    assert not (tmp_path / "out").exists()


def test_bad_local_task_file_refused_by_validate(tmp_path, capsys, tiny_with_tokenizer):
    spec = write_job(tmp_path, tiny_with_tokenizer, {"tasks": {"names": [str(tmp_path / "absent.yaml")]}})
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "spec.evaluation.tasks.names[0]" in err and "does not exist" in err


def test_lm_eval_runs_offline_and_the_flags_are_restored(monkeypatch):
    import datasets
    import huggingface_hub

    from prune_job.evaluation.tasks import _offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with _offline():  # the flags the libraries read at import, not only the environment
        assert huggingface_hub.constants.is_offline_mode() and datasets.config.HF_HUB_OFFLINE
        assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
        with pytest.raises(ConnectionError):
            datasets.utils.file_utils.fsspec_head("https://huggingface.co/datasets/x/resolve/main/y.json")
    assert not huggingface_hub.constants.is_offline_mode() and not datasets.config.HF_HUB_OFFLINE
    assert "HF_HUB_OFFLINE" not in os.environ


# ---------------------------------------------------------------- end to end


def reference_accuracy(model, tok, task_yaml: Path, limit: int) -> float:
    """Accuracy computed directly: the choice with the highest summed log-probability after the context."""
    config = yaml.safe_load(task_yaml.read_text())
    rows = [json.loads(line) for line in Path(config["dataset_kwargs"]["data_files"]["test"]).read_text().splitlines()]
    right = 0
    for row in rows[:limit]:
        n_context = len(tok(row["context"]).input_ids)
        scores = []
        for choice in row["choices"]:
            ids = torch.tensor([tok(f"{row['context']} {choice}").input_ids])
            with torch.no_grad():
                logp = model(ids).logits.log_softmax(-1)[0, :-1]
            target = ids[0, 1:]
            scores.append(float(logp[torch.arange(n_context - 1, len(target)), target[n_context - 1:]].sum()))
        right += int(max(range(4), key=scores.__getitem__) == row["label"])
    return right / limit


def test_run_measures_task_accuracy_dense_and_sparse(tmp_path, capsys, monkeypatch, tiny_with_tokenizer):
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    own = write_pydoc_cloze(tmp_path / "own", samples=30, seed=7)  # a local task file, as a user writes one
    relative = tmp_path / "rel" / "relative.yaml"  # data files relative to the YAML's folder, not the cwd
    relative.parent.mkdir()
    shutil.copy(own.with_suffix(".jsonl"), relative.parent / "rows.jsonl")
    config = yaml.safe_load(own.read_text())
    local_rows = {"dataset_kwargs": {"data_files": {"test": "rows.jsonl"}}}
    relative.write_text(yaml.safe_dump(config | {"task": "relative"} | local_rows))
    broken = tmp_path / "broken" / "broken.yaml"  # passes validate, fails in lm-eval: its rows are not JSON
    broken.parent.mkdir()
    (broken.parent / "rows.jsonl").write_text("this is not JSON\n")
    broken.write_text(yaml.safe_dump(config | {"task": "broken"} | local_rows))
    names = ["builtin:pydoc-cloze", str(own), str(relative), str(broken)]
    evaluation = {"perplexity": {"uri": "builtin:pydoc-heldout", "samples": 2, "sequenceLength": 32},
                  "generation": {"enabled": False},
                  "tasks": {"names": names, "limit": 12, "batchSize": 4}}
    spec = write_job(tmp_path, tiny_with_tokenizer, evaluation)
    assert main(["validate", str(spec)]) == 0
    assert main(["run", str(spec), "--no-progress"]) == 0
    out = capsys.readouterr().out
    status = yaml.safe_load(out[out.index("status:"):])["status"]
    assert [t["task"] for t in status["results"]["tasks"]] == names
    assert "builtin:pydoc-cloze accuracy" in out and "pydoc_cloze.yaml accuracy" in out

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    failed = results["tasks"].pop()  # recorded with its reason; the other figures stay
    assert failed["dense"] is None and failed["sparse"] is None and failed["skipped"], failed
    assert any(note.startswith(f"task {broken} (dense) not measured") for note in results["notes"])
    for task in results["tasks"]:
        assert task.get("skipped") is None, task
        assert 0.0 <= task["dense"] <= 1.0 and 0.0 <= task["sparse"] <= 1.0
        assert task["changePoints"] == pytest.approx(100 * (task["sparse"] - task["dense"]))
        assert task["denseStderr"] > 0 and task["sparseStderr"] > 0
    detail = results["tasksDetail"]
    assert detail["sparseLoadedBy"] == "load_pretrained" and detail["limit"] == 12 and detail["numFewshot"] == 0
    assert [t["documents"] for t in detail["tasks"]] == [12, 12, 12, None]
    assert detail["tasks"][1]["name"] == "pydoc_cloze"
    # lm-eval's figure is the direct computation's, for the dense model and for the sparse checkpoint as written
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_with_tokenizer)
    dense = AutoModelForCausalLM.from_pretrained(tiny_with_tokenizer).eval()
    assert results["tasks"][1]["dense"] == pytest.approx(reference_accuracy(dense, tok, own, 12))
    sparse = load_pretrained(tmp_path / "out")
    assert results["tasks"][1]["sparse"] == pytest.approx(reference_accuracy(sparse, tok, own, 12))
    assert results["tasks"][2]["dense"] == results["tasks"][1]["dense"]  # the same rows, relative to the YAML
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Task accuracy" in report and "pydoc_cloze" in report
    assert (tmp_path / "out" / "dense_vs_sparse.png").stat().st_size > 0
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ  # set for lm-eval only


@pytest.mark.slow
def test_smollm2_cloze_accuracy_is_well_above_chance(tmp_path, capsys):
    evaluation = {"perplexity": {"samples": 2, "sequenceLength": 64}, "generation": {"enabled": False},
                  "tasks": {"names": ["builtin:pydoc-cloze"], "limit": 40, "batchSize": 8}}
    spec = write_job(tmp_path, "builtin:smollm2-135m", evaluation,
                     pruning={"method": "magnitude", "sparsity": 0.5})
    assert main(["run", str(spec), "--no-progress"]) == 0
    capsys.readouterr()
    task = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"][0]
    print("SmolLM2-135M pydoc cloze accuracy:", task)
    assert task["dense"] >= 0.6, task  # chance is 0.25
    assert 0.0 <= task["sparse"] <= 1.0
