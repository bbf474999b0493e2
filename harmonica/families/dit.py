"""DiT (``DiTPipeline``, class-conditional): blocks are diffusers' ``BasicTransformerBlock``.

A ``BasicTransformerBlock`` has self-attention ``attn1``, an optional cross-attention ``attn2``
(PixArt) and the MLP ``ff``, each added to one image stream; with ``ada_norm_zero`` (DiT) or
``ada_norm_single`` (PixArt) norms, ``attn1`` and ``ff`` are gated, ``attn2`` is not.
"""

from __future__ import annotations

from .spec import ONE_STREAM, BlockKind, Branch, Family, Fused


def basic_branches(block) -> tuple[Branch, ...]:
    names = ("attn1", "attn2", "ff") if getattr(block, "attn2", None) is not None else ("attn1", "ff")
    return tuple(Branch(name, name) for name in names)


def basic_check(block) -> None:
    if getattr(block, "_chunk_size", None) is not None:
        raise ValueError(
            "feed-forward chunking is enabled on this transformer (enable_forward_chunking); it calls the "
            "MLP once per chunk, which a per-branch cache cannot follow. Call "
            "transformer.disable_forward_chunking() before enabling harmonica."
        )
    if getattr(block, "only_cross_attention", False):
        raise ValueError("blocks with only_cross_attention=True are not supported")


def basic_gates(block, call: dict) -> list:
    """adaLN gates of a BasicTransformerBlock, as its forward computes them (attn2 is ungated)."""
    hidden, timestep = call["hidden_states"], call.get("timestep")
    if block.norm_type == "ada_norm_zero":
        norm = block.norm1
        emb = norm.emb(timestep, call.get("class_labels"), hidden_dtype=hidden.dtype)
        chunks = norm.linear(norm.silu(emb)).chunk(6, dim=1)
        gate_msa, gate_mlp = chunks[2].unsqueeze(1), chunks[5].unsqueeze(1)
    else:  # ada_norm_single
        chunks = (block.scale_shift_table[None] + timestep.reshape(hidden.shape[0], 6, -1)).chunk(6, dim=1)
        gate_msa, gate_mlp = chunks[2], chunks[5]
    return [gate_msa] + ([None] if block.attn2 is not None else []) + [gate_mlp]


BASIC_BLOCK = BlockKind(
    block_class="BasicTransformerBlock",
    branches=basic_branches,
    check=basic_check,
    streams=ONE_STREAM,
    fused=Fused(
        streams=ONE_STREAM.inputs,
        gates=basic_gates,
        output=ONE_STREAM.output,
        applies=lambda block: block.norm_type in ("ada_norm_zero", "ada_norm_single")
        and getattr(block, "pos_embed", None) is None,
    ),
)


def num_classes_of(pipe) -> int:
    """Class count of a DiT pipeline: its ``id2label`` table when it has one, else ImageNet's 1000."""
    labels = getattr(pipe, "labels", None)
    return len(labels) if labels else 1000


DIT = Family(
    name="dit",
    pipelines=("DiTPipeline",),
    block_lists=("transformer_blocks",),
    kinds=(BASIC_BLOCK,),
    conditioning="class",
    notes="DiT-XL/2 and the embedded shapes DiT; CFG batched into one forward",
)
