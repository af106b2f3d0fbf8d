"""The order in which the generation benchmark runs its variants (pure).

For each batch size: a shared warm-up (every variant once, not counted), then
`repeats` rounds in which every variant runs once, the order reversed every
other round: A B, B A, A B, ... (with three variants A B C, C B A, ...). Drift
of the host (clock boost, other processes, caches) then falls on every variant
alike instead of on whichever ran first, and each variant gets the same number
of turns right after another variant ran.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

WARM_UP = -1


@dataclass(frozen=True)
class Slot:
    variant: str
    batch_size: int
    round: int  # WARM_UP for the warm-up run

    @property
    def warm_up(self) -> bool:
        return self.round == WARM_UP


def round_order(variants: Sequence[str], round_index: int) -> list[str]:
    return list(variants) if round_index % 2 == 0 else list(reversed(variants))


def batch_order(variants: Sequence[str], batch_size: int, repeats: int) -> list[Slot]:
    """The warm-up of every variant, then `repeats` alternating rounds, for one batch size."""
    slots = [Slot(v, batch_size, WARM_UP) for v in variants]
    for r in range(repeats):
        slots += [Slot(v, batch_size, r) for v in round_order(variants, r)]
    return slots


def measurement_order(variants: Sequence[str], batch_sizes: Sequence[int], repeats: int) -> list[Slot]:
    """Every run of the benchmark in the order it happens."""
    return [slot for b in batch_sizes for slot in batch_order(variants, b, repeats)]
