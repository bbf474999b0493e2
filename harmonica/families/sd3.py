"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``): MMDiT ``JointTransformerBlock``s.

A ``JointTransformerBlock`` holds two token streams, image and text:

* ``attn``: joint attention over both, returns (image, text) tokens;
* ``attn2`` (SD3.5, blocks listed in ``dual_attention_layers``): a second self-attention on the image
  tokens, from the same normalised input (``SD35AdaLayerNormZeroX``);
* ``ff`` (image) and ``ff_context`` (text) MLPs.

Every branch output is gated (adaLN-zero: ``norm1`` for the image stream, ``norm1_context`` for the
text stream). The last block has ``context_pre_only=True``: no ``ff_context``, its text output is
unused (the block returns ``(None, hidden_states)``) and ``norm1_context`` has no gates. Its ``attn``
still returns both parts, and both are cached; the text part is never read by the block.

The pipeline batches classifier-free guidance into one forward ([uncond; cond]) and passes the
scheduler's timestep unscaled.
"""

from __future__ import annotations

from .dit import basic_check
from .spec import TEXT_IMAGE, BlockKind, Branch, Family, Fused


def joint_branches(block) -> tuple[Branch, ...]:
    branches = [Branch("attn", "attn", ("image", "text"))]
    if block.attn2 is not None:
        branches.append(Branch("attn2", "attn2", ("image",)))
    branches.append(Branch("ff", "ff", ("image",)))
    if block.ff_context is not None:
        branches.append(Branch("ff_context", "ff_context", ("text",)))
    return tuple(branches)


def _joint_gates(block, call: dict) -> list:
    """Gates of a (not context_pre_only) JointTransformerBlock, as its norms compute them."""
    temb = call["temb"]
    norm = block.norm1
    img = norm.linear(norm.silu(temb)).chunk(9 if block.use_dual_attention else 6, dim=1)
    ctx = block.norm1_context
    txt = ctx.linear(ctx.silu(temb)).chunk(6, dim=1)
    # branch elements in order: attn -> (image, text), [attn2 -> image], ff -> image, ff_context -> text
    gates = [img[2].unsqueeze(1), txt[2].unsqueeze(1)]
    if block.use_dual_attention:
        gates.append(img[8].unsqueeze(1))
    return gates + [img[5].unsqueeze(1), txt[5].unsqueeze(1)]


def _fusable(block) -> bool:
    # the last block (context_pre_only) returns (None, image): a fused run's output cannot depend on the
    # block, so that block runs its own code (its branches are still reused one by one)
    return (not block.context_pre_only and getattr(block.norm1, "emb", None) is None
            and type(block.norm1).__name__ in ("AdaLayerNormZero", "SD35AdaLayerNormZeroX")
            and type(block.norm1_context).__name__ == "AdaLayerNormZero")


JOINT_BLOCK = BlockKind(
    block_class="JointTransformerBlock",
    branches=joint_branches,
    check=basic_check,
    streams=TEXT_IMAGE,
    fused=Fused(
        streams=TEXT_IMAGE.inputs,
        gates=_joint_gates,
        output=TEXT_IMAGE.output,
        applies=_fusable,
    ),
)


SD3 = Family(
    name="sd3",
    pipelines=("StableDiffusion3Pipeline",),
    block_lists=("transformer_blocks",),
    kinds=(JOINT_BLOCK,),
    notes="MMDiT joint blocks (SD3.5: dual attention); the last block has no ff_context; CFG batched into one "
          "forward; skip-layer guidance (skip_guidance_layers) is not supported: it runs an extra forward per step",
)
