"""Router training's denoisers: one step of a pipeline's loop, one class per family, by family name.

``base`` holds what every denoiser shares (and documents the interface router training uses); each
built-in family has its module here. A family registered with ``harmonica.register_family`` gets
router training by registering its denoiser class under the family's name::

    register_denoiser("my-family", MyDenoiser)   # MyDenoiser(pipe, guidance_scale, prompts, **options)
"""

from __future__ import annotations

from ...families.adapters import FamilyAdapters
from .base import Denoiser
from .cogvideox import CogVideoXDenoiser
from .dit import DiTDenoiser
from .flux import FluxDenoiser
from .hunyuan_video import HunyuanVideoDenoiser
from .ltx import LTXDenoiser
from .pixart import PixArtDenoiser
from .qwenimage import QwenImageDenoiser
from .sana import SanaDenoiser
from .sd3 import SD3Denoiser
from .wan import WanDenoiser, WanI2VDenoiser

DENOISERS = FamilyAdapters("router training", "denoiser", "harmonica.training.denoisers.register_denoiser")
register_denoiser = DENOISERS.register  # (family name, class): router training drives its pipelines with the class
denoiser_for = DENOISERS.for_pipe  # the class registered for the family serving a pipeline


for _name, _cls in (("dit", DiTDenoiser), ("pixart", PixArtDenoiser), ("flux", FluxDenoiser), ("sd3", SD3Denoiser),
                    ("sana", SanaDenoiser), ("wan", WanDenoiser), ("qwenimage", QwenImageDenoiser),
                    ("wan-i2v", WanI2VDenoiser), ("hunyuan-video", HunyuanVideoDenoiser), ("ltx", LTXDenoiser),
                    ("cogvideox", CogVideoXDenoiser)):
    register_denoiser(_name, _cls)
del _name, _cls

__all__ = ["DENOISERS", "Denoiser", "denoiser_for", "register_denoiser"]
