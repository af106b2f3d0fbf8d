"""The pure sweep planner: grid, skipped contradictions, names, and the choice."""
from __future__ import annotations

import pytest

from prune_job.spec import MAX_SWEEP_CHILDREN, SpecError, SweepRow, SweepSelect, parse_sweep_spec
from prune_job.sweep.grid import MAX_NAME, child_names, child_spec, plan_grid
from prune_job.sweep.select import choose, cost_significant, row

TEMPLATE = {"model": {"uri": "builtin:smollm2-135m"}, "output": {"uri": "s3://pruned/sweep/"}}


def spec(matrix, **more):
    return parse_sweep_spec({"template": TEMPLATE, "matrix": matrix, **more})


def test_product_skips_nm_contradictions_and_names_readably():
    s = spec({"method": ["sparsegpt", "wanda"], "pattern": ["unstructured", "2:4"], "sparsity": [0.5, 0.7]})
    grid = plan_grid("sw", s.template, s.matrix)
    assert [c.name for c in grid.children] == [
        "sw-sparsegpt-50", "sw-sparsegpt-70", "sw-sparsegpt-2of4",
        "sw-wanda-50", "sw-wanda-70", "sw-wanda-2of4"]
    assert [(c["method"], c["pattern"], c["sparsity"]) for c, _ in grid.skipped] == [
        ("sparsegpt", "2:4", 0.7), ("wanda", "2:4", 0.7)]
    assert "removes 0.5" in grid.skipped[0][1]
    assert grid.children[2].combination == {"method": "sparsegpt", "pattern": "2:4", "sparsity": 0.5}
    child = child_spec(s.template, grid.children[2])
    assert child.output.uri == "s3://pruned/sweep/sw-sparsegpt-2of4/"
    assert (child.pruning.method, child.pruning.pattern, child.pruning.sparsity) == ("sparsegpt", "2:4", 0.5)


def test_other_pruning_fields_and_deterministic_names():
    s = spec({"method": ["sparsegpt"], "blockSize": [64, 128], "sequential": [True, False]})
    names = [c.name for c in plan_grid("sw", s.template, s.matrix).children]
    assert names == ["sw-sparsegpt-blocksize64-sequential", "sw-sparsegpt-blocksize64-nosequential",
                     "sw-sparsegpt-blocksize128-sequential", "sw-sparsegpt-blocksize128-nosequential"]
    assert names == [c.name for c in plan_grid("sw", s.template, s.matrix).children]


def test_long_or_colliding_names_get_a_hash():
    long = "s" * 60
    names = child_names(long, [{"method": "wanda"}, {"method": "sparsegpt"}])
    assert all(len(n) <= MAX_NAME for n in names) and len(set(names)) == 2
    assert names == child_names(long, [{"method": "wanda"}, {"method": "sparsegpt"}])
    clash = child_names("sw", [{"dampening": 0.01}, {"dampening": "0.01"}])  # same slug, two values
    assert len(set(clash)) == 2 and all(n.startswith("sw-dampening0p01-") for n in clash)


@pytest.mark.parametrize("matrix, words", [
    ({"method": ["sparsegpt", "nope"]}, "matrix.method[1]"),
    ({"sparsity": [0.5, 1.5]}, "matrix.sparsity[1]"),
    ({"colour": ["red"]}, "matrix.colour: not a pruning field"),
    ({"sparsity": []}, "matrix.sparsity: give at least one value"),
    ({"pattern": ["3:2"]}, "matrix.pattern[0]"),
    ({"pattern": ["2:4"], "sparsity": [0.3]}, "nothing would run"),
    ({"sparsity": [i / 100 for i in range(65)]}, f"at most {MAX_SWEEP_CHILDREN}"),
])
def test_bad_matrices_are_refused_with_the_field(matrix, words):
    with pytest.raises(SpecError) as err:
        spec(matrix)
    assert words in str(err.value)


def test_template_is_a_prunejob_spec_and_parallelism_defaults_to_two():
    assert spec({"method": ["wanda"]}).parallelism == 2
    with pytest.raises(SpecError) as err:
        parse_sweep_spec({"template": {**TEMPLATE, "pruning": {"method": "x"}}, "matrix": {"method": ["wanda"]}})
    assert "spec.template.pruning.method" in str(err.value)


def r(child, ppl, sparsity, cost=None, nbytes=None, phase="Succeeded", significant=None):
    return SweepRow(child=child, phase=phase, perplexity_increase_percent=ppl, sparsity=sparsity,
                    cost_per_million_tokens=cost, checkpoint_bytes=nbytes, cost_significant=significant)


ROWS = [r("a", 5.0, 0.3, cost=2.0, nbytes=900), r("b", 12.0, 0.5, cost=1.5, nbytes=700),
        r("c", 40.0, 0.7, cost=1.0, nbytes=500), r("d", None, None, phase="Failed")]


@pytest.mark.parametrize("objective, best", [
    ("minCostPerMillionTokens", "b"), ("maxSparsity", "b"), ("minPerplexity", "a"), ("minCheckpointBytes", "b"),
])
def test_every_objective_under_the_limits(objective, best):
    choice = choose(ROWS, SweepSelect(objective=objective, max_perplexity_increase_percent=20))
    assert choice.best.child == best and choice.met == {"a": True, "b": True, "c": False}


def test_without_limits_the_objective_alone_decides():
    assert choose(ROWS, SweepSelect(objective="maxSparsity")).best.child == "c"


@pytest.mark.parametrize("objective, rows, best, words", [
    ("maxSparsity", [r("x", 9.0, 0.5, nbytes=10), r("y", 3.0, 0.5, nbytes=20)], "y", "lowest perplexity"),
    ("minPerplexity", [r("x", 3.0, 0.4), r("y", 3.0, 0.5)], "y", "highest sparsity"),
    ("minCheckpointBytes", [r("x", 3.0, 0.5, nbytes=10), r("y", 2.0, 0.5, nbytes=10)], "y", "lowest perplexity"),
    ("minCostPerMillionTokens", [r("x", 3.0, 0.5, cost=1.0), r("y", 3.0, 0.6, cost=1.0)], "y", "highest sparsity"),
    ("minPerplexity", [r("y", 3.0, 0.5), r("x", 3.0, 0.5)], "x", "first by name"),
])
def test_ties_fall_to_the_next_criterion(objective, rows, best, words):
    choice = choose(rows, SweepSelect(objective=objective))
    assert choice.best.child == best and words in choice.best.why


def test_a_cost_difference_that_is_not_significant_does_not_decide():
    rows = [r("cheap", 3.0, 0.3, cost=1.00, significant=False), r("sparse", 3.0, 0.6, cost=1.05)]
    assert choose(rows, SweepSelect()).best.child == "sparse"
    rows = [r("cheap", 3.0, 0.3, cost=1.00), r("sparse", 3.0, 0.6, cost=1.05)]  # absent flag: significant
    assert choose(rows, SweepSelect()).best.child == "cheap"


def test_the_significance_flag_is_read_defensively():
    assert cost_significant({"costPerMillionTokens": {"sparseVsDense": {"significant": False}}}) is False
    for results in (None, {}, {"costPerMillionTokens": None}, {"costPerMillionTokens": {"sparseVsDense": 3}},
                    {"costPerMillionTokens": {"sparseVsDense": {"significant": "no"}}}):
        assert cost_significant(results) is True


@pytest.mark.parametrize("objective", ["minCostPerMillionTokens", "maxSparsity", "minPerplexity", "minCheckpointBytes"])
def test_no_qualifying_child_names_the_closest(objective):
    choice = choose(ROWS, SweepSelect(objective=objective, max_perplexity_increase_percent=4.0))
    assert choice.best.child is None and choice.best.closest == "a"
    assert "no child meets the limits" in choice.best.why and "perplexity +5.00% > 4%" in choice.best.why


def test_row_from_results():
    results = {"sparsity": 0.5, "perplexity": {"increasePercent": 7.5}, "generation": {"sparse": {"tokensPerSecond": 9.0}},
               "costPerMillionTokens": {"sparse": 2.5, "sparseVsDense": {"significant": False}},
               "artifact": {"bytes": 1234}}
    got = row("sw-wanda-50", {"method": "wanda"}, "Succeeded", results)
    assert (got.sparsity, got.perplexity_increase_percent, got.tokens_per_second, got.cost_per_million_tokens,
            got.checkpoint_bytes, got.cost_significant) == (0.5, 7.5, 9.0, 2.5, 1234, False)
