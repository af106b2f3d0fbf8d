"""The model's own forward, cut at the blocks: capture what block 0 receives,
run blocks one at a time, and finish through the model's own tail.

Nothing here is architecture-specific: block 0's inputs are whatever the
model's forward passes it (positional and keyword arguments: masks, rotary
embeddings, positions), and the tail (final norm, head) is the model's own
forward with the blocks short-circuited.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from prune_job.pipeline.model import ModelHandle


class StopForward(Exception):
    """Raised by a hook to end a forward pass once what it needed was seen."""


@dataclass
class MicroBatch:
    """One micro-batch as block 0 receives it. `hidden` is replaced by each
    block's output; `args`/`kwargs` (masks, positions, rotary tables) are the same
    for every block."""

    hidden: torch.Tensor
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    hidden_in_kwargs: bool = False

    def call(self, block: nn.Module, device: torch.device) -> torch.Tensor:
        hidden = self.hidden.to(device, non_blocking=True)
        args = _to(self.args, device)
        kwargs = _to(self.kwargs, device)
        if self.hidden_in_kwargs:
            out = block(*args, hidden_states=hidden, **kwargs)
        else:
            out = block(hidden, *args, **kwargs)
        # The tail short-circuit must answer in the block's own output shape.
        block._prune_returns_tuple = isinstance(out, (tuple, list))
        return out[0] if isinstance(out, (tuple, list)) else out


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _block_param_ids(handle: ModelHandle) -> set[int]:
    return {id(p) for p in handle.blocks.parameters()}


@contextlib.contextmanager
def outer_modules_loaded_on_use(handle: ModelHandle) -> Iterator[None]:
    """Every module outside the blocks loads its own weights the first time it
    runs, so only what actually executes (embeddings before block 0; norm and
    head in the tail) is ever read from disk."""
    block_ids = _block_param_ids(handle)
    in_blocks = set(handle.blocks.modules())
    hooks = []
    names = {id(m): n for n, m in handle.model.named_modules()}
    for module in handle.model.modules():
        if module in in_blocks:
            continue
        own = [p for p in module.parameters(recurse=False) if id(p) not in block_ids]
        if not own and not any(True for _ in module.buffers(recurse=False)):
            continue

        def load(mod: nn.Module, _args: Any, prefix: str = names[id(module)]) -> None:
            if any(p.is_meta for p in mod.parameters(recurse=False)):
                handle.load(mod, prefix)
            for bname, buf in mod.named_buffers(recurse=False):
                if buf.device != handle.device and not buf.is_meta:
                    mod._buffers[bname] = buf.to(handle.device)

        hooks.append(module.register_forward_pre_hook(load))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def capture_block_inputs(handle: ModelHandle, batches: list[torch.Tensor]) -> list[MicroBatch]:
    """Run the model's forward on each batch of token ids until block 0 is
    called, keeping block 0's arguments."""
    captured: list[MicroBatch] = []

    def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            captured.append(MicroBatch(_own(args[0]), _detach(args[1:]), _detach(kwargs)))
        else:
            kw = dict(kwargs)
            hidden = kw.pop("hidden_states")
            captured.append(MicroBatch(_own(hidden), (), _detach(kw), hidden_in_kwargs=True))
        raise StopForward

    hook = handle.blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with outer_modules_loaded_on_use(handle), torch.no_grad():
            for ids in batches:
                with contextlib.suppress(StopForward):
                    handle.model(input_ids=ids.to(handle.device), use_cache=False)
    finally:
        hook.remove()
    if len(captured) != len(batches):
        raise RuntimeError("the model's forward did not reach its first block")
    return captured


def _own(hidden: torch.Tensor) -> torch.Tensor:
    """A host copy that nothing else shares: `advance` overwrites it in place."""
    return hidden.detach().to("cpu", copy=True)


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, tuple):
        return tuple(_detach(o) for o in obj)
    if isinstance(obj, list):
        return [_detach(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items() if k not in ("past_key_values", "past_key_value", "layer_past")}
    return obj


def advance(block: nn.Module, inputs: list[MicroBatch], device: torch.device) -> None:
    """Replace each micro-batch's hidden states by the block's output (block i's
    outputs are block i+1's inputs), one micro-batch at a time and into the same
    host buffer, so only one extra micro-batch of activations is ever alive."""
    with torch.no_grad():
        for mb in inputs:
            out = mb.call(block, device)
            if out.shape == mb.hidden.shape and out.dtype == mb.hidden.dtype:
                mb.hidden.copy_(out)
            else:
                mb.hidden = out.to("cpu")
            del out


@contextlib.contextmanager
def blocks_short_circuited(handle: ModelHandle, final_hidden: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Make block 0 return the already-computed final hidden states and every
    other block pass its input through, so the model's own forward applies
    only its tail (final norm, head) to them."""
    originals = [b.forward for b in handle.blocks]
    as_tuple = getattr(handle.blocks[0], "_prune_returns_tuple", False)

    def shaped(hidden: torch.Tensor) -> Any:
        return (hidden,) if as_tuple else hidden

    def first(*args: Any, **kwargs: Any) -> Any:
        return shaped(final_hidden().to(handle.device))

    def passthrough(*args: Any, **kwargs: Any) -> Any:
        return shaped(args[0] if args else kwargs["hidden_states"])

    for i, block in enumerate(handle.blocks):
        block.forward = first if i == 0 else passthrough
    try:
        yield
    finally:
        for block, fwd in zip(handle.blocks, originals):
            block.forward = fwd


def tail_logits(handle: ModelHandle, batch_ids: torch.Tensor, final_hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits for `batch_ids`, given the last block's output."""
    with blocks_short_circuited(handle, lambda: final_hidden), outer_modules_loaded_on_use(handle):
        with torch.no_grad():
            return handle.model(input_ids=batch_ids.to(handle.device), use_cache=False).logits


def stream_forward(
    handle: ModelHandle,
    batches: list[torch.Tensor],
    on_block: Optional[Callable[[int], None]] = None,
) -> list[torch.Tensor]:
    """Final hidden states for each batch with one block in memory at a time."""
    inputs = capture_block_inputs(handle, batches)
    for i, block in enumerate(handle.blocks):
        prefix = handle.block_prefix(i)
        handle.load_tree(prefix)
        advance(block, inputs, handle.device)
        handle.release_tree(prefix)
        if on_block:
            on_block(i)
    return [mb.hidden for mb in inputs]
