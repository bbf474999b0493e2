"""Router training's denoiser for Wan 2.1 / 2.2 (``WanPipeline``): cond and uncond forwards in their cache
contexts, the expert chosen by the timestep."""

from __future__ import annotations

import torch

from .base import Denoiser, PromptsMixin, cache_context


class WanDenoiser(PromptsMixin, Denoiser):
    """One step of WanPipeline's loop: float32 video latents, cond and uncond forwards in their cache
    contexts, the expert chosen by the timestep (Wan 2.2 A14B), per-token timesteps for TI2V."""

    def __init__(self, pipe, guidance_scale: float = 5.0, prompts=None, height: int | None = None,
                 width: int | None = None, max_sequence_length: int = 512, num_frames: int | None = None):
        super().__init__(pipe, guidance_scale)
        if self.transformer is None:
            self.transformer = pipe.transformer_2
        self.prompts = list(prompts or [])
        self.height, self.width = height or 480, width or 832
        self.max_sequence_length = max_sequence_length
        num_frames = num_frames or 81
        factor = pipe.vae_scale_factor_temporal
        if num_frames % factor != 1:  # the pipeline rounds the same way
            num_frames = num_frames // factor * factor + 1
        self.num_frames = max(num_frames, 1)

    def set_timesteps(self, scheduler, num_steps: int) -> None:
        scheduler.set_timesteps(num_steps, device=self.device)
        scheduler.set_begin_index(0)

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        latents = self.pipe.prepare_latents(batch, self.transformer.config.in_channels, self.height, self.width,
                                            self.num_frames, torch.float32, "cpu", generator)
        return latents.to(self.device)  # the pipeline keeps float32 latents and casts the model input

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        prompts = self.pick_prompts(batch, generator)
        embeds, neg_embeds = self.pipe.encode_prompt(prompt=prompts, negative_prompt=None,
                                                     do_classifier_free_guidance=self.cfg, device=self.device,
                                                     max_sequence_length=self.max_sequence_length)
        cond = {"cond": embeds.to(self.transformer.dtype)}
        if self.cfg:
            cond["uncond"] = neg_embeds.to(self.transformer.dtype)
        return cond

    def expert(self, t) -> torch.nn.Module:
        """The transformer the pipeline runs at timestep ``t`` (Wan 2.2 A14B switches below the boundary)."""
        ratio = self.pipe.config.boundary_ratio
        if ratio is None or self.pipe.transformer_2 is None:
            return self.transformer
        boundary = ratio * self.pipe.scheduler.config.num_train_timesteps
        return self.pipe.transformer if t >= boundary and self.pipe.transformer is not None else self.pipe.transformer_2

    def forward(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        model = self.expert(t)
        model_input = x.to(self.transformer.dtype)  # the pipeline casts to the first expert's dtype
        if self.pipe.config.expand_timesteps:
            mask = torch.ones(x.shape, dtype=torch.float32, device=x.device)
            timestep = (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(x.shape[0], -1)
        else:
            timestep = t.reshape(-1)[:1].expand(x.shape[0])
        outs = []
        for name in ("cond", "uncond") if self.cfg else ("cond",):
            with cache_context(model, name):
                outs.append(model(hidden_states=model_input, timestep=timestep, encoder_hidden_states=cond[name],
                                  return_dict=False)[0])
        return torch.cat(outs)

    def guided(self, raw: torch.Tensor) -> torch.Tensor:
        if not self.cfg:
            return raw
        cond, uncond = raw.chunk(2)
        return self.combine(cond, uncond)
