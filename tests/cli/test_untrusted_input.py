"""`prune-job validate` and `run` against hostile or careless input (issue 12): URIs with
credentials, bad keys, other documents, bad encodings, bad config.json, output locations that
overlap the inputs. Each is one line naming the field, never a traceback or a secret, and
nothing is written."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import yaml

from prune_job import exit_codes
from prune_job.cli import main
from prune_job.sources.uris import redact

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"


def write_job(tmp_path, model_path, **spec):
    doc = {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "tiny"},
           "spec": {"model": {"uri": str(model_path)}, "output": {"uri": str(tmp_path / "out"), "format": "dense"},
                    "evaluation": {"enabled": False}, "pruning": {"method": "magnitude"}, **spec}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def assert_clean(text):
    assert "Traceback" not in text
    assert SECRET not in text


@pytest.mark.parametrize("field,uri", [
    ("spec.output.uri", f"s3://AKIAEXAMPLE:{SECRET}@bucket/out/"),
    ("spec.model.uri", f"hf://user:{SECRET}@org/model"),
    ("spec.model.uri", f"https://user:{SECRET}@example.com/model"),
    ("spec.calibration.uri", f"s3://k:{SECRET}@bucket/cal.jsonl"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_credentials_in_uris_are_refused_and_never_printed(tmp_path, capsys, tiny_model_factory, field, uri, command):
    model = tiny_model_factory("llama", layers=1, hidden=32)
    spec = {"model": {"uri": uri if field == "spec.model.uri" else str(model)},
            "output": {"uri": uri if field == "spec.output.uri" else str(tmp_path / "out")},
            "calibration": {"uri": uri if field == "spec.calibration.uri" else "builtin:pydoc"},
            "pruning": {"method": "wanda"}}
    code, text = run_cli(capsys, command, str(write_job(tmp_path, model, **spec)))
    assert code == 2
    assert f"{field}: the URI embeds credentials" in text
    assert_clean(text)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("uri,message", [
    ("s3:///x/", "names no bucket"),
    ("s3://bucket/a/../b/", "has a '.' or '..' segment"),
    ("s3://bucket/./b/", "has a '.' or '..' segment"),
    ("s3://bucket/a//b/", "has an empty segment"),
    ("pvc://claim/../../etc/", "has a '.' or '..' segment"),
    ("pvc://../x/", "has a '.' or '..' segment"),
])
def test_bad_buckets_and_segments_are_refused_naming_the_field(tmp_path, capsys, tiny_model_factory, uri, message):
    model = tiny_model_factory("llama", layers=1, hidden=32)
    code, text = run_cli(capsys, "validate", str(write_job(tmp_path, model, output={"uri": uri})))
    assert code == 2 and f"spec.output.uri: the URI {message}" in text
    assert_clean(text)


def test_redact_cuts_userinfo_and_credential_variables(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    text = redact(f"GET s3://AKIA:{SECRET}@b/x failed; hf://u:tok@o/n; key {SECRET}")
    assert SECRET not in text and "tok" not in text and "s3://***@b/x" in text


def test_log_lines_are_redacted(tmp_path, capsys, monkeypatch, tiny_model_factory):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    from prune_job.cli import RedactingFormatter

    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "talking to https://u:%s@host", (SECRET,), None)
    assert SECRET not in RedactingFormatter("%(message)s").format(record)


def test_non_utf8_spec_is_one_line(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_bytes(b"spec:\n  model: {uri: \xff\xfe}\n")
    code, text = run_cli(capsys, "validate", str(path))
    assert code == 1 and "not UTF-8 text (byte 21)" in text
    assert_clean(text)


def test_a_document_of_another_kind_is_named(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "data": {}}))
    code, text = run_cli(capsys, "validate", str(path))
    assert code == 1 and "found 0, and 1 other document(s) of kind ConfigMap" in text
    assert_clean(text)


def test_unknown_top_level_keys_are_refused(tmp_path, capsys, tiny_model_factory):
    model = tiny_model_factory("llama", layers=1, hidden=32)
    path = write_job(tmp_path, model)
    doc = yaml.safe_load(path.read_text())
    doc["sepc"] = {"typo": True}
    path.write_text(yaml.safe_dump(doc))
    code, text = run_cli(capsys, "validate", str(path))
    assert code == 2 and "sepc: unknown top-level field" in text
    assert_clean(text)


def test_non_utf8_data_and_bool_ids_are_one_line(tmp_path, capsys, tiny_model_factory):
    model = tiny_model_factory("llama", layers=1, hidden=32)
    bad = tmp_path / "data" / "cal.txt"
    bad.parent.mkdir()
    bad.write_bytes(b"hello \xff world")
    code, text = run_cli(capsys, "run", str(write_job(tmp_path, model, pruning={"method": "wanda"},
                                                      calibration={"uri": str(bad), "samples": 1,
                                                                   "sequenceLength": 4})), "--no-progress")
    assert code == 2 and "spec.calibration.uri: cal.txt: not UTF-8 text (byte 6)" in text
    assert "phase: Failed" in text
    assert_clean(text)
    rows = tmp_path / "data" / "ids.jsonl"
    rows.write_text(json.dumps({"input_ids": [True, False, True, 1]}) + "\n")
    code, text = run_cli(capsys, "run", str(write_job(tmp_path, model, pruning={"method": "wanda"},
                                                      calibration={"uri": str(rows), "samples": 1,
                                                                   "sequenceLength": 4})), "--no-progress")
    assert code == 2 and "true/false are not token ids" in text
    rows.write_text(json.dumps({"input_ids": list(range(9))}) + "\n")
    code, text = run_cli(capsys, "run", str(write_job(tmp_path, model, pruning={"method": "wanda"},
                                                      calibration={"uri": str(rows), "samples": 1,
                                                                   "sequenceLength": 8})), "--no-progress")
    assert code == 2 and "9 input_ids, longer than sequenceLength 8" in text
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("edit,message", [
    (lambda c: "not json {", "config.json: not JSON"),
    (lambda c: json.dumps({k: v for k, v in c.items() if k != "model_type"}), "config.json: no model_type"),
    (lambda c: json.dumps({**c, "hidden_size": -4}), "config.json: hidden_size = -4 is not a size"),
    (lambda c: json.dumps({**c, "num_hidden_layers": 10**12}), "num_hidden_layers = 1000000000000 is not a size"),
    (lambda c: json.dumps({**c, "vocab_size": True}), "vocab_size = True is not a size"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_config_json_is_refused_before_work(tmp_path, capsys, tiny_model_factory, edit, message, command):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_factory("llama", layers=1, hidden=32), model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(edit(config))
    code, text = run_cli(capsys, command, str(write_job(tmp_path, model)), *(["--no-progress"] if command == "run" else []))
    assert code == 2 and "spec.model.uri:" in text and message in text
    assert_clean(text)
    assert not (tmp_path / "out").exists()


def test_sequence_length_beyond_the_position_limit(tmp_path, capsys, tiny_model_factory):
    model = tiny_model_factory("llama", layers=1, hidden=32)
    limit = json.loads((model / "config.json").read_text())["max_position_embeddings"]
    code, text = run_cli(capsys, "validate", str(write_job(
        tmp_path, model, pruning={"method": "wanda"}, calibration={"sequenceLength": limit + 1})))
    assert code == 2
    assert f"spec.calibration.sequenceLength: {limit + 1} tokens exceed the model's position limit " \
           f"(max_position_embeddings = {limit} in config.json)" in text


@pytest.mark.parametrize("where", ["model", "model/sub", "parent"])
def test_output_overlapping_the_model_folder_is_refused(tmp_path, capsys, tiny_model_factory, where):
    model = tmp_path / "parent" / "model"
    shutil.copytree(tiny_model_factory("llama", layers=1, hidden=32), model)
    out = {"model": model, "model/sub": model / "sub", "parent": tmp_path / "parent"}[where]
    before = sorted(p.name for p in model.iterdir())
    for command in ("validate", "run"):
        code, text = run_cli(capsys, command, str(write_job(tmp_path, model, output={"uri": str(out)})))
        assert code == 2 and "spec.output.uri:" in text and "the model folder (spec.model.uri)" in text
    assert sorted(p.name for p in model.iterdir()) == before


def test_output_being_the_calibration_folder_is_refused(tmp_path, capsys, tiny_model_factory):
    model = tiny_model_factory("llama", layers=1, hidden=32)
    data = tmp_path / "data"
    data.mkdir()
    (data / "cal.txt").write_text("some text " * 50)
    code, text = run_cli(capsys, "validate", str(write_job(
        tmp_path, model, output={"uri": str(data)}, pruning={"method": "wanda"},
        calibration={"uri": str(data / "cal.txt"), "samples": 1, "sequenceLength": 8})))
    assert code == 2 and "is the folder of spec.calibration.uri" in text


def test_a_foreign_non_empty_output_folder_is_refused_unless_overwrite(tmp_path, capsys, tiny_model_factory):
    model = tiny_model_factory("llama", layers=1, hidden=32)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"stale")  # not a run of prune-job: no manifest, no journal
    code, text = run_cli(capsys, "run", str(write_job(tmp_path, model)), "--no-progress")
    assert code == 2 and "is not empty and holds no previous run of prune-job" in text
    assert (out / "model.safetensors").read_bytes() == b"stale"
    code, text = run_cli(capsys, "run", str(write_job(tmp_path, model, output={
        "uri": str(out), "format": "dense", "overwrite": True})), "--no-progress")
    assert code == 0, text
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {f["name"] for f in manifest["files"]}
    assert {p.name for p in out.glob("*.safetensors")} <= listed  # the stale file is gone or rewritten
    # a previous run (manifest.json present) is not refused
    code, text = run_cli(capsys, "validate", str(write_job(tmp_path, model)))
    assert code == 0, text
    # nor one that crashed before its manifest (the writer removes the old one first)
    (out / "manifest.json").unlink()
    (out / "model-00001.safetensors.data").write_bytes(b"partial")
    code, text = run_cli(capsys, "validate", str(write_job(tmp_path, model)))
    assert code == 0, text


def test_a_malformed_source_header_is_one_line_in_run(tmp_path, capsys, tiny_model_factory):
    import struct

    model = tmp_path / "model"
    shutil.copytree(tiny_model_factory("llama", layers=1, hidden=32), model)
    shard = next(model.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[:8] = struct.pack("<Q", 10**12)
    shard.write_bytes(bytes(data))
    code, text = run_cli(capsys, "run", str(write_job(tmp_path, model)), "--no-progress")
    assert code == exit_codes.PERMANENT and f"{shard.name}: header length 1000000000000 does not fit" in text
    assert "phase: Failed" in text
    assert_clean(text)


def test_out_of_memory_is_said_only_for_memory_and_bugs_keep_a_redacted_traceback(tmp_path, capsys, monkeypatch,
                                                                                     tiny_model_factory):
    import torch

    import prune_job.run

    model = tiny_model_factory("llama", layers=1, hidden=32)
    spec = str(write_job(tmp_path, model))

    def oom(*_, **__):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(prune_job.run, "run_job", oom)
    code, text = run_cli(capsys, "run", spec, "--no-progress")
    assert code == 1 and "out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in text
    assert_clean(text)

    def bug(*_, **__):
        raise KeyError(f"s3://AKIA:{SECRET}@bucket/x")

    monkeypatch.setattr(prune_job.run, "run_job", bug)
    code, text = run_cli(capsys, "run", spec, "--no-progress")
    assert code == 1 and "internal error (KeyError" in text and "out of memory" not in text
    assert "Traceback" in text and SECRET not in text  # a bug keeps its traceback, never a credential
