"""The PruneSchedule model: CronJob's fields, the PruneJob spec in jobTemplate,
invalid input refused with the field named and a message that says what to do."""
from __future__ import annotations

import sys

import pytest

from prune_job.spec import PruneJobSpec, PruneSchedule, SpecError, parse_schedule_spec
from world import TEMPLATE


def problems(spec: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as err:
        parse_schedule_spec(spec)
    return dict(err.value.problems)


def test_defaults_are_cronjobs():
    spec = parse_schedule_spec({"schedule": "0 2 * * *", "jobTemplate": TEMPLATE})
    assert (spec.concurrency_policy, spec.suspend, spec.successful_jobs_history_limit,
            spec.failed_jobs_history_limit, spec.starting_deadline_seconds, spec.time_zone) == (
        "Allow", False, 3, 1, None, None)
    assert isinstance(spec.job_template.spec, PruneJobSpec)
    assert str(spec.zone) == "Etc/UTC"


@pytest.mark.parametrize("expression", ["0 2 * * *", "*/15 * * * *", "0 3 * * 1-5", "@daily", "@hourly", "5 4 1 jan *"])
def test_valid_schedules(expression):
    assert parse_schedule_spec({"schedule": expression, "jobTemplate": TEMPLATE}).schedule == expression


@pytest.mark.parametrize("expression,says", [
    ("61 * * * *", "out of range"),
    ("* * * *", "has 4 fields; a schedule has 5"),
    ("0 0 2 * * *", "has 6 fields"),
    ("every night", "has 2 fields"),
    ("", "has 0 fields"),
    ("@fortnightly", "unknown macro"),
    ("TZ=Europe/Berlin 0 2 * * *", "set spec.timeZone instead"),
    ("0 25 * * *", "out of range"),
    ("0 2 * * mon-xyz", "not a valid cron expression"),
])
def test_invalid_cron_is_refused_with_a_clear_message(expression, says):
    found = problems({"schedule": expression, "jobTemplate": TEMPLATE})
    assert list(found) == ["spec.schedule"]
    assert says in found["spec.schedule"]
    assert repr(expression) in found["spec.schedule"]


def test_bad_fields_are_named():
    found = problems({
        "schedule": "0 2 * * *", "timeZone": "Mars/Olympus", "concurrencyPolicy": "Sometimes",
        "startingDeadlineSeconds": -1, "successfulJobsHistoryLimit": -2, "surprise": 1,
        "jobTemplate": {"spec": {"model": {"uri": "ftp://x"}, "output": {"uri": "s3://b/p/"},
                                 "pruning": {"sparsity": 1.5}}},
    })
    assert set(found) == {
        "spec.timeZone", "spec.concurrencyPolicy", "spec.startingDeadlineSeconds",
        "spec.successfulJobsHistoryLimit", "spec.surprise",
        "spec.jobTemplate.spec.model.uri", "spec.jobTemplate.spec.pruning.sparsity",
    }
    assert "IANA" in found["spec.timeZone"]


def test_job_template_is_the_prunejob_model():
    found = problems({"schedule": "0 2 * * *", "jobTemplate": {"spec": {"model": {"uri": "builtin:smollm2-135m"}}}})
    assert list(found) == ["spec.jobTemplate.spec.output"]
    assert "spec.jobTemplate" in problems({"schedule": "0 2 * * *"})


def test_whole_document_round_trip():
    doc = {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneSchedule", "metadata": {"name": "n"},
           "spec": {"schedule": "@daily", "timeZone": "Europe/Berlin", "concurrencyPolicy": "Forbid",
                    "jobTemplate": {"metadata": {"labels": {"a": "b"}}, **TEMPLATE}}}
    obj = PruneSchedule.model_validate(doc)
    dumped = obj.spec.model_dump(by_alias=True, exclude_defaults=True)
    assert dumped["timeZone"] == "Europe/Berlin" and dumped["concurrencyPolicy"] == "Forbid"
    assert dumped["jobTemplate"]["metadata"] == {"labels": {"a": "b"}}


def test_without_croniter_the_cron_check_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "croniter", None)  # as in the worker image: the `job` extra lacks it
    with pytest.raises(ModuleNotFoundError, match=r"prune-operator\[operator\]"):
        parse_schedule_spec({"schedule": "0 2 * * *", "jobTemplate": TEMPLATE})
