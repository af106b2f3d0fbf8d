"""The PruneSweep controller's pure reconcile: what to create now, never more
than `parallelism` unfinished, never twice; rows, counts, conditions, Events."""
from __future__ import annotations

from datetime import datetime, timezone

from prune_job.spec import PruneSweepStatus, parse_spec, parse_sweep_spec
from prune_operator.sweep.plan import Observed, prunejob_for_child, reconcile

NOW = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
TEMPLATE = {"model": {"uri": "builtin:smollm2-135m"}, "output": {"uri": "s3://pruned/g/"}}
SPEC = parse_sweep_spec({"template": TEMPLATE, "matrix": {"method": ["wanda", "sparsegpt"],
                                                          "sparsity": [0.3, 0.5, 0.7]}, "parallelism": 2})
NAMES = ["g-wanda-30", "g-wanda-50", "g-wanda-70", "g-sparsegpt-30", "g-sparsegpt-50", "g-sparsegpt-70"]


def done(name, phase="Succeeded", dense=20.0, shared=False):
    ppl = {"dense": dense, "sparse": 22.0, "increasePercent": 10.0}
    if shared:
        ppl["denseSource"] = "shared"
    return Observed(name, phase, {"sparsity": 0.5, "perplexity": ppl} if phase == "Succeeded" else None,
                    "exit code 1" if phase == "Failed" else None)


def simulate(finish_order):
    """A world in which the test finishes children in `finish_order`; every step obeys parallelism."""
    status, world, created = PruneSweepStatus(), {}, []
    for step in range(20):
        plan = reconcile("g", SPEC, status, list(world.values()), NOW, 1)
        for child in plan.create:
            assert child.name not in world
            world[child.name] = Observed(child.name, "Running")
            created.append(child.name)
        assert sum(1 for c in world.values() if not c.finished) <= SPEC.parallelism
        status = plan.status
        running = [n for n in finish_order if n in world and not world[n].finished]
        if not running:
            break
        world[running[0]] = done(running[0], "Failed" if running[0] == NAMES[1] else "Succeeded")
    return status, created


def test_children_in_grid_order_at_most_parallelism_and_each_once():
    status, created = simulate(NAMES)
    assert created == NAMES
    assert status.done == "6/6" and [r.phase for r in status.rows].count("Failed") == 1
    assert {c.type: c.status for c in status.conditions} == {"Accepted": "True", "Complete": "True", "Failed": "False",
                                                             "ReportWritten": "False"}
    assert status.best is not None and status.best.child != NAMES[1]
    assert (status.report.job, status.report.phase, status.report.uri) == ("g-report", "Pending", "s3://pruned/g/sweep/")


def test_restart_with_children_and_a_lost_status_creates_nothing_twice():
    world = [Observed(NAMES[0], "Running"), Observed(NAMES[1], None)]  # created, status not yet written
    plan = reconcile("g", SPEC, PruneSweepStatus(), world, NOW, 1)
    assert plan.create == ()
    assert [r.phase for r in plan.status.rows] == ["Running", "Pending"] + ["Waiting"] * 4
    plan = reconcile("g", SPEC, plan.status, [done(NAMES[0]), world[1]], NOW, 1)
    assert [c.name for c in plan.create] == [NAMES[2]]
    assert [e.reason for e in plan.events] == ["ChildCreated"]


def test_dense_baseline_comes_from_a_child_that_measured_it():
    assert reconcile("g", SPEC, PruneSweepStatus(), [Observed(NAMES[0], "Running")], NOW).dense_baseline is None
    plan = reconcile("g", SPEC, PruneSweepStatus(), [done(NAMES[1], dense=0), done(NAMES[0], shared=True),
                                                     done(NAMES[2], dense=19.5)], NOW)
    assert plan.dense_baseline == {"perplexity": 19.5, "source": f"PruneJob {NAMES[2]} (sweep g)"}
    sweep = {"metadata": {"name": "g", "namespace": "ml", "uid": "u-1"}, "spec": {"template": TEMPLATE}}
    child = prunejob_for_child(sweep, plan.create[0], plan.dense_baseline)
    assert child["spec"]["evaluation"]["denseBaseline"]["perplexity"] == 19.5
    assert child["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert child["spec"]["output"]["uri"] == f"s3://pruned/g/{plan.create[0].name}/"


def test_every_child_failing_fails_the_sweep():
    failed = [done(n, "Failed") for n in NAMES]
    status = reconcile("g", SPEC, PruneSweepStatus(), failed, NOW).status
    conds = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conds["Complete"] == ("True", "AllFinished") and conds["Failed"] == ("True", "AllChildrenFailed")
    assert status.best.child is None and "no child succeeded" in status.best.why


def test_one_child_measures_the_dense_model_then_the_rest_start_with_its_figure():
    sweep = {"metadata": {"name": "g", "namespace": "ml", "uid": "u-1"}, "spec": {"template": TEMPLATE}}
    wide = SPEC.model_copy(update={"parallelism": 3})
    plan = reconcile("g", wide, PruneSweepStatus(), [], NOW)  # nothing known: one measurer, not three
    assert [c.name for c in plan.create] == [NAMES[0]] and plan.dense_baseline is None
    measurer = prunejob_for_child(sweep, plan.create[0], plan.dense_baseline)
    assert measurer["spec"]["evaluation"] == {"measureDenseFirst": True}
    assert [r.phase for r in plan.status.rows] == ["Pending"] + ["Waiting"] * 5
    assert reconcile("g", wide, plan.status, [Observed(NAMES[0], "Running")], NOW).create == ()  # still measuring

    posted = Observed(NAMES[0], "Running", dense={"perplexity": 21.5, "nll": 3.07, "peakMemoryBytes": {"1": 900},
                                                  "source": "PruneJob g-wanda-30"})
    plan = reconcile("g", wide, plan.status, [posted], NOW)  # posted before pruning: the rest start, pruning overlaps
    assert [c.name for c in plan.create] == NAMES[1:3]
    assert plan.dense_baseline == {"perplexity": 21.5, "nll": 3.07, "peakMemoryBytes": {"1": 900},
                                   "source": f"PruneJob {NAMES[0]} (sweep g)"}
    child = prunejob_for_child(sweep, plan.create[0], plan.dense_baseline)
    assert child["spec"]["evaluation"] == {"denseBaseline": plan.dense_baseline}  # told, not measuring
    assert parse_spec(child["spec"]).evaluation.dense_baseline.peak_memory_bytes == {1: 900}  # the worker reads it

    # a failed measurer that posted nothing: the next child measures; one that posted: its figure stands
    plan = reconcile("g", wide, PruneSweepStatus(), [done(NAMES[0], "Failed")], NOW)
    assert [c.name for c in plan.create] == [NAMES[1]] and plan.dense_baseline is None
    failed_after = Observed(NAMES[0], "Failed", dense={"perplexity": 21.5}, message="OOMKilled")
    plan = reconcile("g", wide, PruneSweepStatus(), [failed_after], NOW)
    assert [c.name for c in plan.create] == NAMES[1:4] and plan.dense_baseline["perplexity"] == 21.5


def test_without_evaluation_or_with_a_given_baseline_all_start_at_once():
    for evaluation in ({"enabled": False}, {"denseBaseline": {"perplexity": 9.0, "source": "earlier run"}}):
        spec = parse_sweep_spec({"template": {**TEMPLATE, "evaluation": evaluation},
                                 "matrix": {"method": ["wanda", "sparsegpt"]}, "parallelism": 2})
        plan = reconcile("g", spec, PruneSweepStatus(), [], NOW)
        assert len(plan.create) == 2 and plan.dense_baseline is None
        sweep = {"metadata": {"name": "g", "namespace": "ml"}, "spec": {"template": {**TEMPLATE,
                                                                                    "evaluation": evaluation}}}
        assert prunejob_for_child(sweep, plan.create[0])["spec"]["evaluation"] == evaluation


def test_the_report_job_is_created_once_when_complete_and_followed():
    running = reconcile("g", SPEC, PruneSweepStatus(), [done(n) for n in NAMES[:5]] + [Observed(NAMES[5], "Running")],
                        NOW)
    assert not running.write_report and running.status.report is None  # not before every child finished
    finished = [done(n) for n in NAMES]
    plan = reconcile("g", SPEC, running.status, finished, NOW)
    assert plan.write_report and plan.status.report.phase == "Pending"
    assert "ReportStarted" in [e.reason for e in plan.events]
    # the Job exists (or only the status says so): never again
    for observed in (("Pending", None), None):
        again = reconcile("g", SPEC, plan.status, finished, NOW, report=observed)
        assert not again.write_report and again.status.report.phase == "Pending" and not again.events
    written = reconcile("g", SPEC, plan.status, finished, NOW, report=("Succeeded", None))
    cond = next(c for c in written.status.conditions if c.type == "ReportWritten")
    assert (cond.status, cond.reason) == ("True", "Written") and "s3://pruned/g/sweep/" in cond.message
    assert [e.reason for e in written.events] == ["ReportWritten"]
    failed = reconcile("g", SPEC, plan.status, finished, NOW, report=("Failed", "BackoffLimitExceeded"))
    assert failed.status.report.message == "BackoffLimitExceeded" and failed.events[0].reason == "ReportFailed"


def test_a_sweep_whose_children_all_failed_still_gets_its_report_unless_policy_forbids_it():
    failed = [done(n, "Failed") for n in NAMES]
    assert reconcile("g", SPEC, PruneSweepStatus(), failed, NOW).write_report
    refused = reconcile("g", SPEC, PruneSweepStatus(), failed, NOW, report_refused="Secret 's3' is not allowed")
    assert not refused.write_report and refused.status.report.phase == "Failed"
    assert "not started: Secret 's3' is not allowed" in refused.status.report.message
