"""Pipeline glue: ``HarmoniCaPipeline.from_pretrained`` loads a stock diffusers pipeline and attaches a router.

What comes back *is* the diffusers pipeline (``DiTPipeline``, ``FluxPipeline``, ...; see
``harmonica.families``), with the same call signature, ``to()``, ``save_pretrained()`` and so on;
harmonica lives in the hooks on its transformer (``harmonica.controller(pipe)``: router, threshold).
"""

from __future__ import annotations

import os
from pathlib import Path

from .families import SUPPORTED_PIPELINES, UnsupportedPipelineError, family_for, unsupported
from .router import HarmoniCaRouter, RouterError

ROUTER_SUBFOLDER = "router"

__all__ = ["SUPPORTED_PIPELINES", "HarmoniCaPipeline", "UnsupportedPipelineError", "load_router"]


def load_router(router, model_path=None, **hub_kwargs) -> HarmoniCaRouter:
    """A router from an instance, a local folder or a hub id; ``None`` means the ``router/`` folder
    shipped inside a local pipeline folder."""
    if isinstance(router, HarmoniCaRouter):
        return router.validate()
    if router is None:
        if model_path is not None and (Path(model_path) / ROUTER_SUBFOLDER / "config.json").is_file():
            return HarmoniCaRouter.from_pretrained(Path(model_path) / ROUTER_SUBFOLDER)
        raise ValueError(
            "no router given and the pipeline folder has no router/ subfolder: pass router=<folder or hub id> "
            "or a HarmoniCaRouter"
        )
    if isinstance(router, (str, os.PathLike)):
        folder = Path(router)
        looks_local = folder.is_absolute() or str(router).startswith(".") or str(router).count("/") > 1
        if looks_local and not folder.exists():
            raise RouterError(f"no router at {folder}: the folder does not exist (give a router folder, a "
                              "training run's output folder or a hub id)")
        if not (folder / "config.json").is_file() and (folder / ROUTER_SUBFOLDER / "config.json").is_file():
            router = folder / ROUTER_SUBFOLDER  # a training run's output folder holds the router in router/
        return HarmoniCaRouter.from_pretrained(router, **hub_kwargs)
    raise TypeError(f"router must be a HarmoniCaRouter, a folder or a hub id, got {type(router).__name__}")


class HarmoniCaPipeline:
    """Loads a supported diffusers pipeline with a learned feature cache attached.

    >>> pipe = HarmoniCaPipeline.from_pretrained("facebook/DiT-XL-2-256", router="path/or/hub-id")
    >>> images = pipe(class_labels=[207, 360], num_inference_steps=20).images
    >>> harmonica.stats(pipe)   # cache usage and MACs of the last call
    """

    def __init__(self, *args, **kwargs):
        raise EnvironmentError(
            "HarmoniCaPipeline is a loader: use HarmoniCaPipeline.from_pretrained(model, router=...) or "
            "harmonica.enable(pipe, router) on a pipeline you already have"
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, router=None, threshold: float | None = None, fused: bool = True, **kwargs
    ):
        """Load ``pretrained_model_name_or_path`` with diffusers and attach ``router``.

        Args:
            pretrained_model_name_or_path: hub id or local folder of a supported diffusers pipeline.
            router: a ``HarmoniCaRouter``, a router folder or hub id; ``None`` uses ``<model>/router``.
            threshold: inference threshold in (0, 1); defaults to the router's own.
            fused: replace runs of fully reused blocks by the fused gather-apply kernel (default).
            **kwargs: passed to ``DiffusionPipeline.from_pretrained`` (``torch_dtype``, ``variant``, ...).
        """
        from diffusers import DiffusionPipeline

        from .cache import enable

        config = DiffusionPipeline.load_config(
            pretrained_model_name_or_path,
            **{k: kwargs[k] for k in ("cache_dir", "token", "revision", "local_files_only") if k in kwargs},
        )
        name = config.get("_class_name", "?")
        if name not in SUPPORTED_PIPELINES:
            raise unsupported(name)
        local = Path(pretrained_model_name_or_path) if Path(pretrained_model_name_or_path).is_dir() else None
        router = load_router(router, local)
        pipe = DiffusionPipeline.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return enable(pipe, router, threshold, fused=fused)
