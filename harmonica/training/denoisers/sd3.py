"""Router training's denoiser for Stable Diffusion 3 / 3.5: CFG batched as [uncond; cond], timestep unscaled."""

from __future__ import annotations

import torch

from .base import Denoiser, PromptsMixin


class SD3Denoiser(PromptsMixin, Denoiser):
    """One step of StableDiffusion3Pipeline's loop: CFG batched as [uncond; cond], timestep unscaled."""

    def __init__(self, pipe, guidance_scale: float = 7.0, prompts=None, height: int | None = None,
                 width: int | None = None, max_sequence_length: int = 256):
        super().__init__(pipe, guidance_scale)
        self.prompts = list(prompts or [])
        side = pipe.default_sample_size * pipe.vae_scale_factor
        self.height, self.width = height or side, width or side
        self.max_sequence_length = max_sequence_length

    def set_timesteps(self, scheduler, num_steps: int) -> None:
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (calculate_shift,
                                                                                        retrieve_timesteps)

        kwargs = {}
        config = scheduler.config
        if config.get("use_dynamic_shifting", None):
            patch = self.transformer.config.patch_size
            seq_len = (self.height // self.pipe.vae_scale_factor // patch) * (self.width // self.pipe.vae_scale_factor
                                                                                // patch)
            kwargs["mu"] = calculate_shift(seq_len, config.get("base_image_seq_len", 256),
                                           config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                           config.get("max_shift", 1.16))
        retrieve_timesteps(scheduler, num_steps, self.device, **kwargs)

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        latents = self.pipe.prepare_latents(batch, self.transformer.config.in_channels, self.height, self.width,
                                            torch.float32, "cpu", generator)
        return latents.to(self.device, self.transformer.dtype)

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        prompts = self.pick_prompts(batch, generator)
        embeds, neg_embeds, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=self.cfg, device=self.device,
            max_sequence_length=self.max_sequence_length)
        if self.cfg:
            embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
        dtype = self.transformer.dtype
        return {"encoder_hidden_states": embeds.to(dtype), "pooled_projections": pooled.to(dtype)}

    def forward(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        if self.cfg:
            x = torch.cat([x, x])
        timestep = torch.as_tensor(t, device=x.device).reshape(-1)[:1].expand(x.shape[0])
        return self.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=cond["encoder_hidden_states"],
                                pooled_projections=cond["pooled_projections"], return_dict=False)[0]

    def guided(self, raw: torch.Tensor) -> torch.Tensor:
        if not self.cfg:
            return raw
        uncond, text = raw.chunk(2)
        return self.combine(text, uncond)
