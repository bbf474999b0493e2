"""One denoising step of a pipeline, outside the pipeline's own loop, for router training.

Router training drives the loop step by step (student, teacher, optimizer step, scheduler step), so
it needs what the pipeline does inside one iteration: draw the initial latents and the conditioning,
run the transformer (on the classifier-free-guidance batch, or once per guidance branch), and turn
its output into what the scheduler steps with. Each family has one ``Denoiser`` subclass in its
module of this package, registered under the family's name (``harmonica.training.denoisers``); this
base holds what they share.

Interface used by ``harmonica.training``:

* ``set_timesteps(scheduler, num_steps)``: the schedule of one call (some families pass extra
  arguments, e.g. Flux's resolution-dependent shift);
* ``initial_latents(batch, generator)`` and ``conditions(batch, generator)``;
* ``forward(x, t, cond)``: the raw transformer output(s) of one step (a tensor; with true CFG the
  conditional and unconditional outputs concatenated along the batch), computed under the
  transformer's ``cache_context`` names the pipeline itself uses ("cond" / "uncond");
* ``guided(raw)``: what the scheduler steps with;
* ``final(x, cond)``: the latents the pipeline returns from those the last step gives (the same but for
  image-to-video with ``expand_timesteps``, which writes the given first frame back).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from ...families.flux import uses_true_cfg


@contextmanager
def cache_context(transformer: torch.nn.Module, name: str):
    """diffusers' ``transformer.cache_context(name)``, also for transformers without ``CacheMixin``."""
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    _set_cache_context(transformer, CacheContext(name))
    try:
        yield
    finally:
        _set_cache_context(transformer, None)


class Denoiser:
    """What every adapter shares: the transformer, guidance, and latents of the transformer's shape."""

    def __init__(self, pipe, guidance_scale: float):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.guidance_scale = float(guidance_scale)

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    def set_timesteps(self, scheduler, num_steps: int) -> None:
        scheduler.set_timesteps(num_steps, device=self.device)

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        config = self.transformer.config
        return (batch, config.in_channels, config.sample_size, config.sample_size)

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        x = torch.randn(self.latent_shape(batch), generator=generator)
        return x.to(self.device, self.transformer.dtype)

    def context(self, name: str):
        """The cache context a pipeline of this family sets around a forward (none by default)."""
        return nullcontext()

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return uncond + self.guidance_scale * (cond - uncond)

    def final(self, x: torch.Tensor, cond: dict) -> torch.Tensor:
        return x


class PromptsMixin:
    """Conditioning by prompts drawn from a list."""

    def pick_prompts(self, batch: int, generator: torch.Generator) -> list[str]:
        if not self.prompts:
            raise ValueError(f"{type(self.pipe).__name__} router training needs prompts (a text or JSON file, or a "
                             "datasets dataset)")
        idx = torch.randint(0, len(self.prompts), (batch,), generator=generator).tolist()
        return [self.prompts[i] for i in idx]


class VideoLatentsMixin:
    """Video pipelines' ``prepare_latents(batch, channels, height, width, num_frames, ...)``: float32 latents drawn
    on the CPU generator (the pipeline casts the model input), moved to the device."""

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        latents = self.pipe.prepare_latents(batch, self.transformer.config.in_channels, self.height, self.width,
                                            self.num_frames, torch.float32, "cpu", generator)
        return latents.to(self.device)  # the pipeline keeps float32 latents and casts the model input


class BatchedCFGMixin:
    """Pipelines that run CFG as one forward on [uncond, text] (PixArt, Sana); a learned-sigma output
    (twice the input channels) keeps only the noise half."""

    def guided(self, raw: torch.Tensor) -> torch.Tensor:
        out = raw
        if self.cfg:
            uncond, text = out.chunk(2)
            out = self.combine(text, uncond)
        if self.transformer.config.out_channels // 2 == self.transformer.config.in_channels:
            out = out.chunk(2, dim=1)[0]
        return out


class TrueCFGDenoiser(PromptsMixin, Denoiser):
    """Pipelines that run guidance as two forwards per step (Flux, Qwen-Image with true CFG), each in its
    own cache context, or one forward with a distilled guidance embedding. Subclasses define
    ``_run(x, t, text, cond)``, one forward; ``cond`` holds ``"cond"`` and ``"uncond"`` text
    conditioning."""

    default_guidance: float

    def __init__(self, pipe, guidance_scale: float | None = None, prompts=None, height: int | None = None,
                 width: int | None = None, max_sequence_length: int = 512):
        super().__init__(pipe, self.default_guidance if guidance_scale is None else guidance_scale)
        self.prompts = list(prompts or [])
        side = pipe.default_sample_size * pipe.vae_scale_factor
        self.height, self.width = height or side, width or side
        self.max_sequence_length = max_sequence_length
        self.true_cfg = uses_true_cfg(pipe, self.guidance_scale)

    def forward(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        with cache_context(self.transformer, "cond"):
            out = self._run(x, t, cond["cond"], cond)
        if not self.true_cfg:
            return out
        with cache_context(self.transformer, "uncond"):
            uncond = self._run(x, t, cond["uncond"], cond)
        return torch.cat([out, uncond])

    def guided(self, raw: torch.Tensor) -> torch.Tensor:
        if not self.true_cfg:
            return raw
        return self.combine(*raw.chunk(2))

    def step_timestep(self, x: torch.Tensor, t) -> torch.Tensor:
        """The pipeline's own ``t.expand(batch).to(latents dtype)``, before it divides by 1000."""
        return torch.as_tensor(t, device=x.device).reshape(-1)[:1].expand(x.shape[0]).to(x.dtype)

    def guidance(self, x: torch.Tensor) -> torch.Tensor | None:
        """The distilled guidance scale for models that embed it, else None."""
        if not self.transformer.config.guidance_embeds:
            return None
        return torch.full([x.shape[0]], self.guidance_scale, device=x.device, dtype=torch.float32)
