"""``HarmoniCaConfig`` and ``apply_harmonica``: the diffusers-hooks shape of ``harmonica.enable``.

As diffusers' ``apply_first_block_cache(module, FirstBlockCacheConfig(...))``, a config dataclass says how to
cache and one entry point applies it; harmonica's entry point takes the pipeline, because the router is
checked against the pipeline's classes and the step of each forward is found through its scheduler.

    >>> config = HarmoniCaConfig(router="pipelines/shapes-dit/router", threshold=None, fused=True)
    >>> apply_harmonica(pipe, config)        # the same as harmonica.enable(pipe, config.router)
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import torch

from ..router import ROUTERS, HarmoniCaRouter, NoiseLevelRouter, check_threshold
from .controller import HarmoniCa
from .memory import check_cache_device, check_cache_dtype, parse_bytes


@dataclass
class HarmoniCaConfig:
    """How harmonica caches a pipeline.

    Attributes:
        router: a ``HarmoniCaRouter``, a router folder (or a training run's output folder) or a hub id.
        threshold: the inference threshold in (0, 1) (a branch is computed where its score exceeds it);
            None: the router's own.
        fused: replace runs of fully reused blocks by the fused gather-apply kernel; False applies reused
            branches one by one (for measuring the kernel).
        speedup: with a noise-level router, the transformer-MACs speedup every call is planned for (instead of
            the threshold); None: the threshold.
        max_cache_memory: the most a call's cache may hold per cache context (a CFG pass of its own), in bytes
            or as a string ("4GB", "3.5GiB"); a call over it raises ``CacheMemoryError`` before its first block
            runs, with the figure. None: no limit.
        cache_dtype: the dtype the cached outputs are kept in (``torch.bfloat16`` or ``torch.float16`` halve an
            fp32 model's cache; rebuilds are computed in the model's dtype); None: the outputs' own dtype.
        cache_device: where the cached outputs are kept: ``"cpu"`` keeps them in host memory (pinned when the
            model is on a GPU; each rebuild copies what it reads over); None: on the model's device.
    """

    router: HarmoniCaRouter | NoiseLevelRouter | str | os.PathLike
    threshold: float | None = None
    fused: bool = True
    speedup: float | None = None
    max_cache_memory: int | str | None = None
    cache_dtype: torch.dtype | None = None
    cache_device: str | torch.device | None = None

    def __post_init__(self):
        if not isinstance(self.router, (*ROUTERS, str, os.PathLike)):
            raise TypeError(f"router must be a HarmoniCaRouter, a NoiseLevelRouter, a router folder or a hub id, got "
                            f"{type(self.router).__name__}")
        if self.speedup is not None and not (isinstance(self.speedup, numbers.Real) and math.isfinite(self.speedup)
                                             and self.speedup >= 1):
            raise ValueError(f"speedup must be a number >= 1 (the transformer-MACs speedup), got {self.speedup!r}")
        if self.speedup is not None and self.threshold is not None:
            raise ValueError("give a threshold or a speedup, not both")
        if self.threshold is not None:
            self.threshold = check_threshold(self.threshold)
        if self.max_cache_memory is not None:
            parse_bytes(self.max_cache_memory)
        check_cache_dtype(self.cache_dtype)
        check_cache_device(self.cache_device)
        if not isinstance(self.fused, bool):
            raise TypeError(f"fused must be True or False, got {self.fused!r}")


def apply_harmonica(pipe, config: HarmoniCaConfig):
    """Attach the cache ``config`` describes to ``pipe``'s transformer(s), replacing one already attached.

    The router is loaded (a folder or hub id) and checked against the pipeline before anything is attached:
    on error the pipeline is left as it was. Returns ``pipe``."""
    from ..pipeline import keep_router_on_save, load_router
    from .api import disable

    if not isinstance(config, HarmoniCaConfig):
        raise TypeError(f"config must be a HarmoniCaConfig, got {type(config).__name__}")
    router = load_router(config.router)
    new = HarmoniCa(pipe, router, config.threshold, fused=config.fused, speedup=config.speedup,
                    max_cache_memory=config.max_cache_memory, cache_dtype=config.cache_dtype,
                    cache_device=config.cache_device)
    disable(pipe)
    new.attach()
    keep_router_on_save(pipe)
    return pipe
