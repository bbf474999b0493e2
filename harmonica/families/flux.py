"""Flux.1 (``FluxPipeline``): double-stream blocks, then single-stream blocks.

* ``FluxTransformerBlock`` (double stream): joint attention ``attn`` returns (image, text) tokens; the
  MLPs ``ff`` (image) and ``ff_context`` (text). Every branch output is gated (``norm1`` /
  ``norm1_context``, adaLN-zero).
* ``FluxSingleTransformerBlock``: text and image tokens concatenated into one joint stream; attention
  and MLP run in parallel on it and one output projection ``proj_out`` mixes them, gated once. That
  projection's output is the block's one branch; reusing it replaces the whole block.

The pipeline passes ``t / 1000`` (cast to the latents' dtype) as the timestep, and with true CFG
(``negative_prompt`` + ``true_cfg_scale > 1``) runs the conditional and unconditional forwards
separately inside ``cache_context("cond")`` / ``("uncond")``. Flux.1-dev instead embeds a distilled
guidance scale (``guidance_embeds``); Flux.1-schnell has neither.
"""

from __future__ import annotations

import torch

from .denoising import TrueCFGDenoiser, uses_true_cfg
from .pixart import text_call_kwargs
from .spec import BlockKind, Branch, Family, Fused


def _clip16(x: torch.Tensor) -> torch.Tensor:
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


def _double_gates(block, call: dict) -> list:
    temb = call["temb"]
    img = block.norm1.linear(block.norm1.silu(temb)).chunk(6, dim=1)
    txt = block.norm1_context.linear(block.norm1_context.silu(temb)).chunk(6, dim=1)
    # branch elements in order: attn -> (image, text), ff -> image, ff_context -> text
    return [img[2].unsqueeze(1), txt[2].unsqueeze(1), img[5].unsqueeze(1), txt[5].unsqueeze(1)]


DOUBLE_BLOCK = BlockKind(
    block_class="FluxTransformerBlock",
    branches=lambda block: (Branch("attn", "attn", ("image", "text")), Branch("ff", "ff", ("image",)),
                            Branch("ff_context", "ff_context", ("text",))),
    fused=Fused(
        streams=lambda call: {"image": call["hidden_states"], "text": call["encoder_hidden_states"]},
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
)


class FluxDenoiser(TrueCFGDenoiser):
    """One step of FluxPipeline's loop: packed latents, t / 1000, guidance embedding or true CFG."""

    default_guidance = 3.5

    def _image_seq_len(self) -> int:
        f = self.pipe.vae_scale_factor * 2
        return (self.height // f) * (self.width // f)

    def set_timesteps(self, scheduler, num_steps: int) -> None:
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        config = scheduler.config
        mu = calculate_shift(self._image_seq_len(), config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        retrieve_timesteps(scheduler, num_steps, self.device, sigmas=sigmas, mu=mu)

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        channels = self.transformer.config.in_channels // 4
        latents, _ = self.pipe.prepare_latents(batch, channels, self.height, self.width, torch.float32, "cpu",
                                               generator)
        return latents.to(self.device, self.transformer.dtype)

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        prompts = self.pick_prompts(batch, generator)
        encode = dict(device=self.device, max_sequence_length=self.max_sequence_length)
        embeds, pooled, text_ids = self.pipe.encode_prompt(prompts, prompt_2=None, **encode)
        cond = {"cond": (embeds, pooled, text_ids)}
        if self.true_cfg:
            cond["uncond"] = self.pipe.encode_prompt([""] * batch, prompt_2=None, **encode)
        f = self.pipe.vae_scale_factor * 2
        cond["img_ids"] = self.pipe._prepare_latent_image_ids(batch, self.height // f, self.width // f, self.device,
                                                             self.transformer.dtype)
        return cond

    def _run(self, x, t, text, cond):
        embeds, pooled, text_ids = text
        return self.transformer(hidden_states=x, timestep=self.step_timestep(x, t) / 1000, guidance=self.guidance(x),
                                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                img_ids=cond["img_ids"], return_dict=False)[0]


def flux_call_kwargs(pipe, conditions, guidance_scale: float | None = None, **extra) -> dict:
    kw = text_call_kwargs(pipe, conditions, **extra)
    if guidance_scale is not None and uses_true_cfg(pipe, guidance_scale):
        kw.update(negative_prompt=[""] * len(kw["prompt"]), true_cfg_scale=guidance_scale)
    return kw


FLUX = Family(
    name="flux",
    pipelines=("FluxPipeline",),
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    kinds=(DOUBLE_BLOCK, SINGLE_BLOCK),
    denoiser=FluxDenoiser,
    call_kwargs=flux_call_kwargs,
    timestep_scale=lambda transformer: 1000.0,
    notes="double + single blocks; true CFG runs cond and uncond forwards, each with its own cache",
)
