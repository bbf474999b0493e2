"""The evaluation harness's pipeline-call arguments for a batch, one function per family, by family name.

``call_kwargs(pipe, conditions, guidance_scale=..., height=..., width=..., max_sequence_length=...)``
returns what the harness passes to ``pipe(...)`` for a batch whose ``conditions`` are class labels or
prompts (the family's ``conditioning``), plus what the family needs to run reproducibly offline
(resolution binning off, max_sequence_length, the unconditional prompt of true CFG, ...); arguments
it does not use arrive in ``**extra`` (``sampling.family_call_kwargs`` is the caller). A family registered
with ``harmonica.register_family`` gets the harness by registering its function under the family's name::

    register_call_kwargs("my-family", text_call_kwargs)

Image-to-video (the ``wan-i2v`` family) has none: the harness draws prompts, and such a pipeline needs an image
per sample.
"""

from __future__ import annotations

from harmonica.families.adapters import FamilyAdapters
from harmonica.families.flux import uses_true_cfg
from harmonica.families.qwenimage import NEGATIVE_PROMPT


def text_call_kwargs(pipe, conditions, height=None, width=None, max_sequence_length=None, **extra) -> dict:
    """Prompts plus what text-to-image pipelines need to run reproducibly offline."""
    kw = {"prompt": list(conditions)}
    for key, value in (("height", height), ("width", width), ("max_sequence_length", max_sequence_length)):
        if value is not None:
            kw[key] = value
    return kw


def pixart_call_kwargs(pipe, conditions, **extra) -> dict:
    return {**text_call_kwargs(pipe, conditions, **extra), "use_resolution_binning": False, "clean_caption": False}


def dit_call_kwargs(pipe, conditions, **extra) -> dict:
    return {"class_labels": [int(c) for c in conditions]}


def flux_call_kwargs(pipe, conditions, guidance_scale: float | None = None, **extra) -> dict:
    kw = text_call_kwargs(pipe, conditions, **extra)
    if guidance_scale is not None and uses_true_cfg(pipe, guidance_scale):
        kw.update(negative_prompt=[""] * len(kw["prompt"]), true_cfg_scale=guidance_scale)
    return kw


def sd3_call_kwargs(pipe, conditions, guidance_scale: float | None = None, **extra) -> dict:
    """Prompts (the second and third encoders get the same ones, as the pipeline does by default)."""
    return text_call_kwargs(pipe, conditions, **extra)


def sana_call_kwargs(pipe, conditions, guidance_scale: float | None = None, **extra) -> dict:
    return {**text_call_kwargs(pipe, conditions, **extra), "use_resolution_binning": False,
            "complex_human_instruction": None}


def video_call_kwargs(pipe, conditions, guidance_scale: float | None = None, num_frames: int | None = None,
                      **extra) -> dict:
    """Prompts and sizes, and the video length when given (Wan, LTX-Video, CogVideoX: CFG from guidance_scale)."""
    kw = text_call_kwargs(pipe, conditions, **extra)
    if num_frames is not None:
        kw["num_frames"] = num_frames
    return kw


def hunyuan_video_call_kwargs(pipe, conditions, guidance_scale: float | None = None, num_frames: int | None = None,
                              **extra) -> dict:
    """guidance_scale is HunyuanVideo's embedded (distilled) guidance; a model without the embedding runs true CFG
    with an empty negative prompt, as Flux."""
    kw = flux_call_kwargs(pipe, conditions, guidance_scale, **extra)
    if num_frames is not None:
        kw["num_frames"] = num_frames
    return kw


def qwenimage_call_kwargs(pipe, conditions, guidance_scale: float | None = None, **extra) -> dict:
    kw = text_call_kwargs(pipe, conditions, **extra)
    if guidance_scale is not None:
        if uses_true_cfg(pipe, guidance_scale):
            kw.update(negative_prompt=[NEGATIVE_PROMPT] * len(kw["prompt"]), true_cfg_scale=guidance_scale)
        elif pipe.transformer.config.guidance_embeds:
            kw["guidance_scale"] = guidance_scale
    return kw


CALL_KWARGS = FamilyAdapters("the evaluation harness", "call arguments",
                             "harmonica_bench.evaluation.call_kwargs.register_call_kwargs")
register_call_kwargs = CALL_KWARGS.register  # (family name, fn): the harness calls its pipelines with fn's arguments
call_kwargs_for = CALL_KWARGS.for_pipe  # the function registered for the family serving a pipeline


for _name, _fn in (("dit", dit_call_kwargs), ("pixart", pixart_call_kwargs), ("flux", flux_call_kwargs),
                   ("sd3", sd3_call_kwargs), ("sana", sana_call_kwargs), ("wan", video_call_kwargs),
                   ("qwenimage", qwenimage_call_kwargs), ("hunyuan-video", hunyuan_video_call_kwargs),
                   ("ltx", video_call_kwargs), ("cogvideox", video_call_kwargs)):
    register_call_kwargs(_name, _fn)
del _name, _fn
