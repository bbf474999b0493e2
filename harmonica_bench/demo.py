"""`make demo`: an embedded pipeline with and without harmonica, side by side.

Generates the same conditions and seeds with the stock pipeline and with harmonica, writes a
side-by-side PNG grid and the router's heatmap, and prints latency, speedup and cache usage.
``--model dit`` (default, `make demo`): the class-conditional shapes DiT (DiTPipeline); ``--model
flux`` (`make demo-flux`): the text-to-image Flux-style model (FluxPipeline, true CFG), one held-out
caption per image, or your own captions (``--prompt``, repeatable). That model knows only a small
vocabulary (shapes, colours, trained colour pairs): ``--vocabulary`` prints it, and a caption outside
it is named in a warning.

    python -m harmonica_bench.demo [--model dit|flux] [--out outputs/demo] [--per_class 2] [--repeats 3]
    python -m harmonica_bench.demo --model flux --prompt "a small red star on a white background"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import harmonica
from harmonica_bench.benchmark import time_interleaved
from harmonica.cli import HelpFormatter
from harmonica_bench.embedded import (DEFAULT_GUIDANCE, DEFAULT_STEPS, EMBEDDED_PIPELINE, FLUX_PIPELINE,
                                      check_flux_captions, flux_call_kwargs, format_flux_vocabulary, is_embedded_flux)
from harmonica.router import HarmoniCaRouter
from harmonica_bench.viz import save_image_grid, save_router_heatmap


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="dit", choices=["dit", "flux"], help="which embedded model")
    p.add_argument("--pipeline", default=None, help=f"pipeline folder or hub id (with --model flux: {FLUX_PIPELINE}) "
                   f"(default: {EMBEDDED_PIPELINE})")
    p.add_argument("--router", default=None, help="router folder or hub id (default: the one shipped beside the pipeline)")
    p.add_argument("--threshold", type=float, default=None, help="inference threshold (default: the router's)")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--per_class", type=int, default=2, help="images per class (per caption with --prompt)")
    p.add_argument("--prompt", action="append", default=None,
                   help="with --model flux: a caption to draw instead of the held-out ones (repeatable) (default: one "
                        "held-out caption per class)")
    p.add_argument("--vocabulary", action="store_true",
                   help="print the captions the embedded Flux model knows (shapes, colours, trained colour pairs) "
                        "and exit")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--guidance_scale", type=float, default=None,
                   help=f"CFG (dit, default {DEFAULT_GUIDANCE}) or true CFG (flux, default: its shipped scale)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each pipeline (after one warm-up)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.vocabulary:
        print(format_flux_vocabulary())
        return None
    if args.prompt and args.model != "flux":
        p.error("--prompt needs --model flux (the DiT draws class labels)")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    import diffusers
    from diffusers import DiffusionPipeline

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    pipeline = Path(args.pipeline or (EMBEDDED_PIPELINE if args.model == "dit" else FLUX_PIPELINE))
    if not (pipeline / "model_index.json").is_file():
        raise SystemExit(f"no pipeline at {pipeline}: the embedded {args.model} model is not trained yet "
                         f"(see {pipeline / 'TRAINING.md'})")
    stock = DiffusionPipeline.from_pretrained(pipeline)
    stock.set_progress_bar_config(disable=True)
    fast = DiffusionPipeline.from_pretrained(pipeline)
    fast.set_progress_bar_config(disable=True)
    router_path = args.router or (pipeline / "router" if (pipeline / "router").is_dir() else None)
    if router_path is not None:
        router = HarmoniCaRouter.from_pretrained(router_path)
        source = str(router_path)
    else:
        router = HarmoniCaRouter.static(harmonica.describe(fast), args.steps, compute_every=2)
        source = "static every-other-step router (no trained router shipped yet)"
    harmonica.enable(fast, router, threshold=args.threshold)

    num_rows = len(args.prompt) if args.prompt else 10  # one row per class, or per caption
    if args.model == "dit":
        conditions = [c for c in range(num_rows) for _ in range(args.per_class)]
        call = dict(class_labels=conditions, guidance_scale=args.guidance_scale or DEFAULT_GUIDANCE,
                    num_inference_steps=args.steps)
        what = f"{args.steps} DDIM steps, CFG {call['guidance_scale']}"
    else:
        from harmonica_bench.embedded import flux_eval_set

        if args.prompt:
            conditions = [caption for caption in args.prompt for _ in range(args.per_class)]
            if is_embedded_flux(pipeline):
                check_flux_captions(args.prompt)
        else:
            conditions = flux_eval_set(args.per_class)[0]  # captions, class by class
        call = dict(prompt=conditions, **flux_call_kwargs(len(conditions), num_inference_steps=args.steps))
        if args.guidance_scale is not None:
            call["true_cfg_scale"] = args.guidance_scale
        what = f"{args.steps} Euler steps, true CFG {call['true_cfg_scale']}, e.g. {conditions[0]!r}"

    def run(pipe):
        return pipe(**call, generator=torch.Generator().manual_seed(args.seed), output_type="pt").images

    images = {"stock": run(stock), "harmonica": run(fast)}
    latency = time_interleaved({"stock": lambda: run(stock), "harmonica": lambda: run(fast)}, repeats=args.repeats,
                               warmup=0)
    stats = harmonica.stats(fast)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in range(num_rows):
        rows.append(torch.cat([images["stock"][c * args.per_class:(c + 1) * args.per_class],
                               torch.ones_like(images["stock"][:1]),
                               images["harmonica"][c * args.per_class:(c + 1) * args.per_class]]))
    grid = save_image_grid(torch.stack(rows), out / "side_by_side.png", scale=3)
    heat = save_router_heatmap(router, out / "router_heatmap.png", threshold=harmonica.controller(fast).threshold)
    diff = (images["stock"] - images["harmonica"]).abs()
    speedup = latency["stock"] / latency["harmonica"]
    print(f"pipeline   {pipeline} ({len(conditions)} images, {what})")
    print(f"router     {source}, threshold {harmonica.controller(fast).threshold:.4g}")
    print(f"latency    stock {latency['stock']:.2f} s, harmonica {latency['harmonica']:.2f} s "
          f"(median of {args.repeats}, interleaved) -> speedup {speedup:.2f}x")
    print(f"cache      usage {stats.cache_usage:.1%}, transformer MACs {stats.macs_speedup:.2f}x fewer, "
          f"{stats.cache_bytes / 2**20:.1f} MiB held")
    print(f"images     mean |stock - harmonica| {diff.mean().item():.4f} (pixels in [0, 1])")
    print(f"wrote      {grid} (left: stock, right: harmonica) and {heat}")
    return {"latency": latency, "speedup": speedup, "stats": stats}


if __name__ == "__main__":
    main()
