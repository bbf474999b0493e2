"""Flux.1 (``FluxPipeline``): double-stream blocks, then single-stream blocks.

* ``FluxTransformerBlock`` (double stream): joint attention ``attn`` returns (image, text) tokens; the
  MLPs ``ff`` (image) and ``ff_context`` (text). Every branch output is gated (``norm1`` /
  ``norm1_context``, adaLN-zero).
* ``FluxSingleTransformerBlock``: text and image tokens concatenated into one joint stream; attention
  and MLP run in parallel on it and one output projection ``proj_out`` mixes them, gated once. That
  projection's output is the block's one branch; reusing it replaces the whole block.

With an IP adapter loaded (``FluxIPAdapterAttnProcessor`` on the double blocks' ``attn``: diffusers'
``load_ip_adapter``), ``attn`` returns a third tensor, the image-prompt attention output, which the block adds to
the image stream ungated after the MLP: it is the ``attn`` branch's third element, cached and rebuilt with the
other two. The spec reads the processor at ``enable``; one set or removed later is refused at the next call's first
forward (the branch returns another number of tensors), before the transformer's output is used.

The pipeline passes ``t / 1000`` (cast to the latents' dtype) as the timestep, and with true CFG
(``negative_prompt`` + ``true_cfg_scale > 1``) runs the conditional and unconditional forwards
separately inside ``cache_context("cond")`` / ``("uncond")``. Flux.1-dev instead embeds a distilled
guidance scale (``guidance_embeds``); Flux.1-schnell has neither.
"""

from __future__ import annotations

import torch

from .spec import CLIPPED_TEXT_IMAGE, BlockKind, Branch, Family, Fused, clip16 as _clip16




def _ip_adapter(block) -> bool:
    """Whether the block's attention runs an IP-adapter processor (it holds the image-prompt key / value
    projections ``to_k_ip``), which returns the image-prompt attention output as a third tensor."""
    return hasattr(block.attn.processor, "to_k_ip")


def _double_branches(block) -> tuple[Branch, ...]:
    attn = ("image", "text", "image") if _ip_adapter(block) else ("image", "text")
    return (Branch("attn", "attn", attn), Branch("ff", "ff", ("image",)), Branch("ff_context", "ff_context", ("text",)))


def _double_gates(block, call: dict) -> list:
    temb = call["temb"]
    img = block.norm1.linear(block.norm1.silu(temb)).chunk(6, dim=1)
    txt = block.norm1_context.linear(block.norm1_context.silu(temb)).chunk(6, dim=1)
    # branch elements in order: attn -> (image, text[, IP-adapter image: ungated]), ff -> image, ff_context -> text
    ip = [None] if _ip_adapter(block) else []
    return [img[2].unsqueeze(1), txt[2].unsqueeze(1), *ip, img[5].unsqueeze(1), txt[5].unsqueeze(1)]


DOUBLE_BLOCK = BlockKind(
    block_class="FluxTransformerBlock",
    branches=_double_branches,
    streams=CLIPPED_TEXT_IMAGE,
    fused=Fused(
        streams=CLIPPED_TEXT_IMAGE.inputs,
        gates=_double_gates,
        output=lambda call, streams: (_clip16(streams["text"]), streams["image"]),
    ),
)


def _single_output(call: dict, streams: dict):
    joint = _clip16(streams["joint"])
    n = call["encoder_hidden_states"].shape[1]
    return joint[:, :n], joint[:, n:]


SINGLE_BLOCK = BlockKind(
    block_class="FluxSingleTransformerBlock",
    branches=lambda block: (Branch("proj_out", "proj_out", ("joint",)),),
    fused=Fused(
        streams=lambda call: {"joint": torch.cat([call["encoder_hidden_states"], call["hidden_states"]], dim=1)},
        gates=lambda block, call: [block.norm.linear(block.norm.silu(call["temb"])).chunk(3, dim=1)[2].unsqueeze(1)],
        output=_single_output,
    ),
    whole_block=True,
    streams=CLIPPED_TEXT_IMAGE,  # it reads and returns image and text as the double blocks do: spans may cross
)


def uses_true_cfg(pipe, guidance_scale: float) -> bool:
    """Without a guidance embedding, guidance is true CFG (two forwards per step; Flux and Qwen-Image)."""
    return not pipe.transformer.config.guidance_embeds and guidance_scale > 1


FLUX = Family(
    name="flux",
    pipelines=("FluxPipeline",),
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    kinds=(DOUBLE_BLOCK, SINGLE_BLOCK),
    timestep_scale=lambda transformer: 1000.0,
    notes="double + single blocks; true CFG runs cond and uncond forwards, each with its own cache",
)
