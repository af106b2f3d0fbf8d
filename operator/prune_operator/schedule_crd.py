"""The PruneSchedule CRD, generated from prune_job.schedule_spec with the same
functions as the PruneJob's (crdgen picks it up through `crds()`)."""
from __future__ import annotations

import copy
from typing import Any

from prune_job import schedule_spec as sched
from prune_job import spec as api
from prune_operator import crdgen

SCHEDULE_COLUMNS = [
    crdgen.printer_column("Schedule", ".spec.schedule"),
    crdgen.printer_column("TimeZone", ".spec.timeZone"),
    crdgen.printer_column("Suspend", ".spec.suspend", "boolean"),
    crdgen.printer_column("Active", ".status.active[*].name"),
    crdgen.printer_column("Last Schedule", ".status.lastScheduleTime", "date"),
    crdgen.printer_column("Next", ".status.nextScheduleTime", "date", priority=1),
    crdgen.printer_column("Age", ".metadata.creationTimestamp", "date"),
]
NAME_RULE = {
    "rule": f"size(self.metadata.name) <= {sched.MAX_SCHEDULE_NAME}",
    "message": (
        f"a PruneSchedule name has at most {sched.MAX_SCHEDULE_NAME} characters: its PruneJobs are named "
        "<name>-<minutes since the epoch> and must fit in 63"
    ),
}


def pruneschedule_crd() -> dict[str, Any]:
    spec_schema = crdgen.structural_schema(sched.PruneScheduleSpec)
    job_spec = crdgen.at_path(spec_schema, "jobTemplate.spec")
    pruning = crdgen.at_path(job_spec, "pruning")
    pruning["properties"]["pattern"]["maxLength"] = 16  # bounds the CEL cost, as for PruneJob
    pruning["x-kubernetes-validations"] = copy.deepcopy(crdgen.PRUNING_RULES)
    crd = crdgen.custom_resource_definition(
        group=api.GROUP,
        version=api.VERSION,
        kind=sched.SCHEDULE_KIND,
        plural=sched.SCHEDULE_PLURAL,
        spec_schema=spec_schema,
        status_schema=crdgen.structural_schema(sched.PruneScheduleStatus, defaults=False),
        short_names=list(sched.SCHEDULE_SHORT_NAMES),
        categories=["pruning"],
        printer_columns=SCHEDULE_COLUMNS,
    )
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    root["x-kubernetes-validations"] = [dict(NAME_RULE)]
    return crd


def crds() -> dict[str, dict[str, Any]]:
    return {"pruneschedule.yaml": pruneschedule_crd()}
