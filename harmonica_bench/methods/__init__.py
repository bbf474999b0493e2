"""Caching methods of the evaluation harness, one small module each, behind one interface.

>>> from harmonica_bench import methods
>>> fast = methods.clone_pipeline(pipe)                  # shares weights, own modules and scheduler
>>> applied = methods.apply_method(fast, "fora", 2, num_inference_steps=20)
>>> fast(..., num_inference_steps=20, **applied.call_overrides)

``METHODS`` maps each name to its ``MethodSpec`` (knob name, default, sweep). Method strings on the
command line are ``NAME``, ``NAME=KNOB`` or ``NAME=K1,K2,...`` (a sweep), optionally followed by
``@ROUTER_DIR`` for the learned-router methods, e.g. ``harmonica=0.1@runs/router``.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from . import dbcache, delta_dit, fbcache, fewer_steps, fora, magcache, pab, routers, taylorseer
from .base import Applied, Context, MethodSpec, PipeInfo
from .steps import StepTracker

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(name="none", title="no caching", knob=None, kind=None,
                   apply=lambda pipe, knob, ctx: Applied("none", None, "no caching"),
                   description="the stock pipeline"),
        fewer_steps.SPEC,
        fora.SPEC,
        delta_dit.SPEC,
        fbcache.SPEC,
        taylorseer.SPEC,
        taylorseer.SPEC_ORDER2,
        pab.SPEC,
        magcache.SPEC,
        dbcache.SPEC,
        dbcache.SPEC_TAYLORSEER,
        routers.LTC,
        routers.HARMONICA,
    )
}


def available(name: str) -> tuple[bool, str]:
    """Whether method ``name`` can run here (its optional package is installed)."""
    spec = get(name)
    if spec.requires and importlib.util.find_spec(spec.requires) is None:
        return False, f"{name} needs the optional package {spec.requires!r} (pip install cache-dit --no-deps)"
    return True, ""


def get(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


@dataclass
class MethodRequest:
    """A parsed method string: name, knob values (empty: the default) and router folder."""

    name: str
    knobs: list
    router: str | None = None
    fused: bool = True  # harmonica-cache methods: fused gather-apply of fully reused blocks (kernel on)

    @property
    def series(self) -> str:
        folder = None if self.router is None else Path(self.router)
        if folder is not None and folder.name == "router" and folder.parent.name:
            folder = folder.parent  # runs/router-2x/router (a training run's output) reads as router-2x
        base = self.name if folder is None else f"{self.name}@{folder.name}"
        return base if self.fused else f"{base} (kernel off)"


def parse_method(text: str) -> MethodRequest:
    """Parse ``NAME[=KNOB[,KNOB...]][@ROUTER_DIR]``."""
    head, _, router = text.partition("@")
    name, _, knobs = head.partition("=")
    spec = get(name.strip())
    values = []
    if knobs.strip():
        if spec.kind is None:
            raise ValueError(f"method {spec.name} has no knob, got {text!r}")
        for k in knobs.split(","):
            try:
                values.append(spec.kind(float(k)) if spec.kind is int else spec.kind(k))
            except ValueError:
                raise ValueError(f"{spec.knob} of {spec.name} must be a {spec.kind.__name__}, got {k!r}") from None
    if router and not spec.needs_router:
        raise ValueError(f"method {spec.name} takes no router folder, got {text!r}")
    return MethodRequest(spec.name, values, router.strip() or None)


def knob_values(request: MethodRequest, info: PipeInfo, sweep: bool = False) -> list:
    """The knob values to run: the request's own, else the sweep (``sweep=True``) or the default."""
    spec = get(request.name)
    if request.knobs:
        return list(request.knobs)
    if spec.knob is None:
        return [None]
    if sweep and spec.sweep is not None:
        return list(spec.sweep(info))
    return [spec.default(info) if spec.default is not None else None]


def clone_pipeline(pipe):
    """A pipeline that shares every weight tensor with ``pipe`` but has its own transformer module
    objects (so hooks attach to it alone) and its own scheduler. Clone before applying any method."""
    transformer = pipe.transformer
    # an empty registry is left by diffusers' cache_context (CacheMixin pipelines set it every step)
    if any(m.__dict__.get("_diffusers_hook") is not None and m._diffusers_hook.hooks for m in transformer.modules()):
        raise RuntimeError("clone the pipeline before applying a caching method to it")
    memo = {id(t): t for t in list(transformer.parameters()) + list(transformer.buffers())}
    components = dict(pipe.components)
    components["transformer"] = copy.deepcopy(transformer, memo)
    components["scheduler"] = type(pipe.scheduler).from_config(pipe.scheduler.config)
    clone = type(pipe)(**{k: v for k, v in components.items() if k in _init_params(type(pipe))})
    for key in ("labels",):
        if key in pipe.__dict__:
            clone.__dict__[key] = pipe.__dict__[key]
    clone.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return clone


def _init_params(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def apply_method(pipe, name: str, knob=None, *, num_inference_steps: int, router=None, calibrate=None,
                 fused: bool = True) -> Applied:
    """Apply method ``name`` with ``knob`` (None: its default) to ``pipe`` in place and return what
    was applied. ``pipe`` must be fresh: loaded or cloned, with no method on it yet."""
    spec = get(name)
    ok, why = available(name)
    if not ok:
        raise RuntimeError(why)
    ctx = Context(num_inference_steps=int(num_inference_steps), router=router, calibrate=calibrate, fused=fused)
    if knob is None and spec.default is not None:
        knob = spec.default(PipeInfo.of(pipe, num_inference_steps))
    applied = spec.apply(pipe, knob, ctx)
    applied.info.setdefault("knob_name", spec.knob)
    return applied


__all__ = [
    "METHODS",
    "Applied",
    "Context",
    "MethodRequest",
    "MethodSpec",
    "PipeInfo",
    "StepTracker",
    "apply_method",
    "available",
    "clone_pipeline",
    "get",
    "knob_values",
    "parse_method",
]
