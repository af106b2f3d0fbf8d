"""The CRD's CEL rules on the pruning recipe refuse exactly what the pydantic model refuses."""
from __future__ import annotations

import itertools

import celpy
import pytest

from prune_job import spec as api
from prune_operator import crdgen
from test_crd import k8s_split

COMBINATIONS = list(itertools.product(
    ["magnitude", "wanda", "sparsegpt"], ["wanda", "ria"], [None, "none", "obs", "admm"], ["none", "dsnot"],
    ["uniform", "owl"], ["unstructured", "2:4"], [False, True],
))


@pytest.fixture(scope="module")
def recipe_programs():
    env = celpy.Environment()
    return [(r["message"], env.program(env.compile(r["rule"]), functions={"split": k8s_split}))
            for r in crdgen.RECIPE_RULES]


def refusals(programs, pruning: dict) -> list[str]:
    activation = {"self": celpy.json_to_cel(pruning)}
    return [message for message, program in programs if not bool(program.evaluate(activation))]


@pytest.mark.parametrize("method,score,update,refine,allocation,pattern,permute", COMBINATIONS)
def test_cel_and_model_agree(recipe_programs, method, score, update, refine, allocation, pattern, permute):
    pruning = {"method": method, "score": score, "refine": refine, "allocation": allocation, "pattern": pattern,
               "sparsity": 0.5, "permute": permute}
    if update is not None:
        pruning["update"] = update
    try:
        api.Pruning.model_validate(pruning)
        accepted = True
    except ValueError:
        accepted = False
    assert (refusals(recipe_programs, pruning) == []) == accepted, pruning


@pytest.mark.parametrize("lam, sparsity, ok", [(0.08, 0.5, True), (0.5, 0.5, False), (0.3, 0.2, False),
                                               (0.2, 0.8, False), (0.19, 0.8, True)])
def test_owl_lambda_bounds(recipe_programs, lam, sparsity, ok):
    pruning = {"method": "wanda", "allocation": "owl", "owlLambda": lam, "sparsity": sparsity}
    assert (refusals(recipe_programs, pruning) == []) == ok
    if ok:
        api.Pruning.model_validate(pruning)
    else:
        with pytest.raises(ValueError, match="owlLambda"):
            api.Pruning.model_validate(pruning)


def test_absent_fields_take_their_defaults(recipe_programs):
    assert refusals(recipe_programs, {}) == []
    assert refusals(recipe_programs, {"method": "wanda", "update": "obs"})
