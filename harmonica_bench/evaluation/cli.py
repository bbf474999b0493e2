"""Command-line arguments shared by the eval scripts, and the method entries they run."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import methods
from ..shapes import SHAPES
from .sampling import SamplingSetup, setup_for


def add_pipeline_args(p, default_steps: int = 20, default_batch: int = 16) -> None:
    """Arguments shared by the eval scripts: pipeline, sampling setup, device."""
    from ..embedded import DEFAULT_GUIDANCE, EMBEDDED_PIPELINE

    g = p.add_argument_group("pipeline and sampling (a pipeline folder's harness.json gives its own defaults)")
    g.add_argument("--pipeline", default=str(EMBEDDED_PIPELINE),
                   help="diffusers pipeline folder or hub id of a supported family (default: the embedded shapes DiT; "
                        "the embedded Flux-style model is harmonica_bench.embedded.FLUX_PIPELINE)")
    g.add_argument("--steps", type=int, default=None, help=f"reference number of sampling steps (else {default_steps})")
    g.add_argument("--guidance_scale", type=float, default=None,
                   help=f"classifier-free guidance (true CFG where the family runs it; else {DEFAULT_GUIDANCE})")
    g.add_argument("--batch_size", type=int, default=default_batch)
    g.add_argument("--seed", type=int, default=0, help="sample i uses noise seed SEED + i")
    g.add_argument("--num_classes", type=int, default=None,
                   help="DiT: classes to cycle through (default: the pipeline's id2label size, else 1000)")
    g.add_argument("--prompts", default=None,
                   help="text-to-image: a text file, one prompt per line, cycled through; or 'shapes' (held-out "
                        "captioned shapes, with their classes and colours for the judges)")
    g.add_argument("--height", type=int, default=None, help="text-to-image: image height")
    g.add_argument("--width", type=int, default=None, help="text-to-image: image width")
    g.add_argument("--max_sequence_length", type=int, default=None, help="text-to-image: prompt token budget")
    g.add_argument("--scheduler", default=None,
                   help="a diffusers scheduler class to sample with, built from the pipeline's scheduler config "
                        "(e.g. DPMSolverMultistepScheduler; default: the pipeline's own)")
    g.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])


def add_error_bar_args(p) -> None:
    """Seed sets and bootstrap (``stats.py``): every quality figure with its spread."""
    g = p.add_argument_group("error bars")
    g.add_argument("--seed_sets", type=int, default=1,
                   help="evaluate every point on K disjoint seed sets (set j: noise seeds SEED + j*10,000,000 + i, "
                        "labels as set 0); figures are means over the sets with their std (3 or more recommended)")
    g.add_argument("--bootstrap", type=int, default=1000,
                   help="resamples of the sample indices, shared by all methods (paired), for 95%% intervals of "
                        "FD / KID / class accuracy / PSNR / SSIM and of differences between methods; 0: off")
    g.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the bootstrap resamples")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


HARNESS_FILE = "harness.json"  # a pipeline folder's own sampling defaults (guidance, size, prompts, ...)
HARNESS_KEYS = ("steps", "guidance_scale", "prompts", "height", "width", "max_sequence_length")


def harness_defaults(pipeline) -> dict:
    """``<pipeline>/harness.json`` of a local pipeline folder (the embedded Flux model ships one), else {}."""
    import json

    path = Path(str(pipeline)) / HARNESS_FILE
    if not path.is_file():
        return {}
    found = json.loads(path.read_text())
    unknown = sorted(set(found) - set(HARNESS_KEYS))
    if unknown:
        raise ValueError(f"{path} has unknown keys {unknown}; known: {', '.join(HARNESS_KEYS)}")
    return found


def load_prompts(spec: str) -> tuple[list[str], list[int] | None, list | None]:
    """Prompts (and, for 'shapes', the class and colours of each) from --prompts."""
    if SHAPES.matches(spec):
        return SHAPES.heldout_captions(per_class=100)
    return [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()], None, None


def setup_from_args(args, pipe) -> SamplingSetup:
    """The sampling setup: flags first, then the pipeline folder's harness.json, then the defaults."""
    from ..embedded import DEFAULT_GUIDANCE, DEFAULT_STEPS, check_flux_captions, is_embedded_flux

    own = harness_defaults(args.pipeline)
    value = {k: getattr(args, k, None) if getattr(args, k, None) is not None else own.get(k) for k in HARNESS_KEYS}
    prompts = labels = colours = None
    if value["prompts"]:
        prompts, labels, colours = load_prompts(value["prompts"])
        if is_embedded_flux(args.pipeline) and not SHAPES.matches(value["prompts"]):
            check_flux_captions(prompts)
    setup = setup_for(pipe, value["steps"] or DEFAULT_STEPS, value["guidance_scale"] or DEFAULT_GUIDANCE,
                      seed=args.seed, batch_size=args.batch_size, prompts=prompts, num_classes=args.num_classes,
                      height=value["height"], width=value["width"])
    setup.max_sequence_length = value["max_sequence_length"]
    setup.prompt_labels, setup.prompt_colours = labels, colours
    return setup


def method_entries(specs: list[str], pipe, setup: SamplingSetup, sweep: bool = False, skip_unavailable: bool = True,
                   pipeline_path=None, log=print) -> list[tuple[methods.MethodRequest, object]]:
    """(request, knob) pairs for method strings; unavailable optional methods are skipped with a note.
    ``harmonica`` without a router folder uses ``<pipeline>/router`` when the pipeline ships one."""
    info = methods.PipeInfo.of(pipe, setup.num_inference_steps)
    entries = []
    for text in specs:
        request = methods.parse_method(text)
        ok, why = methods.available(request.name)
        if not ok:
            if skip_unavailable:
                log(f"skipping {request.name}: {why}")
                continue
            raise RuntimeError(why)
        if methods.get(request.name).needs_router and request.router is None:
            shipped = Path(pipeline_path) / "router" if pipeline_path is not None else None
            if request.name == "harmonica" and shipped is not None and (shipped / "config.json").is_file():
                request.router = str(shipped)
            else:
                raise ValueError(f"{request.name} needs a router folder: '{request.name}@ROUTER_DIR'")
        for knob in methods.knob_values(request, info, sweep=sweep):
            entries.append((request, knob))
    return entries


KERNEL_METHODS = ("harmonica", "ltc", "fora")  # the methods that run on harmonica's own cache


def with_kernel_setting(entries, kernel: str):
    """Entries with the fused kernel "on", "off", or "both" (each harmonica-cache entry twice)."""
    import dataclasses

    out = []
    for request, knob in entries:
        if request.name not in KERNEL_METHODS:
            out.append((request, knob))
            continue
        if kernel in ("on", "both"):
            out.append((dataclasses.replace(request, fused=True), knob))
        if kernel in ("off", "both"):
            out.append((dataclasses.replace(request, fused=False), knob))
    return out


def default_method_specs(pipeline_path=None, include_routers: bool = True) -> list[str]:
    """Every method that runs here without extra input, plus HarmoniCa with the router shipped in
    ``<pipeline>/router`` when there is one."""
    shipped = Path(pipeline_path) / "router" if pipeline_path is not None else None
    specs = []
    for name, spec in methods.METHODS.items():
        if name == "none" or not methods.available(name)[0]:
            continue
        if spec.needs_router:
            if include_routers and name == "harmonica" and shipped is not None and (shipped / "config.json").is_file():
                specs.append(f"harmonica@{shipped}")
            continue
        specs.append(name)
    return specs
