"""Where `spec.evaluation.tasks` come from: lm-evaluation-harness task names,
local task files (a task YAML whose dataset is a local JSON/JSONL file), and
`builtin:pydoc-cloze`, a multiple-choice cloze built here from held-out pydoc text.

No torch and nothing heavy: `prune-job validate` runs `task_problems`. lm-eval
itself is an optional extra (`pip install 'prune-operator[tasks]'`): it is
looked for without being imported, and a spec that asks for tasks without it is
refused with the extra named.

The cloze builder is also a command: `python -m prune_job.sources.tasks DIR
[--samples N] [--seed S]` writes `pydoc_cloze.yaml` and `pydoc_cloze.jsonl` into DIR.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import yaml

from prune_job.sources.texts import pydoc_text
from prune_job.sources.uris import parse_uri
from prune_job.spec import PruneJob, SpecError, TasksEval

EXTRA = "pip install 'prune-operator[tasks]'"
FIELD = "spec.evaluation.tasks"
CLOZE_TASK = "pydoc_cloze"
CLOZE_SAMPLES = 500
CLOZE_CHOICES = 4
CONTEXT_CHARS = 400
_WORD = re.compile(r"(?<=\S )[a-z]{4,}(?=[ ,.;:])")  # a word after one space, inside a line


def lm_eval_available() -> bool:
    """lm-eval is installed (found, not imported: `validate` stays light)."""
    return importlib.util.find_spec("lm_eval") is not None


def missing_extra() -> str:
    return f"task accuracy runs lm-evaluation-harness, which is not installed: {EXTRA}"


def is_task_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def task_problems(job: PruneJob) -> list[tuple[str, str]]:
    """Why `spec.evaluation.tasks` cannot run here, or []: the extra, and each local task file."""
    tasks = job.spec.evaluation.tasks
    if tasks is None or not job.spec.evaluation.enabled:
        return []
    if not lm_eval_available():
        return [(FIELD, missing_extra())]
    problems = []
    for k, name in enumerate(tasks.names):
        if is_task_file(name):
            problem = task_file_problem(parse_uri(name).local_path())
            if problem:
                problems.append((f"{FIELD}.names[{k}]", problem))
    return problems


def task_file_problem(path: Path) -> Optional[str]:
    """Why a task YAML cannot be used, or None. Its dataset must be local (no hub): `dataset_path: json`
    with `dataset_kwargs.data_files` naming files that exist (relative to the YAML's folder)."""
    if not path.is_file():
        return f"{path} does not exist or is not a file"
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_PlainLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        return f"{path.name}: not a YAML task file ({str(err).splitlines()[0]})"
    if not isinstance(config, dict) or "task" not in config:
        return f"{path.name}: a task file is a mapping with a `task:` name (lm-eval's task YAML)"
    runs_code = _functions(config, "")
    if runs_code or "include" in config:
        what = f"`!function` ({', '.join(runs_code)})" if runs_code else "`include:`"
        return (f"{path.name}: {what} is refused in a task file: a local task is one self-contained YAML "
                "that runs no code (doc_to_text/doc_to_choice/doc_to_target as fields or Jinja templates)")
    if config.get("dataset_path") != "json":
        return (f"{path.name}: dataset_path must be `json` with dataset_kwargs.data_files naming local "
                f".json/.jsonl files (nothing is downloaded); got {config.get('dataset_path')!r}")
    files = data_files(config, path.parent)
    missing = [str(f) for f in files if not f.is_file()]
    if not files or missing:
        return (f"{path.name}: dataset_kwargs.data_files must name existing local files; "
                f"missing: {missing or 'none given'}")
    return None


class _Function(str):
    """A `!function module.name` tag, kept as text: lm-eval would import and run that module."""


class _PlainLoader(yaml.SafeLoader):
    """Reads a task YAML without running it: `!function` tags become `_Function` text."""


_PlainLoader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))


def _functions(value: object, where: str) -> list[str]:
    """Where (dotted keys) `!function` tags occur, at any depth."""
    if isinstance(value, _Function):
        return [where]
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in _functions(v, f"{where}.{k}".lstrip("."))]
    if isinstance(value, list):
        return [f for k, v in enumerate(value) for f in _functions(v, f"{where}[{k}]")]
    return []


def data_files(config: dict, folder: Path) -> list[Path]:
    """The local files a task YAML's `dataset_kwargs.data_files` names (a path, a list, or split -> path(s))."""
    given = (config.get("dataset_kwargs") or {}).get("data_files")
    values = list(given.values()) if isinstance(given, dict) else [given]
    paths: list[Path] = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                paths.append(Path(item) if Path(item).is_absolute() else folder / item)
    return paths


# ---------------------------------------------------------------- builtin:pydoc-cloze


@dataclass(frozen=True)
class ClozeItem:
    context: str
    choices: list[str]
    label: int


def cloze_items(samples: int = CLOZE_SAMPLES, seed: int = 0, text: Optional[str] = None) -> list[ClozeItem]:
    """Deterministic cloze questions from held-out pydoc text: the text before a word (up to
    CONTEXT_CHARS, from its paragraph), and that word among three others drawn from the text's
    words of four or more letters that occur at least three times. Every run with the same
    arguments gives the same items."""
    text = pydoc_text("pydoc-heldout") if text is None else text
    words = [m for m in _WORD.finditer(text)]
    counts = Counter(m.group() for m in words)
    pool = sorted(w for w, n in counts.items() if n >= 3)
    rng = random.Random(seed)
    items = []
    for m in rng.sample(words, min(len(words), samples * 4)):
        start = max(text.rfind("\n\n", 0, m.start()) + 2, m.start() - CONTEXT_CHARS)
        context = text[start:m.start()].rstrip()
        if len(context) < 80 or len(items) >= samples:
            continue
        others = rng.sample([w for w in pool if w != m.group()], CLOZE_CHOICES - 1)
        label = rng.randrange(CLOZE_CHOICES)
        items.append(ClozeItem(context, others[:label] + [m.group()] + others[label:], label))
    return items


def write_pydoc_cloze(folder: Path, samples: int = CLOZE_SAMPLES, seed: int = 0) -> Path:
    """Write `pydoc_cloze.jsonl` and the task YAML that reads it into `folder`; return the YAML's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{CLOZE_TASK}.jsonl"
    data.write_text("".join(json.dumps(vars(item)) + "\n" for item in cloze_items(samples, seed)), encoding="utf-8")
    config = {
        "task": CLOZE_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "description": f"next word among {CLOZE_CHOICES}, held-out pydoc, seed {seed}"},
    }
    path = folder / f"{CLOZE_TASK}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def resolve_tasks(tasks: TasksEval, workdir: Path) -> list[Union[str, dict]]:
    """What lm-eval is given for each entry of `names`: a registered name as is; a task file as its
    config, its data files made absolute (lm-eval would read relative ones from the current
    directory); `builtin:pydoc-cloze` written into `workdir` first."""
    resolved: list[Union[str, dict]] = []
    for name in tasks.names:
        uri = parse_uri(name) if (":" in name or is_task_file(name)) else None
        if uri is None:
            resolved.append(name)
            continue
        path = write_pydoc_cloze(Path(workdir) / "tasks" / uri.authority) if uri.scheme == "builtin" \
            else uri.local_path()
        problem = task_file_problem(path)
        if problem:
            raise SpecError([(FIELD, problem)])
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_PlainLoader)
        files = _absolute(config["dataset_kwargs"]["data_files"], path.parent)
        config["dataset_kwargs"] = {**config["dataset_kwargs"], "data_files": files}
        resolved.append(config)
    return resolved


def _absolute(given: Union[str, list, dict], folder: Path) -> Union[str, list, dict]:
    """`data_files` (a path, a list, or split -> path(s)) with each path absolute, the shape kept."""
    if isinstance(given, dict):
        return {split: _absolute(value, folder) for split, value in given.items()}
    if isinstance(given, list):
        return [_absolute(value, folder) for value in given]
    return str((folder / given).resolve())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prune_job.sources.tasks",
                                     description="write the pydoc cloze task (YAML + JSONL) for lm-eval")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--samples", type=int, default=CLOZE_SAMPLES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_pydoc_cloze(args.folder, args.samples, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
