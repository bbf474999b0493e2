"""Router training's denoisers: one step of a pipeline's loop, one class per family, by family name.

``base`` holds what every denoiser shares (and documents the interface router training uses); each
built-in family has its module here. A family registered with ``harmonica.register_family`` gets
router training by registering its denoiser class under the family's name::

    register_denoiser("my-family", MyDenoiser)   # MyDenoiser(pipe, guidance_scale, prompts, **options)
"""

from __future__ import annotations

from ...families import family_for
from .base import Denoiser
from .dit import DiTDenoiser
from .flux import FluxDenoiser
from .pixart import PixArtDenoiser
from .qwenimage import QwenImageDenoiser
from .sana import SanaDenoiser
from .sd3 import SD3Denoiser
from .wan import WanDenoiser

DENOISERS: dict[str, type] = {}


def register_denoiser(family_name: str, cls: type) -> type:
    """Router training drives pipelines of the family ``family_name`` with ``cls``; returns ``cls``."""
    if not callable(cls):
        raise ValueError(f"register_denoiser takes a denoiser class, got {type(cls).__name__}")
    DENOISERS[family_name] = cls
    return cls


def denoiser_for(pipe) -> type:
    """The denoiser class registered for the family serving ``pipe`` (raises if there is none)."""
    family = family_for(pipe)
    if family.name not in DENOISERS:
        raise ValueError(f"router training has no denoiser for the {family.name!r} family; register one with "
                         "harmonica.training.denoisers.register_denoiser")
    return DENOISERS[family.name]


for _name, _cls in (("dit", DiTDenoiser), ("pixart", PixArtDenoiser), ("flux", FluxDenoiser), ("sd3", SD3Denoiser),
                    ("sana", SanaDenoiser), ("wan", WanDenoiser), ("qwenimage", QwenImageDenoiser)):
    register_denoiser(_name, _cls)
del _name, _cls

__all__ = ["DENOISERS", "Denoiser", "denoiser_for", "register_denoiser"]
