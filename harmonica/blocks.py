"""Registry of supported transformer blocks: which child modules are the cacheable branches.

A branch is a child module whose output is added (after an optional adaLN gate) to the residual
stream. Its *un-gated* output is what harmonica caches, so a reused branch still gets the current
step's gate from the block's own code. Supporting a new model family is one ``register_block`` call
with a function that names the branches of a block instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class BlockSpec:
    """How to find the branches of one block class.

    ``gates(block, hidden, kwargs)`` (optional) returns the gate each branch's output is multiplied
    by before the residual add (``None`` for an ungated branch), computed the way the block computes
    it from its call's arguments. With it, a block whose branches are all reused at a step is
    replaced by one fused ``hidden + sum(gate * cached)`` (``harmonica.kernels.gather_apply``);
    without it such blocks still run their own code around the reused branches.
    """

    block_class: type
    branches: Callable[[nn.Module], tuple[str, ...]]
    check: Callable[[nn.Module], None] | None = None
    gates: Callable[[nn.Module, torch.Tensor, dict], list] | None = None


_REGISTRY: dict[type, BlockSpec] = {}


def register_block(block_class: type, branches, check=None, gates=None) -> None:
    _REGISTRY[block_class] = BlockSpec(block_class, branches, check, gates)


def spec_for(block: nn.Module) -> BlockSpec | None:
    for klass in type(block).__mro__:
        if klass in _REGISTRY:
            return _REGISTRY[klass]
    return None


def supported_block_classes() -> list[str]:
    return sorted(k.__name__ for k in _REGISTRY)


# --------------------------------------------------------------------------------- diffusers
def _basic_branches(block) -> tuple[str, ...]:
    return ("attn1", "attn2", "ff") if getattr(block, "attn2", None) is not None else ("attn1", "ff")


def _basic_check(block) -> None:
    if getattr(block, "_chunk_size", None) is not None:
        raise ValueError(
            "feed-forward chunking is enabled on this transformer (enable_forward_chunking); it calls the "
            "MLP once per chunk, which a per-branch cache cannot follow. Call "
            "transformer.disable_forward_chunking() before enabling harmonica."
        )
    if getattr(block, "only_cross_attention", False):
        raise ValueError("blocks with only_cross_attention=True are not supported")


def _basic_gates(block, hidden: torch.Tensor, kwargs: dict):
    """adaLN gates of a BasicTransformerBlock, as its forward computes them (attn2 is ungated)."""
    timestep = kwargs.get("timestep")
    if block.norm_type == "ada_norm_zero":
        norm = block.norm1
        emb = norm.emb(timestep, kwargs.get("class_labels"), hidden_dtype=hidden.dtype)
        chunks = norm.linear(norm.silu(emb)).chunk(6, dim=1)
        gate_msa, gate_mlp = chunks[2].unsqueeze(1), chunks[5].unsqueeze(1)
    elif block.norm_type == "ada_norm_single":
        chunks = (block.scale_shift_table[None] + timestep.reshape(hidden.shape[0], 6, -1)).chunk(6, dim=1)
        gate_msa, gate_mlp = chunks[2], chunks[5]
    else:
        return None
    return [gate_msa] + ([None] if block.attn2 is not None else []) + [gate_mlp]


def _basic_has_gates(block) -> bool:
    return block.norm_type in ("ada_norm_zero", "ada_norm_single") and getattr(block, "pos_embed", None) is None


def _register_diffusers_blocks() -> None:
    from diffusers.models.attention import BasicTransformerBlock

    register_block(BasicTransformerBlock, _basic_branches, _basic_check, _basic_gates)


_register_diffusers_blocks()


def transformer_blocks(transformer: nn.Module) -> list[nn.Module]:
    """The transformer's block list (``transformer.transformer_blocks``), checked against the registry."""
    blocks = getattr(transformer, "transformer_blocks", None)
    if not isinstance(blocks, (nn.ModuleList, list)) or len(blocks) == 0:
        raise ValueError(
            f"{type(transformer).__name__} has no `transformer_blocks` list; harmonica supports transformers "
            f"built from {', '.join(supported_block_classes())}"
        )
    return list(blocks)


def block_branches(transformer: nn.Module) -> tuple[str, ...]:
    """The branch names shared by every block of ``transformer`` (raises if unsupported or mixed)."""
    layouts = set()
    for i, block in enumerate(transformer_blocks(transformer)):
        spec = spec_for(block)
        if spec is None:
            raise ValueError(
                f"block {i} of {type(transformer).__name__} is a {type(block).__name__}, which harmonica does not "
                f"know; supported blocks: {', '.join(supported_block_classes())} (see harmonica.blocks.register_block)"
            )
        if spec.check is not None:
            spec.check(block)
        layouts.add(spec.branches(block))
    if len(layouts) != 1:
        raise ValueError(f"the blocks of {type(transformer).__name__} have different branch layouts: {sorted(layouts)}")
    return layouts.pop()


def branch_modules(transformer: nn.Module) -> list[list[nn.Module]]:
    """``modules[block][branch]`` for every block of ``transformer``."""
    names = block_branches(transformer)
    return [[getattr(block, name) for name in names] for block in transformer_blocks(transformer)]


def fusable(block: nn.Module) -> bool:
    """True when a fully reused ``block`` can be replaced by the fused gather-apply."""
    spec = spec_for(block)
    if spec is None or spec.gates is None:
        return False
    return _basic_has_gates(block) if spec.gates is _basic_gates else True


from .macs import count_macs  # noqa: E402,F401  (the one MAC counter, shared with the evaluation harness)
