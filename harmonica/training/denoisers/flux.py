"""Router training's denoiser for Flux.1 (``FluxPipeline``): packed latents, t / 1000, guidance embedding
or true CFG."""

from __future__ import annotations

import torch

from .base import TrueCFGDenoiser


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
