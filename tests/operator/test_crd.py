"""The PruneJob CRD: generated from the pydantic model, not stale, structural,
with CEL rules that accept and refuse what the model does."""
from __future__ import annotations

from pathlib import Path

import celpy
import pytest
import yaml
from celpy import celtypes

from prune_job import spec as api
from prune_operator import crdgen

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "prunejob.yaml"


@pytest.fixture(scope="module")
def crd():
    return yaml.safe_load(CRD_FILE.read_text())


def schema_of(crd, *path):
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path:
        node = node["properties"][part]
    return node


def test_committed_crd_is_current():
    assert crdgen.main([str(CRD_FILE.parent), "--check"]) == 0, "crds/ is stale: run `make crds`"
    assert CRD_FILE.read_text() == crdgen.render(crdgen.prunejob_crd())


def test_names_scope_and_subresources(crd):
    assert crd["metadata"]["name"] == "prunejobs.pruning.dev"
    assert crd["spec"]["names"]["shortNames"] == ["pj"]
    assert crd["spec"]["names"]["categories"] == ["pruning"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd):
    columns = {c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert list(columns) == ["Model", "Method", "Pattern", "Sparsity", "Phase", "Progress", "PPL Δ%", "Age"]
    assert columns["Progress"] == ".status.progress.blocks"
    assert columns["PPL Δ%"] == ".status.results.perplexity.increasePercent"


def walk(node, path="$"):
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural(crd):
    """Every node has a type; no $ref, anyOf, title or additionalProperties: false."""
    for path, node in walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
        assert "type" in node, path
        for banned in ("$ref", "anyOf", "allOf", "oneOf", "title", "const"):
            assert banned not in node, (path, banned)
        assert node.get("additionalProperties") is not False, path
        assert "default" not in node or node["default"] is not None, path


def test_enums_bounds_and_defaults(crd):
    pruning = schema_of(crd, "spec", "pruning")
    assert pruning["properties"]["method"]["enum"] == ["sparsegpt", "wanda", "magnitude"]
    sparsity = pruning["properties"]["sparsity"]
    assert (sparsity["minimum"], sparsity["maximum"], sparsity["exclusiveMaximum"]) == (0.0, 1.0, True)
    assert pruning["default"] == {}  # so that the API server fills the nested defaults
    assert pruning["properties"]["targets"]["properties"]["exclude"]["default"] == ["lm_head"]
    assert schema_of(crd, "spec", "model", "dtype")["enum"] == ["float32", "bfloat16", "float16"]
    assert schema_of(crd, "spec")["required"] == ["model", "output"]
    assert schema_of(crd, "spec", "evaluation", "generation", "batchSizes")["default"] == [1, 8]


def test_results_keep_unknown_fields(crd):
    assert schema_of(crd, "status", "results")["x-kubernetes-preserve-unknown-fields"] is True
    assert "default" not in schema_of(crd, "status", "phase")


# ---------------------------------------------------------------- CEL


def k8s_split(text, separator):
    """Kubernetes' CEL strings extension `split` (cel-python lacks the extension library)."""
    return celtypes.ListType([celtypes.StringType(s) for s in str(text).split(str(separator))])


def evaluate(rule: str, **variables) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule), functions={"split": k8s_split})
    activation = {name: celpy.json_to_cel(value) for name, value in variables.items()}
    result = program.evaluate(activation)
    if isinstance(result, Exception):
        raise result
    return bool(result)


def pruning_rules_allow(crd, pattern: str, sparsity: float) -> list[str]:
    """Messages of the rules that refuse {pattern, sparsity}."""
    rules = schema_of(crd, "spec", "pruning")["x-kubernetes-validations"]
    cross = [r for r in rules if "oldSelf" not in r["rule"]]
    assert len(cross) == 3 + len(crdgen.RECIPE_RULES)
    return [r["message"] for r in cross if not evaluate(r["rule"], self={"pattern": pattern, "sparsity": sparsity})]


@pytest.mark.parametrize("pattern, sparsity", [
    ("unstructured", 0.5), ("unstructured", 0.0), ("unstructured", 0.9), ("2:4", 0.5), ("4:8", 0.5),
    ("1:4", 0.75), ("3:4", 0.25),
])
def test_cel_accepts_what_the_model_accepts(crd, pattern, sparsity):
    api.Pruning(pattern=pattern, sparsity=sparsity)
    assert pruning_rules_allow(crd, pattern, sparsity) == []


@pytest.mark.parametrize("pattern, sparsity, refused_by", [
    ("2-4", 0.5, "N:M"), ("2:", 0.5, "N:M"), ("structured", 0.5, "N:M"), ("0:4", 1.0, "N:M"),
    ("4:2", 0.5, "N < M"), ("4:4", 0.0, "N < M"),
    ("2:4", 0.6, "sparsity must equal"), ("2:4", 0.25, "sparsity must equal"), ("1:4", 0.5, "sparsity must equal"),
])
def test_cel_refuses_what_the_model_refuses(crd, pattern, sparsity, refused_by):
    with pytest.raises(ValueError):
        api.Pruning(pattern=pattern, sparsity=sparsity)
    refusals = pruning_rules_allow(crd, pattern, sparsity)
    assert refusals and any(refused_by in message for message in refusals), refusals


def test_spec_is_immutable_except_suspend(crd):
    spec = schema_of(crd, "spec")
    for name, prop in spec["properties"].items():
        rules = [r for r in prop.get("x-kubernetes-validations", []) if r["rule"] == "self == oldSelf"]
        if name == "runPolicy":
            assert not rules
            for field, sub in prop["properties"].items():
                immutable = any(r["rule"] == "self == oldSelf" for r in sub.get("x-kubernetes-validations", []))
                assert immutable == (field != "suspend"), field
        else:
            assert len(rules) == 1, name
            assert "create a new PruneJob" in rules[0]["message"]
    rule = spec["properties"]["model"]["x-kubernetes-validations"][0]["rule"]
    assert evaluate(rule, self={"uri": "a"}, oldSelf={"uri": "a"})
    assert not evaluate(rule, self={"uri": "b"}, oldSelf={"uri": "a"})


# ---------------------------------------------------------------- generic use


def test_crdgen_is_generic():
    from pydantic import BaseModel, Field
    from typing import Optional

    class Inner(BaseModel):
        size: int = Field(3, ge=1)

    class Thing(BaseModel):
        name: str
        inner: Inner = Field(default_factory=Inner)
        tags: list[str] = Field(default_factory=lambda: ["a"])
        note: Optional[str] = None

    schema = crdgen.structural_schema(Thing)
    assert schema["properties"]["inner"] == {"type": "object", "default": {},
                                             "properties": {"size": {"type": "integer", "default": 3, "minimum": 1}}}
    assert schema["properties"]["tags"]["default"] == ["a"]
    assert schema["properties"]["note"] == {"type": "string", "nullable": True}
    crd = crdgen.custom_resource_definition(group="example.dev", version="v1", kind="Thing", plural="things",
                                            spec_schema=schema, short_names=["th"])
    assert crd["metadata"]["name"] == "things.example.dev"
    assert "subresources" not in crd["spec"]["versions"][0]
    crdgen.immutable_rules(schema, "no", mutable=["tags"])
    assert "x-kubernetes-validations" not in schema["properties"]["tags"]
    assert schema["properties"]["name"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"


URI_CASES = [
    ("s3://AKIA:secret@bucket/x/", "embeds credentials"), ("hf://user:token@org/name", "embeds credentials"),
    ("https://user:pass@host/x", "embeds credentials"), ("s3:///x", "names no bucket"),
    ("s3://bucket/a/../b/", "'.' or '..' segment"), ("pvc://../x", "'.' or '..' segment"),
    ("s3://bucket/a//b", "empty segment"),
]


def uri_refusals(crd, path, uri):
    rules = schema_of(crd, "spec", *path.split("."))["x-kubernetes-validations"]
    return [r["message"] for r in rules if not evaluate(r["rule"], self=uri)]


@pytest.mark.parametrize("path", ["model.uri", "calibration.uri", "output.uri", "evaluation.perplexity.uri"])
@pytest.mark.parametrize("uri, refused_by", URI_CASES)
def test_cel_refuses_the_uris_the_parser_refuses(crd, path, uri, refused_by):
    from prune_job.sources.uris import UriError, parse_uri

    with pytest.raises(UriError, match=refused_by):
        parse_uri(uri)
    assert any(refused_by in m for m in uri_refusals(crd, path, uri))


@pytest.mark.parametrize("uri", ["s3://bucket/prefix/", "s3://b/a..b/c", "hf://org/name", "pvc://claim/dir",
                                 "/local/dir", "builtin:smollm2-135m", "file:///x/y"])
def test_cel_accepts_plain_uris(crd, uri):
    assert uri_refusals(crd, "output.uri", uri) == []
