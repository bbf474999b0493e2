"""What every caching method module provides, and the pipeline facts the methods need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class PipeInfo:
    """Facts about a pipeline that knob defaults and sweeps depend on."""

    num_blocks: int
    branches: tuple[str, ...]
    num_inference_steps: int
    scheduler_class: str

    @classmethod
    def of(cls, pipe, num_inference_steps: int) -> "PipeInfo":
        from harmonica.cache import describe

        layout = describe(pipe)
        branches = tuple(dict.fromkeys(b for _, names in layout.blocks for b in names))  # every branch name, once
        return cls(layout.num_blocks, branches, int(num_inference_steps), layout.scheduler_class)


@dataclass
class Context:
    """What ``apply`` may use besides the pipeline and the knob.

    ``num_inference_steps``: the steps the evaluation runs (the reference, uncached setting).
    ``router``: a router folder or hub id (learned-router methods).
    ``calibrate``: runs one pipeline call on calibration inputs (seeds disjoint from the evaluation's),
    for methods that measure the model before caching (MagCache).
    ``fused``: methods on harmonica's cache replace fully reused blocks by the fused gather-apply.
    """

    num_inference_steps: int
    router: str | Path | None = None
    calibrate: Callable[[Any], Any] | None = None
    fused: bool = True


@dataclass
class Applied:
    """A method applied to a pipeline. ``call_overrides`` are pipeline-call arguments the method changes
    (fewer steps); ``info`` is what the method records about itself (resolved settings, calibration)."""

    method: str
    knob: Any
    label: str
    call_overrides: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """One caching method of the harness.

    ``apply(pipe, knob, ctx) -> Applied`` changes a freshly loaded (or cloned) pipeline in place.
    ``knob`` names the one number that trades speed for quality; ``default(info)`` and
    ``sweep(info)`` give its default and the values ``eval/pareto.py`` tries. ``faster`` says which
    way the knob makes the method faster ("higher" / "lower"). ``requires`` is an optional module
    the method needs (not a harmonica dependency).
    """

    name: str
    title: str
    knob: str | None
    kind: type | None
    apply: Callable
    default: Callable[[PipeInfo], Any] | None = None
    sweep: Callable[[PipeInfo], list] | None = None
    faster: str = "higher"
    needs_router: bool = False
    requires: str | None = None
    description: str = ""
