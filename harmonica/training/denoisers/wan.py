"""Router training's denoisers for Wan 2.1 / 2.2 (``WanPipeline``, ``WanImageToVideoPipeline``): cond and uncond
forwards in their cache contexts, the expert chosen by the timestep."""

from __future__ import annotations

import torch

from .base import Denoiser, PromptsMixin, VideoLatentsMixin, cache_context


class WanDenoiser(VideoLatentsMixin, PromptsMixin, Denoiser):
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
        model_input, timestep = self.model_input(x, t, cond)
        outs = []
        for name in ("cond", "uncond") if self.cfg else ("cond",):
            with cache_context(model, name):
                outs.append(model(hidden_states=model_input, timestep=timestep, encoder_hidden_states=cond[name],
                                  return_dict=False, **self.extra_inputs(cond))[0])
        return torch.cat(outs)

    def model_input(self, x: torch.Tensor, t, cond: dict):
        """The transformer's input and timestep at ``t`` (the pipeline casts to the first expert's dtype)."""
        if self.pipe.config.expand_timesteps:
            mask = torch.ones(x.shape, dtype=torch.float32, device=x.device)
            return x.to(self.transformer.dtype), (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(
                x.shape[0], -1)
        return x.to(self.transformer.dtype), t.reshape(-1)[:1].expand(x.shape[0])

    def extra_inputs(self, cond: dict) -> dict:
        return {}

    def guided(self, raw: torch.Tensor) -> torch.Tensor:
        if not self.cfg:
            return raw
        cond, uncond = raw.chunk(2)
        return self.combine(cond, uncond)


class WanI2VDenoiser(WanDenoiser):
    """One step of WanImageToVideoPipeline's loop: WanDenoiser's, with each sample's first frame drawn from
    ``images`` (files or PIL images): its encoded latents and frame mask concatenated to the noise (or, with
    ``expand_timesteps``, written over the first latent frame, whose timestep is 0), and on Wan 2.1 its CLIP image
    embedding passed to every forward."""

    def __init__(self, pipe, guidance_scale: float = 5.0, prompts=None, height: int | None = None,
                 width: int | None = None, max_sequence_length: int = 512, num_frames: int | None = None,
                 images=None):
        from diffusers.utils import is_ftfy_available

        super().__init__(pipe, guidance_scale, prompts, height, width, max_sequence_length, num_frames)
        self.images = list(images or [])
        if not self.images:
            raise ValueError(f"{type(pipe).__name__} router training needs images to start its videos from "
                             "(--images FILE ...)")
        if not is_ftfy_available():
            raise ValueError(f"{type(pipe).__name__} cleans its prompts with ftfy: pip install ftfy")

    def _latent_shape(self, batch: int) -> tuple[int, ...]:
        pipe = self.pipe
        return (batch, pipe.vae.config.z_dim, (self.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
                self.height // pipe.vae_scale_factor_spatial, self.width // pipe.vae_scale_factor_spatial)

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(self._latent_shape(batch), generator=generator, dtype=torch.float32).to(self.device)

    def _image(self, index: int):
        from PIL import Image

        image = self.images[index]
        return Image.open(image).convert("RGB") if isinstance(image, str) else image

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        cond = super().conditions(batch, generator)
        pipe, dtype = self.pipe, self.transformer.dtype
        picks = torch.randint(0, len(self.images), (batch,), generator=generator).tolist()
        images = [self._image(i) for i in picks]
        shape = self._latent_shape(1)
        conditions = []
        for image in images:  # one at a time: the pipeline encodes one image and repeats it over the batch
            pixels = pipe.video_processor.preprocess(image, height=self.height, width=self.width)
            out = pipe.prepare_latents(pixels.to(self.device, torch.float32), 1, shape[1], self.height, self.width,
                                       self.num_frames, torch.float32, self.device, None,
                                       torch.zeros(shape, device=self.device))
            conditions.append(out[1:])  # (condition) or, with expand_timesteps, (condition, first-frame mask)
        cond["condition"] = torch.cat([c[0] for c in conditions])
        if pipe.config.expand_timesteps:
            cond["first_frame_mask"] = conditions[0][1]
        cond["image_embeds"] = None
        if self.transformer.config.image_dim is not None:  # Wan 2.1 I2V: the CLIP image embedding
            cond["image_embeds"] = pipe.encode_image(images, self.device).to(dtype)
        return cond

    def model_input(self, x: torch.Tensor, t, cond: dict):
        if self.pipe.config.expand_timesteps:
            mask = cond["first_frame_mask"]
            model_input = ((1 - mask) * cond["condition"] + mask * x).to(self.transformer.dtype)
            return model_input, (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(x.shape[0], -1)
        model_input = torch.cat([x, cond["condition"]], dim=1).to(self.transformer.dtype)
        return model_input, t.reshape(-1)[:1].expand(x.shape[0])

    def extra_inputs(self, cond: dict) -> dict:
        return {"encoder_hidden_states_image": cond["image_embeds"]}

    def final(self, x: torch.Tensor, cond: dict) -> torch.Tensor:
        if not self.pipe.config.expand_timesteps:
            return x
        mask = cond["first_frame_mask"]  # the pipeline writes the given first frame back over the denoised one
        return (1 - mask) * cond["condition"] + mask * x
