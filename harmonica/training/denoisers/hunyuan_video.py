"""Router training's denoiser for HunyuanVideo (``HunyuanVideoPipeline``): float32 video latents, the distilled
guidance embedding, the timestep unscaled."""

from __future__ import annotations

import torch

from ...families.flux import uses_true_cfg
from .base import TrueCFGDenoiser, VideoLatentsMixin


class HunyuanVideoDenoiser(VideoLatentsMixin, TrueCFGDenoiser):
    """One step of HunyuanVideoPipeline's loop: float32 video latents, linear sigmas, the unscaled timestep and the
    guidance scale embedded (x 1000). HunyuanVideo is guidance-distilled, so ``guidance_scale`` is the embedded
    one; true CFG (the pipeline's negative prompt + ``true_cfg_scale``) runs only on a model without a guidance
    embedding, as in Flux."""

    default_guidance = 6.0

    def __init__(self, pipe, guidance_scale: float | None = None, prompts=None, height: int | None = None,
                 width: int | None = None, max_sequence_length: int = 256, num_frames: int | None = None):
        # TrueCFGDenoiser's own __init__ reads an image pipeline's default_sample_size, which this one has not
        super(TrueCFGDenoiser, self).__init__(pipe, self.default_guidance if guidance_scale is None else guidance_scale)
        self.prompts = list(prompts or [])
        self.height, self.width, self.num_frames = height or 720, width or 1280, num_frames or 129
        self.max_sequence_length = max_sequence_length
        self.true_cfg = uses_true_cfg(pipe, self.guidance_scale)

    def set_timesteps(self, scheduler, num_steps: int) -> None:
        import numpy as np
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps

        retrieve_timesteps(scheduler, num_steps, self.device, sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1])
        scheduler.set_begin_index(0)

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        prompts = self.pick_prompts(batch, generator)
        encode = dict(device=self.device, max_sequence_length=self.max_sequence_length)
        dtype = self.transformer.dtype
        cond = {"cond": tuple(c.to(dtype) for c in self.pipe.encode_prompt(prompts, **encode))}
        if self.true_cfg:
            cond["uncond"] = tuple(c.to(dtype) for c in self.pipe.encode_prompt([""] * batch, **encode))
        return cond

    def guidance(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.transformer.config.guidance_embeds:
            return None
        return torch.tensor([self.guidance_scale] * x.shape[0], dtype=self.transformer.dtype, device=x.device) * 1000.0

    def _run(self, x, t, text, cond):
        embeds, pooled, mask = text
        return self.transformer(hidden_states=x.to(self.transformer.dtype), timestep=self.step_timestep(x, t),
                                encoder_hidden_states=embeds, encoder_attention_mask=mask, pooled_projections=pooled,
                                guidance=self.guidance(x), return_dict=False)[0]
