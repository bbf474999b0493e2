"""Sana (``SanaPipeline``): linear-attention DiT blocks, ``SanaTransformerBlock``.

A ``SanaTransformerBlock`` adds three branches to one image stream:

* ``attn1``: linear self-attention, gated (adaLN-single: ``scale_shift_table`` + the timestep embedding);
* ``attn2``: cross-attention to the Gemma prompt embeddings, ungated;
* ``ff``: the ``GLUMBConv`` MLP (1x1 conv, depthwise 3x3 conv, gated linear unit, 1x1 conv), gated. It
  runs on the tokens unflattened to a ``[batch, channels, height, width]`` map and returns such a map,
  so its cached output lives on its own stream (``image_map``), whose pool has that shape.

No fused whole-block apply: the ``ff`` output is reshaped to tokens inside the block's own code, so a
fully reused block still runs its norms and that reshape (its branches are reused one by one).

The pipeline batches CFG into one forward ([uncond; cond]) and passes ``t * config.timestep_scale``.
Run it with ``use_resolution_binning=False`` and ``complex_human_instruction=None`` for reproducible
evaluation and router training (the denoiser encodes prompts without the instruction too).
"""

from __future__ import annotations

import torch

from .denoising import BatchedCFGMixin, Denoiser, PromptsMixin
from .pixart import text_call_kwargs
from .spec import BlockKind, Branch, Family


def sana_branches(block) -> tuple[Branch, ...]:
    branches = [Branch("attn1", "attn1", ("image",))]
    if block.attn2 is not None:
        branches.append(Branch("attn2", "attn2", ("image",)))
    return tuple(branches) + (Branch("ff", "ff", ("image_map",)),)


SANA_BLOCK = BlockKind(block_class="SanaTransformerBlock", branches=sana_branches)


class SanaDenoiser(BatchedCFGMixin, PromptsMixin, Denoiser):
    """One step of SanaPipeline's loop: float32 latents, CFG batched as [uncond; cond], scaled timestep."""

    def __init__(self, pipe, guidance_scale: float = 4.5, prompts=None, height: int | None = None,
                 width: int | None = None, max_sequence_length: int = 300):
        super().__init__(pipe, guidance_scale)
        self.prompts = list(prompts or [])
        side = self.transformer.config.sample_size * pipe.vae_scale_factor
        self.height, self.width = height or side, width or side
        self.max_sequence_length = max_sequence_length

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        latents = self.pipe.prepare_latents(batch, self.transformer.config.in_channels, self.height, self.width,
                                            torch.float32, "cpu", generator)
        return latents.to(self.device)  # the pipeline keeps float32 latents and casts the model input

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        prompts = self.pick_prompts(batch, generator)
        embeds, mask, neg_embeds, neg_mask = self.pipe.encode_prompt(
            prompts, self.cfg, negative_prompt="", device=self.device, clean_caption=False,
            max_sequence_length=self.max_sequence_length, complex_human_instruction=None)
        if self.cfg:
            embeds, mask = torch.cat([neg_embeds, embeds]), torch.cat([neg_mask, mask])
        return {"encoder_hidden_states": embeds.to(self.transformer.dtype), "encoder_attention_mask": mask}

    def forward(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        if self.cfg:
            x = torch.cat([x, x])
        timestep = torch.as_tensor(t, device=x.device).reshape(-1)[:1].expand(x.shape[0])
        timestep = timestep * self.transformer.config.timestep_scale
        out = self.transformer(x.to(self.transformer.dtype), encoder_hidden_states=cond["encoder_hidden_states"],
                               encoder_attention_mask=cond["encoder_attention_mask"], timestep=timestep,
                               return_dict=False)[0]
        return out.float()


def sana_call_kwargs(pipe, conditions, guidance_scale: float | None = None, **extra) -> dict:
    return {**text_call_kwargs(pipe, conditions, **extra), "use_resolution_binning": False,
            "complex_human_instruction": None}


SANA = Family(
    name="sana",
    pipelines=("SanaPipeline",),
    block_lists=("transformer_blocks",),
    kinds=(SANA_BLOCK,),
    denoiser=SanaDenoiser,
    call_kwargs=sana_call_kwargs,
    timestep_scale=lambda transformer: 1.0 / float(transformer.config.timestep_scale),
    notes="attn1 and the conv MLP gated, cross-attention ungated; the MLP's map-shaped output has its own stream; "
          "CFG batched into one forward; no fused apply",
)
