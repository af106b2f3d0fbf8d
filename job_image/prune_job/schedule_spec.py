"""The PruneSchedule API: a CronJob for PruneJobs.

Fields are a CronJob's (`schedule`, `timeZone`, `concurrencyPolicy`,
`startingDeadlineSeconds`, `suspend`, the two history limits) and
`jobTemplate: {metadata, spec}` whose `spec` is a PruneJob spec, validated by
the very model the PruneJob uses. Imports no torch.
"""
from __future__ import annotations

from typing import Any, Literal, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from prune_job.spec import API_VERSION, ApiModel, Condition, PruneJobSpec, SpecError, problems_from

SCHEDULE_KIND = "PruneSchedule"
SCHEDULE_PLURAL = "pruneschedules"
SCHEDULE_SHORT_NAMES = ("pjs",)
# A child is named "<schedule>-<minutes since the epoch>" (as a CronJob names its Jobs):
# 52 + 1 + 10 digits = 63, the longest name a Job or its labels accept.
MAX_SCHEDULE_NAME = 52
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def check_cron(expression: str) -> str:
    """A five-field cron expression or a macro (@hourly ...), as a CronJob accepts.

    Raises ValueError with a message that says what is wrong and what is expected.
    """
    text = expression.strip()
    if text.upper().startswith(("TZ=", "CRON_TZ=")):
        raise ValueError(f"{expression!r}: TZ= and CRON_TZ= are not allowed in schedule; set spec.timeZone instead")
    if text.startswith("@"):
        if text.lower() not in CRON_MACROS:
            raise ValueError(f"{expression!r}: unknown macro; use one of {', '.join(CRON_MACROS)}")
        return text
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            f"{expression!r} has {len(fields)} fields; a schedule has 5: "
            '"minute hour day-of-month month day-of-week", e.g. "0 2 * * *" (02:00 every day)'
        )
    try:
        croniter(text)
    except (ValueError, KeyError) as err:  # croniter's CroniterBadCronError is a ValueError
        raise ValueError(f"{expression!r} is not a valid cron expression: {err}") from None
    return text


def check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Etc/UTC or Europe/Berlin") from None
    return name


class TemplateMetadata(BaseModel):
    """Labels and annotations copied onto every PruneJob the schedule creates."""

    model_config = ConfigDict(extra="forbid")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PruneJobTemplate(ApiModel):
    metadata: TemplateMetadata = Field(default_factory=TemplateMetadata)
    spec: PruneJobSpec


class PruneScheduleSpec(ApiModel):
    schedule: str = Field(description='cron expression, 5 fields ("0 2 * * *") or a macro (@daily)')
    time_zone: Optional[str] = Field(None, description="IANA time zone of the schedule; absent: Etc/UTC")
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = Field(
        "Allow", description="Allow: runs may overlap; Forbid: skip while one runs; Replace: delete the running one"
    )
    starting_deadline_seconds: Optional[int] = Field(
        None, ge=0, description="a run not started within this many seconds of its time is skipped"
    )
    suspend: bool = Field(False, description="true: start no new runs (running ones continue)")
    successful_jobs_history_limit: int = Field(3, ge=0, le=1000, description="Succeeded PruneJobs kept")
    failed_jobs_history_limit: int = Field(1, ge=0, le=1000, description="Failed PruneJobs kept")
    job_template: PruneJobTemplate

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        return check_cron(v)

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else check_time_zone(v)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone or "Etc/UTC")


class ActiveRef(ApiModel):
    """An ObjectReference to a PruneJob of this schedule that has not finished."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)
    api_version: str = API_VERSION
    kind: str = "PruneJob"
    name: str
    namespace: Optional[str] = None
    uid: Optional[str] = None


class PruneScheduleStatus(ApiModel):
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)
    active: list[ActiveRef] = Field(default_factory=list)
    last_schedule_time: Optional[str] = None
    last_successful_time: Optional[str] = None
    next_schedule_time: Optional[str] = None
    observed_generation: Optional[int] = None
    conditions: list[Condition] = Field(default_factory=list)


class PruneSchedule(ApiModel):
    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)
    api_version: Literal["pruning.dev/v1alpha1"] = API_VERSION
    kind: Literal["PruneSchedule"] = SCHEDULE_KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: PruneScheduleSpec
    status: Optional[PruneScheduleStatus] = None


def parse_schedule_spec(spec: dict[str, Any]) -> PruneScheduleSpec:
    """Validate a bare PruneSchedule `spec`; raise SpecError naming each bad field."""
    try:
        return PruneScheduleSpec.model_validate(spec)
    except ValidationError as err:
        raise SpecError(problems_from(err, root="spec")) from None


def parse_schedule_status(status: dict[str, Any] | None) -> PruneScheduleStatus:
    """The status as stored; fields this model does not know are kept, never refused."""
    return PruneScheduleStatus.model_validate(status or {})
