"""`prune-job validate` and `run` refuse bad specs by field path, with no traceback."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prune_job.cli import main

ROOT = Path(__file__).resolve().parents[2]


def write_spec(tmp_path: Path, **overrides) -> Path:
    doc = {
        "apiVersion": "pruning.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {"name": "t"},
        "spec": {
            "model": {"uri": "builtin:smollm2-135m"},
            "pruning": {"method": "wanda", "sparsity": 0.5},
            "calibration": {"uri": "builtin:pydoc", "samples": 2, "sequenceLength": 16},
            "output": {"uri": str(tmp_path / "out"), "format": "dense"},
            "evaluation": {"enabled": False},
        },
    }
    for dotted, value in overrides.items():
        node = doc["spec"]
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_example_is_valid(capsys):
    code, out, _ = run_cli(capsys, "validate", str(ROOT / "examples" / "smollm2-sparsegpt.yaml"))
    assert code == 0 and "valid PruneJob" in out


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        ({"pruning.method": "obc"}, "spec.pruning.method", "sparsegpt"),
        ({"pruning.sparsity": 1.0}, "spec.pruning.sparsity", "less than 1"),
        ({"pruning.sparsity": -0.1}, "spec.pruning.sparsity", "greater than or equal"),
        ({"pruning.pattern": "3:2"}, "spec.pruning.pattern", "0 < N < M"),
        ({"pruning.pattern": "2of4"}, "spec.pruning.pattern", "N:M"),
        ({"pruning.pattern": "2:4", "pruning.sparsity": 0.3}, "spec.pruning", "set sparsity to 0.5"),
        ({"model.uri": "/nonexistent/model"}, "spec.model.uri", "does not exist"),
        ({"model.uri": "ftp://x/y"}, "spec.model.uri", "unsupported scheme"),
        ({"model.dtype": "int8"}, "spec.model.dtype", "float32"),
        ({"calibration.uri": "/nonexistent.txt"}, "spec.calibration.uri", "does not exist"),
        ({"calibration.samples": 0}, "spec.calibration.samples", "greater than or equal"),
        ({"pruning.blockSize": 0}, "spec.pruning.blockSize", "greater than or equal"),
        ({"pruning.targets.include": ["("]}, "spec.pruning.targets.include", "invalid regex"),
        ({"pruning.colour": "red"}, "spec.pruning.colour", "unknown field"),
        ({"output.format": "gguf"}, "spec.output.format", "compressed"),
    ],
)
def test_bad_fields_are_named(tmp_path, capsys, overrides, field, words):
    spec = write_spec(tmp_path, **overrides)
    for command in ("validate", "run"):
        code, _, err = run_cli(capsys, command, str(spec))
        assert code == 2
        assert f"{field}" in err and words in err, err


def test_every_bad_field_is_reported_at_once(tmp_path, capsys):
    spec = write_spec(tmp_path, **{"pruning.method": "x", "pruning.sparsity": 2, "calibration.samples": -1})
    code, _, err = run_cli(capsys, "validate", str(spec))
    assert code == 2
    for field in ("spec.pruning.method", "spec.pruning.sparsity", "spec.calibration.samples"):
        assert field in err


def test_pickle_refused_unless_allowed(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "pytorch_model.bin").write_bytes(b"not really")
    code, _, err = run_cli(capsys, "validate", str(write_spec(tmp_path, **{"model.uri": str(model)})))
    assert code == 2 and "spec.model.allowPickle" in err


def test_nm_width_checked_before_heavy_work(tmp_path, capsys, tiny_model_factory):
    model = tiny_model_factory("llama")  # hidden 64: not divisible by 3
    spec = write_spec(tmp_path, **{"model.uri": str(model), "pruning.pattern": "1:3",
                                   "pruning.sparsity": 0.6666666667})
    code, _, err = run_cli(capsys, "run", str(spec))
    assert code == 2 and "spec.pruning.pattern" in err and "divisible by 3" in err
    assert not (tmp_path / "out").exists()


def test_not_yaml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    assert run_cli(capsys, "validate", str(bad))[0] == 1
    assert run_cli(capsys, "validate", str(tmp_path / "none.yaml"))[0] == 1


def test_validate_imports_no_torch(tmp_path):
    spec = write_spec(tmp_path)
    code = (
        "import sys; from prune_job.cli import main; rc = main(['validate', %r]); "
        "assert 'torch' not in sys.modules, 'validate imported torch'; sys.exit(rc)" % str(spec)
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
