"""Fewer sampling steps (DDIM-k for DiT): the plainest way to spend less; no caching at all."""

from __future__ import annotations

from .base import Applied, Context, MethodSpec, PipeInfo


def apply(pipe, knob, ctx: Context) -> Applied:
    k = int(knob)
    if not 1 <= k:
        raise ValueError(f"fewer-steps needs a positive number of steps, got {knob}")
    name = type(pipe.scheduler).__name__.replace("MultistepScheduler", "").replace("Scheduler", "")
    return Applied("fewer-steps", k, f"{name}-{k}", call_overrides={"num_inference_steps": k},
                   info={"num_inference_steps": k, "reference_steps": ctx.num_inference_steps})


def default(info: PipeInfo) -> int:
    return max(1, round(info.num_inference_steps * 0.7))


def sweep(info: PipeInfo) -> list[int]:
    n = info.num_inference_steps
    return sorted({max(1, round(n * f)) for f in (0.8, 0.7, 0.6, 0.5, 0.4)} - {n}, reverse=True)


SPEC = MethodSpec(
    name="fewer-steps",
    title="fewer steps (DDIM-k)",
    knob="steps",
    kind=int,
    apply=apply,
    default=default,
    sweep=sweep,
    faster="lower",
    description="the pipeline's own scheduler run with k steps instead of the reference number",
)
