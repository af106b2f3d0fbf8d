"""The API: one pydantic model of spec and status per kind (PruneJob, and at
the end PruneSchedule), shared by the controller, the worker, the CLI and the
CRD generator.

Imports no torch: the controller and `prune-job validate` load nothing heavy.
Field names are the contract between operator and worker (camelCase on the wire).
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NamedTuple, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from prune_job.sources.uris import UriError, parse_uri

GROUP = "pruning.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PruneJob"
PLURAL = "prunejobs"

MODEL_SCHEMES = ("builtin:", "s3://", "hf://", "pvc://", "file://")
DATA_SCHEMES = ("builtin:", "s3://", "pvc://", "file://")
BUILTIN_MODELS = ("smollm2-135m",)
BUILTIN_TEXTS = ("pydoc", "pydoc-heldout")
BUILTIN_TASKS = ("pydoc-cloze",)
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NM_PATTERN = re.compile(r"^([0-9]+):([0-9]+)$")


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are refused
    so that nothing in a spec is silently ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=True
    )


class Pattern(NamedTuple):
    """N:M sparsity: at most `n` non-zeros in every `m` consecutive inputs of a row."""

    n: int
    m: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(text: str) -> Optional[Pattern]:
    """`"unstructured"` → None; `"N:M"` → Pattern(N, M) with 0 < N < M."""
    if text == "unstructured":
        return None
    match = NM_PATTERN.match(text)
    if not match:
        raise ValueError(f'pattern must be "unstructured" or "N:M" (e.g. "2:4"), got {text!r}')
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"pattern {text!r} needs 0 < N < M (N kept of every M inputs)")
    return Pattern(n, m)


def _check_uri(uri: str, schemes: tuple[str, ...], builtins: tuple[str, ...]) -> str:
    try:
        parsed = parse_uri(uri)
    except UriError as err:
        if str(err).startswith("unsupported scheme"):
            supported = ", ".join(s for s in schemes if s != "builtin:")
            raise ValueError(f"{err}; use {supported}, builtin: or a local path") from None
        raise ValueError(str(err)) from None
    if parsed.scheme == "builtin":
        if parsed.authority not in builtins:
            raise ValueError(f"unknown builtin {parsed.authority!r}; known: {', '.join(builtins)}")
        return uri
    if parsed.scheme != "path" and not any(uri.startswith(s) for s in schemes):
        supported = ", ".join(s for s in schemes if s != "builtin:")
        raise ValueError(f"unsupported scheme {parsed.scheme!r}; use {supported}, builtin: or a local path")
    return uri


# ---------------------------------------------------------------- spec


class ModelSource(ApiModel):
    uri: str = Field(description="builtin:NAME | s3://bucket/prefix/ | hf://org/name | pvc://claim/path | /local/dir")
    revision: str = Field("main", description="Hugging Face revision (hf:// only)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    allow_pickle: bool = Field(False, description="accept .bin/.pt checkpoints (pickle); refused unless true")
    trust_remote_code: bool = False
    blocks: Optional[str] = Field(
        None, description="dotted path of the decoder block list (e.g. model.layers); found automatically when absent"
    )
    credentials_secret: Optional[str] = Field(
        None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253,
        description="hf:// only: Secret whose key `token` is the Hugging Face token (gated models); never printed",
    )
    stream: bool = Field(
        False, description="s3:// only: read each block's tensors from the bucket with verified ranged GETs, "
        "the next block prefetched, instead of downloading the model first (it is downloaded for evaluation only)",
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _check_uri(v, MODEL_SCHEMES, BUILTIN_MODELS)

    @model_validator(mode="after")
    def _token_for_hf_only(self) -> "ModelSource":
        if self.credentials_secret and not self.uri.startswith("hf://"):
            raise ValueError("credentialsSecret (a Hugging Face token) applies to hf:// models only; "
                             "s3:// models use output.credentialsSecret's S3 credentials")
        if self.stream and not self.uri.startswith("s3://"):
            raise ValueError("stream (ranged reads from the bucket) applies to s3:// models only")
        return self


class Targets(ApiModel):
    include: list[str] = Field(default_factory=list, description="regexes over module names; empty: every Linear in the blocks")
    exclude: list[str] = Field(default_factory=lambda: ["lm_head"], description="regexes over module names")

    @field_validator("include", "exclude")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for expr in v:
            try:
                re.compile(expr)
            except re.error as err:
                raise ValueError(f"invalid regex {expr!r}: {err}") from None
        return v


class Pruning(ApiModel):
    method: Literal["sparsegpt", "wanda", "magnitude"] = "sparsegpt"
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of weights removed")
    pattern: str = Field("unstructured", description='"unstructured" or "N:M" (at most N non-zeros in every M inputs)')
    targets: Targets = Field(default_factory=Targets)
    block_size: int = Field(128, ge=1, le=65536, description="SparseGPT column block")
    dampening: float = Field(0.01, gt=0.0, le=10.0, description="SparseGPT: fraction of mean(diag H) added to the diagonal")
    sequential: bool = Field(True, description="prune sub-layers in execution order, refreshing statistics")
    score: Literal["wanda", "ria"] = Field("wanda", description="wanda: mask score |W|*||X||; ria: relative importance "
                                           "(|W| over its row and column sums) times ||X||^riaPower")
    ria_power: float = Field(0.5, ge=0.0, le=4.0, description="RIA: power of the activation norm")
    update: Optional[Literal["none", "obs", "admm"]] = Field(
        None, description="weights kept by the mask: none (wanda, magnitude default), obs (SparseGPT's, its default), "
        "admm (least-squares optimum for the mask, from the Hessian)")
    admm_iterations: int = Field(20, ge=1, le=1000, description="ADMM iterations of update: admm")
    refine: Literal["none", "dsnot"] = Field("none", description="dsnot: prune-and-grow swaps lowering each row's "
                                             "reconstruction error, before the update")
    refine_cycles: int = Field(100, ge=1, le=10000, description="DSnoT: most swaps per output row")
    allocation: Literal["uniform", "owl"] = Field("uniform", description="uniform: every block at `sparsity`; owl: "
                                                  "per-block sparsity from outlier ratios, model-wide mean exact")
    owl_m: float = Field(5.0, gt=0.0, le=1000.0, description="OWL: a score is an outlier above owlM times its block's mean")
    owl_lambda: float = Field(0.08, ge=0.0, lt=1.0, description="OWL: largest deviation of a block from `sparsity`")
    permute: bool = Field(False, description="N:M: reorder MLP intermediate channels and attention value channels "
                          "(folded into the producing layers) to raise the score N:M keeps")
    permute_rounds: int = Field(100, ge=1, le=100000, description="permute: rounds of the greedy swap search")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        parse_pattern(v)
        return v

    @model_validator(mode="after")
    def _sparsity_matches_pattern(self) -> "Pruning":
        nm = parse_pattern(self.pattern)
        if nm is not None and abs(self.sparsity - nm.sparsity) > 1e-6:
            raise ValueError(
                f"sparsity {self.sparsity} does not match pattern {nm} (which removes {nm.sparsity:g}); "
                f"set sparsity to {nm.sparsity:g}"
            )
        return self

    @model_validator(mode="after")
    def _recipe_is_coherent(self) -> "Pruning":
        check_recipe(self)
        return self

    @property
    def effective_update(self) -> str:
        """`update`, or the method's own default: obs for sparsegpt, none otherwise."""
        return self.update or ("obs" if self.method == "sparsegpt" else "none")

    @property
    def recipe_name(self) -> str:
        """The recipe in one word, e.g. "wanda+ria+dsnot+admm+owl" (results.json's `recipe`)."""
        parts = [self.method]
        parts += ["ria"] if self.score == "ria" else []
        parts += ["permute"] if self.permute else []
        parts += ["dsnot"] if self.refine == "dsnot" else []
        parts += ["admm"] if self.effective_update == "admm" else []
        parts += ["owl"] if self.allocation == "owl" else []
        return "+".join(parts)

    @property
    def needs_calibration(self) -> bool:
        """Whether pruning reads calibration activations (magnitude and sparsity 0 do not)."""
        return self.method != "magnitude" and self.sparsity > 0

    @property
    def nm(self) -> Optional[Pattern]:
        return parse_pattern(self.pattern)


def check_recipe(p: "Pruning") -> None:
    """Refuse contradictory combinations of method, score, update, refine and allocation,
    naming the field (the CRD's CEL rules say the same; see prune_operator.crdgen)."""
    if p.method == "magnitude":
        for name, value, default in (("score", p.score, "wanda"), ("update", p.effective_update, "none"),
                                     ("refine", p.refine, "none"), ("allocation", p.allocation, "uniform")):
            if value != default:
                raise ValueError(f"{name}: {value} needs calibration activations, which method magnitude does not "
                                 f"read; use method wanda or sparsegpt")
    if p.score == "ria" and p.method != "wanda":
        raise ValueError("score: ria is a score of the Wanda family; use it with method wanda")
    if p.update == "obs" and p.method != "sparsegpt":
        raise ValueError("update: obs is SparseGPT's own update; use method sparsegpt (or update admm)")
    if p.update == "none" and p.method == "sparsegpt":
        raise ValueError("update: none contradicts method sparsegpt, which always updates (obs or admm); "
                         "use method wanda for a mask without update")
    if p.refine == "dsnot" and p.method == "sparsegpt" and p.effective_update == "obs":
        raise ValueError("refine: dsnot with method sparsegpt needs update: admm "
                         "(OBS chooses its mask while it updates the weights)")
    if p.permute and parse_pattern(p.pattern) is None:
        raise ValueError("permute: true needs an N:M pattern (an unstructured mask does not depend on the order "
                         "of inputs)")
    if p.allocation == "owl":
        if parse_pattern(p.pattern) is not None:
            raise ValueError("allocation: owl gives blocks different sparsities, which an N:M pattern (fixed at "
                             "1 - N/M everywhere) cannot take; use allocation uniform with N:M")
        if p.owl_lambda > p.sparsity or p.owl_lambda >= 1.0 - p.sparsity:
            raise ValueError(f"owlLambda {p.owl_lambda} must be at most sparsity ({p.sparsity:g}) and below "
                             f"1 - sparsity, so every block's sparsity stays in [0, 1)")


class Calibration(ApiModel):
    uri: str = Field("builtin:pydoc", description="builtin:pydoc | s3://bucket/key | /local/file(.txt|.jsonl)")
    samples: int = Field(128, ge=1, le=1_000_000)
    sequence_length: int = Field(2048, ge=1, le=1_048_576)
    seed: int = Field(0, ge=0)

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _check_uri(v, DATA_SCHEMES, BUILTIN_TEXTS)


class Output(ApiModel):
    uri: str = Field(description="s3://bucket/prefix/ or a local directory")
    format: Literal["compressed", "dense"] = "compressed"
    credentials_secret: Optional[str] = Field(
        None, description="Secret with accessKey, secretKey (+ endpoint, region, secure)"
    )
    max_shard_bytes: int = Field(5_000_000_000, ge=1_000_000, description="largest safetensors shard")
    overwrite: bool = Field(
        False, description="start over in a location that holds another run's checkpoint or journal "
        "(default: resume this run's journal, refuse another's)"
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        try:
            scheme: Optional[str] = parse_uri(v).scheme
        except UriError:
            scheme = None  # _check_uri names the problem
        if scheme in ("builtin", "hf"):
            raise ValueError("output must be s3://bucket/prefix/, pvc://claim/path or a local directory")
        return _check_uri(v, ("s3://", "pvc://", "file://"), ())


class PerplexityEval(ApiModel):
    uri: str = "builtin:pydoc-heldout"
    samples: int = Field(40, ge=1, le=1_000_000)
    sequence_length: int = Field(512, ge=2, le=1_048_576)

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _check_uri(v, DATA_SCHEMES, BUILTIN_TEXTS)


class GenerationEval(ApiModel):
    enabled: bool = True
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8], min_length=1)
    prompt_tokens: int = Field(128, ge=1)
    new_tokens: int = Field(64, ge=1)
    repeats: int = Field(
        7, ge=1, le=100,
        description="timed runs of each variant, interleaved after a shared warm-up; the median and the min-max "
                    "spread are reported, and a change counts only from 5 runs up (docs/measurement.md)")

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("batch sizes must be >= 1")
        return v


class Gate(ApiModel):
    """Quality limits a pruned model must meet (absent limits are not checked);
    judged by prune_job.gate.judge, for a PruneJob's QualityMet condition and a sweep's choice."""

    max_perplexity_increase_percent: Optional[float] = Field(
        None, ge=0.0, description="largest acceptable perplexity increase over the dense model, in percent"
    )
    min_sparsity: Optional[float] = Field(None, ge=0.0, le=1.0, description="smallest acceptable measured sparsity")


class DenseBaseline(ApiModel):
    """Dense figures measured once and shared (a PruneSweep's children): the dense perplexity on
    the same windows, and the dense peak memory measured in a process of its own, are not measured
    again. Speed is always measured beside each sparse model (interleaved, docs/measurement.md)."""

    perplexity: float = Field(gt=0.0, description="dense perplexity on this spec's evaluation windows")
    nll: Optional[float] = Field(None, description="its mean negative log-likelihood per token")
    peak_memory_bytes: Optional[dict[int, Annotated[int, Field(ge=0)]]] = Field(
        None, description="the dense model's peak generation memory per batch size, each measured in a process of "
        "its own on CPU (same model, settings and threads for every child: not measured again)")
    source: str = Field(description="who measured it (the PruneJob or run)")


class TasksEval(ApiModel):
    """Zero-shot multiple-choice accuracy of dense and sparse through lm-evaluation-harness
    (the optional extra `pip install 'prune-operator[tasks]'`); nothing is downloaded."""

    names: list[str] = Field(
        min_length=1, description="each an lm-eval task name (its dataset already in the local datasets cache), "
        "a local task YAML (/path/task.yaml, file://, pvc://) whose dataset is a local JSON/JSONL file, "
        "or builtin:pydoc-cloze (next word among four, from held-out pydoc text)")
    limit: Optional[int] = Field(200, ge=1, description="documents per task (the first N); null: all")
    batch_size: int = Field(8, ge=1, le=1024, description="lm-eval's batch size, the same for dense and sparse")

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if name.startswith("builtin:") or name.endswith((".yaml", ".yml")):
                _check_uri(name, ("file://", "pvc://"), BUILTIN_TASKS)
            elif not TASK_NAME.match(name):
                raise ValueError(f"{name!r} is neither an lm-eval task name, a task .yaml file nor "
                                 f"builtin:{' | builtin:'.join(BUILTIN_TASKS)}")
        if len(set(v)) != len(v):
            raise ValueError("a task is named twice")
        return v


class Evaluation(ApiModel):
    enabled: bool = True
    perplexity: PerplexityEval = Field(default_factory=PerplexityEval)
    generation: GenerationEval = Field(default_factory=GenerationEval)
    tasks: Optional[TasksEval] = Field(None, description="task accuracy beside perplexity (lm-eval; optional extra)")
    gpu_hourly_cost: Optional[float] = Field(None, ge=0.0, description="USD per GPU hour; gives cost per million tokens")
    gate: Optional[Gate] = Field(None, description="quality limits; sets the condition QualityMet after evaluation")
    dense_baseline: Optional[DenseBaseline] = Field(
        None, description="dense figures measured once for a sweep (set by the sweep controller or runner)"
    )
    measure_dense_first: bool = Field(
        False, description="measure the dense perplexity before pruning and post it to status.denseBaseline at once "
        "(set by the sweep controller on the child that measures it for the others; ignored with denseBaseline)"
    )


class Toleration(ApiModel):
    key: Optional[str] = None
    operator: Optional[Literal["Exists", "Equal"]] = None
    value: Optional[str] = None
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = None


QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"


MAX_NODES = 128
MAX_WORLD_SIZE = 1024


class Resources(ApiModel):
    gpus: int = Field(1, ge=0, le=64)
    cpu: str = Field("8", pattern=QUANTITY)
    memory: str = Field("64Gi", pattern=QUANTITY)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    nodes: int = Field(1, ge=1, le=MAX_NODES, description="pods of one PruneJob (torch.distributed ranks "
                       "across pods; more than 1: an Indexed Job with a headless Service)")
    processes_per_node: int = Field(1, ge=1, le=64, description="ranks per pod on CPU (gpus: 0); with GPUs "
                                    "there is one rank per GPU")

    @model_validator(mode="after")
    def _world(self) -> "Resources":
        if self.gpus and self.processes_per_node != 1:
            raise ValueError("processesPerNode is for CPU runs (gpus: 0); with GPUs each pod runs one process per GPU")
        if self.world_size > MAX_WORLD_SIZE:
            raise ValueError(f"nodes x processes per node is {self.world_size}, more than {MAX_WORLD_SIZE} ranks")
        return self

    @property
    def ranks_per_node(self) -> int:
        return self.gpus or self.processes_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node


class RunPolicy(ApiModel):
    backoff_limit: int = Field(2, ge=0, le=100)
    active_deadline_seconds: int = Field(86400, ge=1)
    ttl_seconds_after_finished: int = Field(604800, ge=0)
    suspend: bool = False
    queue_name: str = ""
    priority_class_name: str = ""
    termination_grace_period_seconds: int = Field(
        30, ge=1, le=3600, description="the pod's grace period after SIGTERM: the worker finishes or abandons "
        "the block in flight and makes its journal durable within it (docs/resume.md)"
    )


class PruneJobSpec(ApiModel):
    model: ModelSource
    pruning: Pruning = Field(default_factory=Pruning)
    calibration: Calibration = Field(default_factory=Calibration)
    output: Output
    evaluation: Evaluation = Field(default_factory=Evaluation)
    resources: Resources = Field(default_factory=Resources)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)

    @model_validator(mode="after")
    def _calibration_shared(self) -> "PruneJobSpec":
        world = self.resources.world_size
        if self.pruning.needs_calibration and self.calibration.samples < world:
            raise ValueError(f"calibration.samples ({self.calibration.samples}) must be at least the number of "
                             f"ranks ({world}): every rank forwards a share of the calibration windows")
        return self


class ObjectMeta(BaseModel):
    """Only what the worker reads; the rest of metadata is the API server's."""

    model_config = ConfigDict(extra="allow")
    name: str = Field("local", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    namespace: Optional[str] = None


class PruneJob(ApiModel):
    """A whole PruneJob document, as applied with kubectl."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)
    api_version: Literal["pruning.dev/v1alpha1"] = API_VERSION
    kind: Literal["PruneJob"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PruneJobSpec


# ---------------------------------------------------------------- status


class Progress(ApiModel):
    stage: str = "pending"  # resolving | pruning | writing | evaluating (perplexity-dense, perplexity-sparse,
    #   generation-memory, generation) | uploading | done
    blocks_done: int = 0
    blocks_total: int = 0
    eta_seconds: Optional[float] = None
    fraction: Optional[float] = Field(None, description="share of the current stage done, 0 to 1")
    blocks: Optional[str] = Field(
        None, description='"blocksDone/blocksTotal" as text, for `kubectl get pj` (set by the status reporter)'
    )
    resumed_from_block: Optional[int] = Field(
        None, description="the first block this run pruned, when it continued an interrupted run's journal"
    )
    resumes: int = Field(0, description="how many times the run was resumed from its journal")


class DenseSparse(ApiModel):
    dense: Optional[float] = None
    sparse: Optional[float] = None


class PerplexityResult(DenseSparse):
    increase_percent: Optional[float] = None
    dense_source: Optional[str] = Field(None, description="where the dense figure came from when shared (a sweep)")


class TaskAccuracy(DenseSparse):
    """One task's zero-shot accuracy (0 to 1), dense and sparse on the same documents."""

    task: str = Field(description="as named in spec.evaluation.tasks.names")
    change_points: Optional[float] = Field(None, description="100 x (sparse - dense): accuracy change in points")
    dense_stderr: Optional[float] = Field(None, description="lm-eval's standard error of the dense accuracy")
    sparse_stderr: Optional[float] = None
    skipped: Optional[str] = Field(None, description="why this task was not measured")


class Spread(ApiModel):
    """One figure over the timed repetitions: the median is the figure, low/high its range."""

    median: float
    low: float
    high: float
    samples: int


class Comparison(ApiModel):
    """A variant against dense for one figure: the change of the medians, and the range of
    changes the two spreads allow. `significant` only where the two ranges do not overlap."""

    percent: Optional[float] = Field(None, description="100 x (variant - dense) / dense, of the medians")
    low_percent: Optional[float] = Field(None, description="smallest change the two spreads allow")
    high_percent: Optional[float] = Field(None, description="largest change the two spreads allow")
    significant: bool = Field(False, description="the change is larger than the measured spread")
    verdict: str = Field("", description='"+21.1% (+15.2% to +27.0%)" or "no significant difference (within ±x%)"')


class FigureSpreads(ApiModel):
    tokens_per_second: Optional[Spread] = None
    time_to_first_token_ms: Optional[Spread] = None
    inter_token_latency_ms: Optional[Spread] = None


class GenerationFigures(ApiModel):
    tokens_per_second: Optional[float] = None
    time_to_first_token_ms: Optional[float] = None
    inter_token_latency_ms: Optional[float] = None
    peak_memory_bytes: Optional[int] = Field(None, description="device memory on CUDA, process RSS on CPU")
    spread: Optional[FigureSpreads] = Field(None, description="median and min-max of each timed figure")


class GenerationComparison(ApiModel):
    tokens_per_second: Optional[Comparison] = None
    time_to_first_token_ms: Optional[Comparison] = None
    inter_token_latency_ms: Optional[Comparison] = None


class GenerationResult(ApiModel):
    dense: GenerationFigures = Field(default_factory=GenerationFigures)
    sparse: GenerationFigures = Field(default_factory=GenerationFigures)
    sparse_kernel: Optional[GenerationFigures] = Field(
        None, description="the 2:4 model run with semi-structured sparse kernels (CUDA only)"
    )
    batch_size: Optional[int] = Field(None, description="the batch size these figures were measured at")
    note: Optional[str] = None
    sparse_vs_dense: Optional[GenerationComparison] = None
    sparse_kernel_vs_dense: Optional[GenerationComparison] = None


class VariantSpreads(ApiModel):
    dense: Optional[Spread] = None
    sparse: Optional[Spread] = None
    sparse_kernel: Optional[Spread] = None


class CostResult(DenseSparse):
    """USD per million generated tokens at the measured throughput."""

    sparse_kernel: Optional[float] = None
    spread: Optional[VariantSpreads] = Field(None, description="median and min-max over the timed repetitions")
    sparse_vs_dense: Optional[Comparison] = None
    sparse_kernel_vs_dense: Optional[Comparison] = None


class MemoryResult(ApiModel):
    peak_host_bytes: int = 0
    peak_device_bytes: int = 0


class StageSeconds(ApiModel):
    """Where `seconds.prune` went, on the pipeline's own thread (pipeline/stages.py); `other` is the rest."""

    capture: float = Field(0.0, description="block 0's inputs: embeddings and the calibration through them")
    read: float = Field(0.0, description="the blocks' weights read from the source files")
    statistics: float = Field(0.0, description="the forwards through each block that feed the layer statistics")
    factorise: float = Field(0.0, description="SparseGPT's damped-Hessian factorisations")
    solve: float = Field(0.0, description="masks and weight updates, per layer")
    propagate: float = Field(0.0, description="the forwards with the pruned weights (the next block's inputs)")
    write: float = Field(0.0, description="checkpoint shards and journal commits")
    trim: float = Field(0.0, description="freed memory returned to the system")
    replay: float = Field(0.0, description="a resumed run's finished blocks forwarded again")
    other: float = Field(0.0, description="seconds.prune less the stages above")


class SecondsResult(ApiModel):
    prune: float = 0.0
    evaluate: float = 0.0
    total: float = 0.0
    stages: Optional[StageSeconds] = None
    stage_cpu: Optional[StageSeconds] = Field(
        None, description="CPU seconds of the process (all threads) in each stage: over `stages`, the cores it kept busy")


class ArtifactResult(ApiModel):
    uri: Optional[str] = None
    manifest: Optional[str] = None
    bytes: int = 0
    dense_bytes: int = 0


class Results(ApiModel):
    """The summary posted to `status.results`; results.json holds it plus detail."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)
    sparsity: Optional[float] = None
    perplexity: PerplexityResult = Field(default_factory=PerplexityResult)
    generation: GenerationResult = Field(default_factory=GenerationResult)
    cost_per_million_tokens: CostResult = Field(default_factory=CostResult)
    memory: MemoryResult = Field(default_factory=MemoryResult)
    seconds: SecondsResult = Field(default_factory=SecondsResult)
    artifact: ArtifactResult = Field(default_factory=ArtifactResult)
    tasks: list[TaskAccuracy] = Field(default_factory=list, description="task accuracy (spec.evaluation.tasks)")

    def change(self, figure: str, variant: str = "sparse") -> Optional[Comparison]:
        """`variant` ("sparse" or "sparseKernel") against dense for `figure`: "costPerMillionTokens",
        "tokensPerSecond", "timeToFirstTokenMs" or "interTokenLatencyMs"; None where not measured.
        A sweep or a gate reads `.significant` (False: within the measured noise)."""
        side = "sparse_kernel_vs_dense" if variant in ("sparseKernel", "sparse_kernel", "sparse-kernel") \
            else "sparse_vs_dense"
        if figure == "costPerMillionTokens":
            return getattr(self.cost_per_million_tokens, side)
        comparisons = getattr(self.generation, side)
        names = {f.alias: name for name, f in GenerationComparison.model_fields.items()}
        if figure not in names:
            raise ValueError(f"unknown figure {figure!r}; one of costPerMillionTokens, {', '.join(names)}")
        return getattr(comparisons, names[figure]) if comparisons is not None else None


class LayerSparsity(ApiModel):
    """One pruned layer; `zeros`/`numel` are counted from the weight as written."""

    name: str
    block: Optional[int] = None
    shape: list[int] = Field(default_factory=list)
    sparsity: float
    zeros: Optional[int] = None
    numel: Optional[int] = None
    pattern_ok: Optional[bool] = Field(None, description="every group satisfies the N:M pattern (None: not checked)")
    group: list[str] = Field(default_factory=list, description="layers that shared this layer's statistics")


class CalibrationUsed(ApiModel):
    uri: str
    samples: int
    sequence_length: int
    seed: int
    tokens: int
    ids_sha256: str


class PerplexityDetail(ApiModel):
    source: str
    windows: int
    sequence_length: int
    tokens: int = Field(description="predicted tokens per model (windows x (sequenceLength - 1))")
    dense_nll: Optional[float] = Field(None, description="mean negative log-likelihood per token")
    sparse_nll: Optional[float] = None
    method: str = Field("streamed", description="streamed (one block at a time) or in-memory")


class GenerationRun(ApiModel):
    """One variant at one batch size: median [min-max] of `repeats` timed runs, interleaved with the other
    variants after a shared warm-up (docs/measurement.md)."""

    variant: Literal["dense", "sparse", "sparse-kernel"]
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    repeats: int
    figures: Optional[GenerationFigures] = None
    skipped: Optional[str] = Field(None, description="why this run did not happen (e.g. does not fit)")


class TimedRun(ApiModel):
    """One decode of the generation benchmark, in the order it ran (results.json's timeline)."""

    variant: Literal["dense", "sparse", "sparse-kernel"]
    batch_size: int
    round: int = Field(description="repetition index; -1 for the warm-up")
    start_seconds: float = Field(description="from the start of the benchmark")
    end_seconds: float
    tokens_per_second: float
    time_to_first_token_ms: float
    inter_token_latency_ms: Optional[float] = None


class EvaluationEnvironment(ApiModel):
    device: str
    device_name: Optional[str] = None
    dtype: str
    torch_version: str
    threads: int
    memory_kind: Literal["device", "host-rss"]
    sparse_kernel: Optional[str] = Field(None, description="semi-structured backend used, if any")
    load_average: Optional[float] = Field(None, description="host 1-minute load average when generation started")
    cpu_count: Optional[int] = None
    order: Optional[Literal["interleaved", "sequential"]] = Field(
        None, description="interleaved: the variants alternate after a shared warm-up (A B B A ...); sequential: "
                          "one after the other, when they did not fit in memory together")
    memory_isolation: Optional[str] = Field(None, description="how each variant's peak memory was kept apart")


class TaskDetail(ApiModel):
    """How one task ran: lm-eval's name for it, its metric, the documents scored."""

    task: str
    name: Optional[str] = Field(None, description="lm-eval's task name")
    metric: str = "acc"
    documents: Optional[int] = None


class TasksDetail(ApiModel):
    """How task accuracy was measured: the same settings for dense and sparse."""

    lm_eval_version: str
    limit: Optional[int] = None
    batch_size: int
    num_fewshot: int = 0
    sparse_loaded_by: str = Field(description="how the sparse model was loaded (load_pretrained for a checkpoint)")
    seconds: float = 0.0
    tasks: list[TaskDetail] = Field(default_factory=list)


class ResultsDetail(Results):
    """results.json: the status summary plus per-layer and per-batch detail.
    `summary()` is exactly what goes to `status.results`."""

    method: Optional[str] = None
    recipe: Optional[str] = Field(None, description="method and its options, e.g. wanda+ria+dsnot+admm+owl")
    pattern: Optional[str] = None
    target_sparsity: Optional[float] = None
    device: Optional[str] = None
    calibration: Optional[CalibrationUsed] = None
    layers: list[LayerSparsity] = Field(default_factory=list)
    perplexity_detail: Optional[PerplexityDetail] = None
    generation_runs: list[GenerationRun] = Field(default_factory=list)
    generation_timeline: list[TimedRun] = Field(default_factory=list)
    environment: Optional[EvaluationEnvironment] = None
    tasks_detail: Optional[TasksDetail] = None
    notes: list[str] = Field(default_factory=list)

    def summary(self) -> Results:
        return Results.model_validate(self.model_dump(include=set(Results.model_fields)))


class Condition(ApiModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: Optional[str] = None
    observed_generation: Optional[int] = None


class PruneJobStatus(ApiModel):
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"] = "Pending"
    observed_generation: Optional[int] = None
    conditions: list[Condition] = Field(default_factory=list)
    job_name: Optional[str] = None
    start_time: Optional[str] = None
    completion_time: Optional[str] = None
    progress: Optional[Progress] = None
    results: Optional[Results] = None
    resumes_announced: Optional[int] = Field(
        None, description="the resumes (status.progress.resumes) the controller has posted an Event for"
    )
    dense_baseline: Optional[DenseBaseline] = Field(
        None, description="the dense perplexity this run measured before pruning (evaluation.measureDenseFirst), "
        "posted by the worker as soon as it has it: its sweep shares it with the other children"
    )


# ---------------------------------------------------------------- errors


class SpecError(ValueError):
    """A spec that cannot run, with every bad field named by its path."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{path}: {reason}" for path, reason in problems))


def field_path(loc: tuple[Any, ...], root: str = "") -> str:
    parts = [root] if root else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


def problems_from(err: ValidationError, root: str = "") -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not part of the PruneJob API)"
        out.append((field_path(tuple(e["loc"]), root), msg))
    return out


TOP_LEVEL_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")


def parse_prunejob(document: dict[str, Any]) -> PruneJob:
    """Validate a PruneJob document (or a bare spec); raise SpecError naming fields."""
    if not isinstance(document, dict):
        raise SpecError([("", "a PruneJob document must be a YAML mapping")])
    if "spec" not in document and "model" in document:
        document = {"spec": document}
    unknown = sorted(str(k) for k in document if k not in TOP_LEVEL_KEYS)
    if unknown:
        raise SpecError([(k, "unknown top-level field (a PruneJob has apiVersion, kind, metadata, spec)")
                         for k in unknown])
    try:
        return PruneJob.model_validate(document)
    except ValidationError as err:
        raise SpecError(problems_from(err)) from None


def parse_spec(spec: dict[str, Any]) -> PruneJobSpec:
    """Validate a bare `spec` mapping (as the controller receives it)."""
    try:
        return PruneJobSpec.model_validate(spec)
    except ValidationError as err:
        raise SpecError(problems_from(err, root="spec")) from None


# ---------------------------------------------------------------- PruneSchedule: a CronJob for PruneJobs
#
# Fields are a CronJob's (`schedule`, `timeZone`, `concurrencyPolicy`,
# `startingDeadlineSeconds`, `suspend`, the two history limits) and
# `jobTemplate: {metadata, spec}` whose `spec` is a PruneJob spec, validated by
# the very model the PruneJob uses.

SCHEDULE_KIND = "PruneSchedule"
SCHEDULE_PLURAL = "pruneschedules"
SCHEDULE_SHORT_NAMES = ("pjs",)
# A child is named "<schedule>-<minutes since the epoch>" (as a CronJob names its Jobs):
# 52 + 1 + 10 digits = 63, the longest name a Job or its labels accept.
MAX_SCHEDULE_NAME = 52
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def croniter_class() -> Any:
    """croniter, which parses cron expressions. It comes with the `operator` extra
    (the worker's `job` extra lacks it, and the worker never reads a PruneSchedule)."""
    try:
        from croniter import croniter
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "checking a PruneSchedule's cron expression needs croniter, which the `operator` extra installs: "
            "pip install 'prune-operator[operator]'", name=err.name,
        ) from err
    return croniter


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
    croniter = croniter_class()
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


# ---------------------------------------------------------------- PruneSweep: a grid of PruneJobs
#
# `template` is a PruneJob spec, validated by the very model the PruneJob uses;
# `matrix` maps pruning fields to lists of values, whose product (at most
# MAX_SWEEP_CHILDREN) is the set of children; the grid itself (combinations,
# names, selection) is prune_job.sweep, shared by the controller and `prune-job sweep`.

SWEEP_KIND = "PruneSweep"
SWEEP_PLURAL = "prunesweeps"
SWEEP_SHORT_NAMES = ("pjsw",)
MAX_SWEEP_CHILDREN = 64
SWEEP_OBJECTIVES = ("minCostPerMillionTokens", "maxSparsity", "minPerplexity", "minCheckpointBytes")


class SweepSelect(Gate):
    """The objective, among the children that meet the limits (the same limits as a PruneJob's gate)."""

    objective: Literal["minCostPerMillionTokens", "maxSparsity", "minPerplexity", "minCheckpointBytes"] = Field(
        "minCostPerMillionTokens", description="what the best child minimises or maximises"
    )


class PruneSweepSpec(ApiModel):
    template: PruneJobSpec = Field(description="a PruneJob spec: every child's, with the matrix's pruning fields set")
    matrix: dict[str, list[Any]] = Field(
        description="pruning fields (method, pattern, sparsity, ...) to lists of values; children = their product"
    )
    parallelism: int = Field(2, ge=1, le=MAX_SWEEP_CHILDREN, description="children running at once")
    select: SweepSelect = Field(default_factory=SweepSelect)

    @model_validator(mode="after")
    def _grid(self) -> "PruneSweepSpec":
        from prune_job.sweep.grid import check_matrix  # the grid's rules live with the grid

        check_matrix(self.template, self.matrix)
        return self


class SweepRow(ApiModel):
    """One child of a sweep, as the status table shows it."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)
    child: str
    combination: dict[str, Any] = Field(default_factory=dict)
    phase: str = "Pending"
    sparsity: Optional[float] = None
    perplexity_increase_percent: Optional[float] = None
    tokens_per_second: Optional[float] = None
    cost_per_million_tokens: Optional[float] = None
    checkpoint_bytes: Optional[int] = None
    cost_significant: Optional[bool] = Field(
        None, description="whether the sparse cost differs significantly from dense (absent: treated as significant)"
    )
    quality_met: Optional[bool] = None
    message: Optional[str] = None


class SweepBest(ApiModel):
    child: Optional[str] = None
    combination: dict[str, Any] = Field(default_factory=dict)
    why: str = ""
    perplexity_increase_percent: Optional[float] = None
    closest: Optional[str] = Field(None, description="when no child meets the limits: the one nearest to them")


class SkippedCombination(ApiModel):
    combination: dict[str, Any]
    reason: str


class SweepReport(ApiModel):
    """The sweep report written in the cluster by a Job the controller starts once the sweep is Complete."""

    job: str = Field(description="the batch/v1 Job that writes it (`prune-job sweep-report`)")
    uri: str = Field(description="where it is written: <template output>/sweep/ (report.md, sweep.json, pareto.png)")
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    message: Optional[str] = None


class PruneSweepStatus(ApiModel):
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)
    observed_generation: Optional[int] = None
    conditions: list[Condition] = Field(default_factory=list)
    total: int = 0
    completed: int = 0
    done: Optional[str] = Field(None, description='"completed/total", for `kubectl get pjsw`')
    rows: list[SweepRow] = Field(default_factory=list)
    skipped: list[SkippedCombination] = Field(default_factory=list)
    best: Optional[SweepBest] = None
    report: Optional[SweepReport] = None


class PruneSweep(ApiModel):
    """A whole PruneSweep document, as applied with kubectl."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)
    api_version: Literal["pruning.dev/v1alpha1"] = API_VERSION
    kind: Literal["PruneSweep"] = SWEEP_KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PruneSweepSpec
    status: Optional[PruneSweepStatus] = None


def parse_sweep_spec(spec: dict[str, Any]) -> PruneSweepSpec:
    """Validate a bare PruneSweep `spec`; raise SpecError naming each bad field."""
    try:
        return PruneSweepSpec.model_validate(spec)
    except ValidationError as err:
        raise SpecError(problems_from(err, root="spec")) from None


def parse_sweep(document: dict[str, Any]) -> PruneSweep:
    try:
        return PruneSweep.model_validate(document)
    except ValidationError as err:
        raise SpecError(problems_from(err)) from None


def parse_sweep_status(status: dict[str, Any] | None) -> PruneSweepStatus:
    return PruneSweepStatus.model_validate(status or {})
