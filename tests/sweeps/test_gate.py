"""The quality gate: one pure function (prune_job.gate.judge) behind a PruneJob's
QualityMet condition (and a sweep's choice, tests/sweeps/test_sweep_plan.py)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from prune_job.gate import judge
from prune_job.spec import Gate, SpecError, parse_spec
from prune_operator.prunejob import status as prunejob_status

NOW = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
RESULTS = {"sparsity": 0.5, "perplexity": {"dense": 10.0, "sparse": 11.5, "increasePercent": 15.0}}


@pytest.mark.parametrize("limits, met, words", [
    (Gate(max_perplexity_increase_percent=20), True, "perplexity +15.00% <= 20%"),
    (Gate(max_perplexity_increase_percent=10), False, "perplexity +15.00% > 10%"),
    (Gate(min_sparsity=0.5), True, "sparsity 0.5000 >= 0.5"),
    (Gate(min_sparsity=0.6, max_perplexity_increase_percent=20), False, "sparsity 0.5000 < 0.6"),
])
def test_judge_names_the_figures_against_each_limit(limits, met, words):
    verdict = judge(limits, RESULTS)
    assert verdict.met is met and words in verdict.message
    assert (verdict.shortfall == 0) is met


def test_no_gate_no_verdict_and_missing_figures_fail():
    assert judge(None, RESULTS) is None and judge(Gate(), RESULTS) is None
    verdict = judge(Gate(max_perplexity_increase_percent=50), {"sparsity": 0.5})
    assert not verdict.met and "not measured" in verdict.message


def test_farther_from_the_limits_is_a_larger_shortfall():
    limits = Gate(max_perplexity_increase_percent=10)
    near = judge(limits, {**RESULTS, "perplexity": {"increasePercent": 12.0}})
    far = judge(limits, {**RESULTS, "perplexity": {"increasePercent": 40.0}})
    assert 0 < near.shortfall < far.shortfall


def test_gate_fields_are_checked():
    with pytest.raises(SpecError) as err:
        parse_spec({"model": {"uri": "/m"}, "output": {"uri": "/o"},
                    "evaluation": {"gate": {"minSparsity": 1.5, "maxPerplexity": 3}}})
    paths = [p for p, _ in err.value.problems]
    assert "spec.evaluation.gate.minSparsity" in paths and "spec.evaluation.gate.maxPerplexity" in paths


def _succeeded(gate, results, previous_conditions=()):
    spec = {"model": {"uri": "builtin:smollm2-135m"}, "output": {"uri": "s3://b/p/"}}
    if gate is not None:
        spec["evaluation"] = {"gate": gate}
    body = {"metadata": {"name": "pj", "namespace": "ns", "uid": "u1", "generation": 1}, "spec": spec,
            "status": {"phase": "Running", "results": results, "conditions": list(previous_conditions)}}
    job = {"metadata": {"name": "pj", "namespace": "ns"}, "spec": {}, "status": {"conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2026-05-01T11:00:00Z"}]}}
    return prunejob_status.desired_status(body, prunejob_status.parse(spec), job, [], NOW)


def test_controller_sets_quality_met_with_figures_and_an_event():
    status, events = _succeeded({"maxPerplexityIncreasePercent": 10}, RESULTS)
    assert status["phase"] == "Succeeded"  # the checkpoint is kept: the run itself succeeded
    met = next(c for c in status["conditions"] if c["type"] == "QualityMet")
    assert (met["status"], met["reason"]) == ("False", "LimitsExceeded")
    assert "perplexity +15.00% > 10%" in met["message"]
    assert [(e.type, e.reason) for e in events] == [("Normal", "Succeeded"), ("Warning", "LimitsExceeded")]

    status, events = _succeeded({"maxPerplexityIncreasePercent": 20}, RESULTS)
    assert next(c for c in status["conditions"] if c["type"] == "QualityMet")["status"] == "True"
    assert ("Normal", "WithinLimits") in [(e.type, e.reason) for e in events]


def test_no_gate_no_condition_and_no_repeated_event():
    status, _ = _succeeded(None, RESULTS)
    assert "QualityMet" not in {c["type"] for c in status["conditions"]}
    first, _ = _succeeded({"minSparsity": 0.4}, RESULTS)
    again, events = _succeeded({"minSparsity": 0.4}, RESULTS, first["conditions"])
    assert not [e for e in events if e.reason == "WithinLimits"]
