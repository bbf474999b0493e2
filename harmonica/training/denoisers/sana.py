"""Router training's denoiser for Sana (``SanaPipeline``): float32 latents, CFG batched, scaled timestep."""

from __future__ import annotations

import torch

from .base import BatchedCFGMixin, Denoiser, PromptsMixin


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
