"""The grid of a PruneSweep, as pure functions: the matrix's product in a
fixed order, the combinations an N:M pattern contradicts (skipped and listed,
not failed), one readable deterministic name per child and its output."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from prune_job.spec import MAX_SWEEP_CHILDREN, Pruning, PruneJobSpec, parse_pattern, problems_from
from prune_job.sources.uris import parse_uri

MAX_NAME = 63  # a child's Job and labels carry its name
HASH = 8
FIRST_KEYS = ("method", "pattern", "sparsity")  # the order of a name's parts; other keys follow, sorted


@dataclass(frozen=True)
class Child:
    name: str
    combination: dict[str, Any]  # camelCase pruning field -> value, as written in the matrix
    index: int  # position in the grid (children run in this order)


@dataclass(frozen=True)
class Grid:
    children: tuple[Child, ...]
    skipped: tuple[tuple[dict[str, Any], str], ...]  # (combination, why)


def pruning_fields() -> dict[str, str]:
    """camelCase name -> field name of every pruning field a matrix may vary."""
    return {(f.alias or name): name for name, f in Pruning.model_fields.items()}


def ordered_keys(matrix: dict[str, list[Any]]) -> list[str]:
    return [k for k in FIRST_KEYS if k in matrix] + sorted(k for k in matrix if k not in FIRST_KEYS)


def combinations(matrix: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = ordered_keys(matrix)
    return [dict(zip(keys, values)) for values in itertools.product(*(matrix[k] for k in keys))]


def contradiction(pruning: dict[str, Any]) -> str | None:
    """Why an N:M pattern and a sparsity cannot go together (None when they can)."""
    try:
        nm = parse_pattern(str(pruning.get("pattern", "unstructured")))
    except ValueError:
        return None  # a malformed pattern is a bad field, not a skipped combination
    sparsity = pruning.get("sparsity")
    if nm is None or not isinstance(sparsity, (int, float)) or abs(sparsity - nm.sparsity) <= 1e-6:
        return None
    return f"pattern {nm} removes {nm.sparsity:g} of the weights, not {sparsity:g}"


def child_pruning(template: PruneJobSpec, combination: dict[str, Any]) -> dict[str, Any]:
    return {**template.pruning.model_dump(by_alias=True, mode="json"), **combination}


def check_matrix(template: PruneJobSpec, matrix: dict[str, list[Any]]) -> None:
    """ValueError naming the field (matrix.KEY[i]) of the first problem: unknown keys, empty
    lists, values the Pruning model refuses, more than MAX_SWEEP_CHILDREN, or nothing left."""
    known = pruning_fields()
    for key, values in matrix.items():
        if key not in known:
            raise ValueError(f"matrix.{key}: not a pruning field; known: {', '.join(sorted(known))}")
        if not values:
            raise ValueError(f"matrix.{key}: give at least one value")
        for i, value in enumerate(values):
            if key == "pattern":
                try:
                    parse_pattern(str(value))
                except ValueError as err:
                    raise ValueError(f"matrix.pattern[{i}]: {err}") from None
                continue
            try:
                Pruning.model_validate({**template.pruning.model_dump(by_alias=True, mode="json"),
                                        "pattern": "unstructured", key: value})
            except ValidationError as err:
                reasons = "; ".join(r for _, r in problems_from(err))
                raise ValueError(f"matrix.{key}[{i}]: {reasons}") from None
    total = math.prod(len(v) for v in matrix.values())
    if total > MAX_SWEEP_CHILDREN:
        raise ValueError(f"matrix: {total} combinations; at most {MAX_SWEEP_CHILDREN}")
    if not plan_grid("x", template, matrix).children:
        raise ValueError("matrix: every combination contradicts its pattern; nothing would run")


def plan_grid(sweep: str, template: PruneJobSpec, matrix: dict[str, list[Any]]) -> Grid:
    """The children (in grid order, named) and the skipped combinations."""
    kept, skipped = [], []
    for combination in combinations(matrix):
        why = contradiction(child_pruning(template, combination))
        if why:
            skipped.append((combination, why))
        else:
            try:
                Pruning.model_validate(child_pruning(template, combination))
            except ValidationError as err:
                skipped.append((combination, "; ".join(r for _, r in problems_from(err))))
                continue
            kept.append(combination)
    names = child_names(sweep, kept)
    return Grid(tuple(Child(n, c, i) for i, (n, c) in enumerate(zip(names, kept))), tuple(skipped))


# ---------------------------------------------------------------- names


def _slug(value: Any) -> str:
    text = str(value).lower().replace(":", "of").replace(".", "p")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def name_parts(combination: dict[str, Any]) -> list[str]:
    """sparsegpt, 2of4 (the sparsity an N:M pattern implies is left out), 50 (percent), others as key+value."""
    parts = []
    pattern = str(combination.get("pattern", "unstructured"))
    for key, value in combination.items():
        if key == "method":
            parts.append(_slug(value))
        elif key == "pattern":
            if value != "unstructured":
                parts.append(_slug(value))
        elif key == "sparsity":
            if pattern == "unstructured":
                parts.append(_slug(f"{round(float(value) * 100, 4):g}"))
        elif isinstance(value, (dict, list)):
            parts.append(_slug(key) + "-" + digest(value)[:6])
        elif isinstance(value, bool):
            parts.append(_slug(key) if value else "no" + _slug(key))
        else:
            parts.append(_slug(key) + _slug(value))
    return [p for p in parts if p]


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def child_names(sweep: str, combos: list[dict[str, Any]]) -> list[str]:
    """`<sweep>-<parts>`; a name too long, or one two combinations share, ends in a hash of its combination."""
    plain = ["-".join([sweep, *name_parts(c)]) for c in combos]
    counts = {n: plain.count(n) for n in plain}
    out = []
    for name, combo in zip(plain, combos):
        if len(name) <= MAX_NAME and counts[name] == 1:
            out.append(name)
        else:
            out.append(f"{name[: MAX_NAME - HASH - 1].rstrip('-')}-{digest(combo)[:HASH]}")
    return out


def child_output(template_output: str, child: str) -> str:
    """`<template output>/<child>/`."""
    return parse_uri(template_output).join(child) + "/"


def report_output(template_output: str) -> str:
    """`<template output>/sweep/`: the sweep report."""
    return parse_uri(template_output).join("sweep") + "/"


def child_spec(template: PruneJobSpec, child: Child, sweep_output: str | None = None) -> PruneJobSpec:
    """The child's PruneJob spec: the template with its combination and its own output folder."""
    data = template.model_dump(by_alias=True, mode="json", exclude_none=True)
    data["pruning"] = child_pruning(template, child.combination)
    data["output"]["uri"] = child_output(sweep_output or template.output.uri, child.name)
    return PruneJobSpec.model_validate(data)
