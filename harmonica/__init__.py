"""harmonica: a learned per-step feature cache (HarmoniCa) for diffusers Diffusion Transformer pipelines."""

from .cache import CacheMemoryError, CacheStats, HarmoniCaConfig, apply_harmonica, controller, describe, disable, enable, paused, stats
from .families import SUPPORTED_PIPELINES, register_family
from .pipeline import HarmoniCaPipeline
from .router import HarmoniCaRouter, RouterError, RouterLayout

__version__ = "0.1.0"

__all__ = [
    "HarmoniCaPipeline",
    "HarmoniCaRouter",
    "RouterError",
    "RouterLayout",
    "CacheMemoryError",
    "CacheStats",
    "HarmoniCaConfig",
    "apply_harmonica",
    "SUPPORTED_PIPELINES",
    "controller",
    "describe",
    "enable",
    "disable",
    "paused",
    "register_family",
    "stats",
]
