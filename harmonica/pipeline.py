"""Pipeline glue: ``HarmoniCaPipeline.from_pretrained`` loads a stock diffusers pipeline and attaches a router.

What comes back *is* the diffusers pipeline (``DiTPipeline``, ``FluxPipeline``, ...; see
``harmonica.families``), with the same call signature, ``to()``, ``save_pretrained()`` and so on;
harmonica lives in the hooks on its transformer (``harmonica.controller(pipe)``: router, threshold).
``save_pretrained`` of a pipeline harmonica is enabled on also writes the router into ``<folder>/router``
(``keep_router_on_save``), so that ``HarmoniCaPipeline.from_pretrained(folder)`` loads it back; diffusers
itself ignores that folder.
"""

from __future__ import annotations

import copy
import os
import weakref
from pathlib import Path

from .families import SUPPORTED_PIPELINES, UnsupportedPipelineError, unsupported
from .router import ROUTERS, HarmoniCaRouter, RouterError

ROUTER_SUBFOLDER = "router"

__all__ = ["SUPPORTED_PIPELINES", "HarmoniCaPipeline", "UnsupportedPipelineError", "dtype_kwargs", "keep_router_on_save",
           "load_router"]


def dtype_kwargs(dtype) -> dict:
    """The ``from_pretrained`` keyword that loads diffusers weights in ``dtype``: ``dtype`` from diffusers 0.40 on
    (where ``torch_dtype`` is deprecated and warns a FutureWarning), ``torch_dtype`` before (which has no
    ``dtype`` and would ignore it). ``{}`` for None."""
    if dtype is None:
        return {}
    import diffusers
    from packaging.version import Version

    return {"dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype": dtype}


def _local_reason(spec) -> str | None:
    """Why ``spec`` (a router argument that is not an existing path) names a local folder rather than a hub
    id, or None when it has the shape of a hub id ("name" or "owner/name")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = os.fspath(spec)
    if isinstance(spec, os.PathLike):
        return "it was given as a path object"
    if text.startswith(("/", "~", ".")) or "\\" in text or Path(text).is_absolute():
        return "it starts like a path (/, ~, ./, ../)"
    if text.count("/") > 1 or os.sep != "/" and os.sep in text:
        return "it has more than one path separator (a hub id is name or owner/name)"
    try:
        validate_repo_id(text)
    except HFValidationError:
        return "it is not a valid hub id"
    head = text.split("/")[0]
    if "/" in text and Path(head).is_dir():
        return f"{head}/ is a folder here"
    return None


def _load_hub_router(repo_id: str, **hub_kwargs) -> HarmoniCaRouter:
    """A router from the hub, refused at once (no retries) when the hub cannot be asked and the local
    cache does not have it."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    taken = f"{repo_id!r} is not a folder here (working directory {Path.cwd()}), so it was taken for a hub id"
    offline = None
    if constants.HF_HUB_OFFLINE:
        offline = "the hub is off (HF_HUB_OFFLINE=1)"
    elif not hub_kwargs.get("local_files_only"):
        try:  # one request, no retries: huggingface_hub would retry an unreachable hub for ~25 s
            url = hf_hub_url(repo_id, "config.json", revision=hub_kwargs.get("revision"), endpoint=constants.ENDPOINT)
            get_hf_file_metadata(url, token=hub_kwargs.get("token"), timeout=constants.HF_HUB_ETAG_TIMEOUT)
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
            raise RouterError(f"{taken}, and the hub has no router there ({type(err).__name__}). Give a router "
                              "folder, a training run's output folder or the hub id of a router.") from None
        except HfHubHTTPError as err:
            raise RouterError(f"{taken}, and the hub refused it: {err}") from None
        except Exception as err:  # connection refused, unknown host, timeout, offline mode
            offline = f"the hub cannot be reached ({type(err).__name__}: {err})"
    if offline:
        hub_kwargs = {**hub_kwargs, "local_files_only": True}  # a copy in the local cache still serves
    try:
        return HarmoniCaRouter.from_pretrained(repo_id, **hub_kwargs)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        why = offline or f"it is not in the local cache ({type(err).__name__})"
        raise RouterError(
            f"{taken}, which could not be fetched: {why}, and the local cache does not have it. Give the path of an "
            "existing router folder, or fetch the router while online (huggingface_hub.snapshot_download)."
        ) from None


def load_router(router, model_path=None, **hub_kwargs) -> HarmoniCaRouter:
    """A router from an instance, a local folder or a hub id; ``None`` means the ``router/`` folder
    shipped inside a local pipeline folder.

    A string or path that exists here is a local folder (a training run's output folder holds its router in
    ``router/``). One that does not exist is still taken for a local folder, and refused at once as missing,
    when it is a path object, starts with ``/``, ``~`` or ``.`` (``./``, ``../``), has more than one path
    separator, is not a valid hub id, or is ``a/b`` with an existing folder ``a/`` (``runs/typo`` in a
    checkout with ``runs/``). Anything else (``name`` or ``owner/name``) is a hub id: when the hub is
    offline (HF_HUB_OFFLINE=1) or cannot be reached, and the local cache does not have it, a RouterError
    says so at once instead of retrying.
    """
    if isinstance(router, ROUTERS):
        return router.validate()
    if router is None:
        if model_path is not None and (Path(model_path) / ROUTER_SUBFOLDER / "config.json").is_file():
            return HarmoniCaRouter.from_pretrained(Path(model_path) / ROUTER_SUBFOLDER)
        raise ValueError(
            "no router given and the pipeline folder has no router/ subfolder: pass router=<folder or hub id> "
            "or a HarmoniCaRouter"
        )
    if isinstance(router, (str, os.PathLike)):
        folder = Path(router).expanduser()
        if not folder.exists():
            reason = _local_reason(router)
            if reason is None:
                return _load_hub_router(os.fspath(router), **hub_kwargs)
            raise RouterError(f"no router at {router}: the folder does not exist ({folder.absolute()}); it was taken "
                              f"for a local folder because {reason}. Give a router folder, a training run's output "
                              "folder or a hub id (owner/name)")
        if not (folder / "config.json").is_file() and (folder / ROUTER_SUBFOLDER / "config.json").is_file():
            folder = folder / ROUTER_SUBFOLDER  # a training run's output folder holds the router in router/
        return HarmoniCaRouter.from_pretrained(folder, **hub_kwargs)
    raise TypeError(f"router must be a HarmoniCaRouter, a folder or a hub id, got {type(router).__name__}")


def keep_router_on_save(pipe) -> None:
    """Make ``pipe.save_pretrained(folder, ...)`` also save the router harmonica runs on ``pipe`` into
    ``folder/router``, with the threshold in use (so that ``HarmoniCaPipeline.from_pretrained(folder)`` runs
    as ``pipe`` does). The router is written first, so that ``push_to_hub=True`` uploads it too. Nothing else
    in the folder changes: ``model_index.json`` does not list ``router/`` and diffusers' own ``from_pretrained``
    ignores it. Installed on the pipeline instance by ``harmonica.enable`` and removed by ``harmonica.disable``
    (``forget_router_on_save``); a pipeline made later from the same components (``from_pipe``) saves as stock
    diffusers does."""
    if getattr(pipe.__dict__.get("save_pretrained"), "_harmonica_replaced", None) is not None:
        return
    replaced = pipe.__dict__.get("save_pretrained")  # an instance-level save_pretrained someone else installed
    stock = type(pipe).save_pretrained
    pipe_ref = weakref.ref(pipe)  # the pipeline holds this function: no reference cycle

    def save_pretrained(save_directory, *args, **kwargs):
        from .cache import controller

        pipe = pipe_ref()
        found = controller(pipe)
        if found is not None:
            router = copy.deepcopy(found.router)
            router.threshold = found.threshold
            router.save_pretrained(Path(save_directory) / ROUTER_SUBFOLDER)
        save = replaced if replaced is not None else stock.__get__(pipe)
        return save(save_directory, *args, **kwargs)

    save_pretrained.__doc__ = (f"{type(pipe).__name__}.save_pretrained, which also saves harmonica's router into "
                               f"<save_directory>/{ROUTER_SUBFOLDER} (harmonica.pipeline.keep_router_on_save).")
    save_pretrained._harmonica_replaced = replaced or False
    pipe.__dict__["save_pretrained"] = save_pretrained


def forget_router_on_save(pipe) -> None:
    """Undo ``keep_router_on_save``: ``pipe.save_pretrained`` is again what it was."""
    installed = pipe.__dict__.get("save_pretrained")
    replaced = getattr(installed, "_harmonica_replaced", None)
    if replaced is None:
        return
    if replaced:
        pipe.__dict__["save_pretrained"] = replaced
    else:
        del pipe.__dict__["save_pretrained"]


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
        cls, pretrained_model_name_or_path, router=None, threshold: float | None = None, fused: bool = True, *,
        speedup: float | None = None, max_cache_memory: int | str | None = None, cache_dtype=None, cache_device=None,
        **kwargs
    ):
        """Load ``pretrained_model_name_or_path`` with diffusers and attach ``router``.

        Args:
            pretrained_model_name_or_path: hub id or local folder of a supported diffusers pipeline.
            router: a ``HarmoniCaRouter``, a router folder or hub id; ``None`` uses ``<model>/router``.
            threshold: inference threshold in (0, 1); defaults to the router's own.
            fused: replace runs of fully reused blocks by the fused gather-apply kernel (default).
            speedup, max_cache_memory, cache_dtype, cache_device: as ``harmonica.enable`` takes them.
            **kwargs: passed to ``DiffusionPipeline.from_pretrained`` (``dtype``, ``variant``, ...); ``dtype`` is
                passed as ``torch_dtype`` to a diffusers older than 0.40 (``dtype_kwargs``).
        """
        from diffusers import DiffusionPipeline

        from .cache import HarmoniCaConfig, enable

        config = DiffusionPipeline.load_config(
            pretrained_model_name_or_path,
            **{k: kwargs[k] for k in ("cache_dir", "token", "revision", "local_files_only") if k in kwargs},
        )
        name = config.get("_class_name", "?")
        if name not in SUPPORTED_PIPELINES:
            raise unsupported(name)
        local = Path(pretrained_model_name_or_path) if Path(pretrained_model_name_or_path).is_dir() else None
        options = (threshold, fused, speedup, max_cache_memory, cache_dtype, cache_device)
        HarmoniCaConfig(router or "", *options)  # checks every option before anything is loaded
        router = load_router(router, local)
        kwargs.update(dtype_kwargs(kwargs.pop("dtype", None)))
        pipe = DiffusionPipeline.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return enable(pipe, router, *options)
