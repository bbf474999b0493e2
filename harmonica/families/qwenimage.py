"""Qwen-Image (``QwenImagePipeline``): dual-stream MMDiT ``QwenImageTransformerBlock``s.

A ``QwenImageTransformerBlock`` holds an image and a text stream:

* ``attn``: joint attention over both, returns (image, text) tokens;
* ``img_mlp`` (image) and ``txt_mlp`` (text).

Every branch output is gated: ``img_mod`` / ``txt_mod`` (SiLU + Linear on the timestep embedding)
give shift, scale and gate for each half of the block (``_modulate``). Blocks built with
``zero_cond_t`` (edit models) take per-token gates from a second timestep; they are not fused.

The pipeline passes ``t / 1000`` (cast to the latents' dtype) and runs true CFG (``negative_prompt``
+ ``true_cfg_scale > 1``) as two forwards per step inside ``cache_context("cond")`` /
``("uncond")``, then rescales the combined prediction to the conditional one's norm.
"""

from __future__ import annotations

from .spec import CLIPPED_TEXT_IMAGE, BlockKind, Branch, Family, Fused


def _qwen_gates(block, call: dict) -> list:
    temb = call["temb"]
    img1, img2 = block.img_mod(temb).chunk(2, dim=-1)
    txt1, txt2 = block.txt_mod(temb).chunk(2, dim=-1)

    def gate(params):  # _modulate: shift, scale, gate = params.chunk(3); gate.unsqueeze(1)
        return params.chunk(3, dim=-1)[2].unsqueeze(1)

    # branch elements in order: attn -> (image, text), img_mlp -> image, txt_mlp -> text
    return [gate(img1), gate(txt1), gate(img2), gate(txt2)]


QWEN_BLOCK = BlockKind(
    block_class="QwenImageTransformerBlock",
    branches=lambda block: (Branch("attn", "attn", ("image", "text")), Branch("img_mlp", "img_mlp", ("image",)),
                            Branch("txt_mlp", "txt_mlp", ("text",))),
    streams=CLIPPED_TEXT_IMAGE,
    fused=Fused(
        streams=CLIPPED_TEXT_IMAGE.inputs,
        gates=_qwen_gates,
        output=CLIPPED_TEXT_IMAGE.output,
        applies=lambda block: not getattr(block, "zero_cond_t", False),
    ),
)


NEGATIVE_PROMPT = " "  # the model card's empty negative prompt


QWENIMAGE = Family(
    name="qwenimage",
    pipelines=("QwenImagePipeline",),
    block_lists=("transformer_blocks",),
    kinds=(QWEN_BLOCK,),
    timestep_scale=lambda transformer: 1000.0,
    notes="dual-stream joint blocks; true CFG runs cond and uncond forwards, each with its own cache",
)
