"""harmonica: a learned per-step feature cache (HarmoniCa) for diffusers Diffusion Transformer pipelines."""

from .cache import CacheStats, describe, disable, enable, paused, stats
from .pipeline import SUPPORTED_PIPELINES, HarmoniCaPipeline
from .router import HarmoniCaRouter, RouterError, RouterLayout

__version__ = "0.1.0"

__all__ = [
    "HarmoniCaPipeline",
    "HarmoniCaRouter",
    "RouterError",
    "RouterLayout",
    "CacheStats",
    "SUPPORTED_PIPELINES",
    "describe",
    "enable",
    "disable",
    "paused",
    "stats",
]
