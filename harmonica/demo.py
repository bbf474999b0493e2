"""`make demo`: the embedded pipeline with and without harmonica, side by side.

Generates the same class labels and seeds with the stock DiTPipeline and with harmonica, writes a
side-by-side PNG grid and the router's heatmap, and prints latency, speedup and cache usage.

    python -m harmonica.demo [--out outputs/demo] [--per_class 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import harmonica
from harmonica.benchmark import time_interleaved
from harmonica.cli import HelpFormatter
from harmonica.embedded import DEFAULT_GUIDANCE, DEFAULT_STEPS, EMBEDDED_PIPELINE, EMBEDDED_ROUTER
from harmonica.router import HarmoniCaRouter
from harmonica.viz import save_image_grid, save_router_heatmap


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pipeline", default=str(EMBEDDED_PIPELINE), help="DiTPipeline folder or hub id")
    p.add_argument("--router", default=None, help="router folder or hub id (default: the one shipped beside the pipeline)")
    p.add_argument("--threshold", type=float, default=None, help="inference threshold (default: the router's)")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--per_class", type=int, default=2, help="images per class")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each pipeline (after one warm-up)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    import diffusers
    from diffusers import DiTPipeline

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    stock = DiTPipeline.from_pretrained(args.pipeline)
    stock.set_progress_bar_config(disable=True)
    fast = DiTPipeline.from_pretrained(args.pipeline)
    fast.set_progress_bar_config(disable=True)
    router_path = args.router or (EMBEDDED_ROUTER if (Path(args.pipeline) / "router").is_dir() else None)
    if router_path is not None:
        router = HarmoniCaRouter.from_pretrained(router_path)
        source = str(router_path)
    else:
        router = HarmoniCaRouter.static(harmonica.describe(fast), args.steps, compute_every=2)
        source = "static every-other-step router (no trained router shipped yet)"
    harmonica.enable(fast, router, threshold=args.threshold)

    num_classes = len(stock.labels) or 10
    labels = [c for c in range(num_classes) for _ in range(args.per_class)]

    def run(pipe):
        return pipe(labels, guidance_scale=args.guidance_scale, num_inference_steps=args.steps,
                    generator=torch.Generator().manual_seed(args.seed), output_type="pt").images

    images = {"stock": run(stock), "harmonica": run(fast)}
    latency = time_interleaved({"stock": lambda: run(stock), "harmonica": lambda: run(fast)}, repeats=args.repeats,
                               warmup=0)
    stats = harmonica.stats(fast)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in range(num_classes):
        rows.append(torch.cat([images["stock"][c * args.per_class:(c + 1) * args.per_class],
                               torch.ones_like(images["stock"][:1]),
                               images["harmonica"][c * args.per_class:(c + 1) * args.per_class]]))
    grid = save_image_grid(torch.stack(rows), out / "side_by_side.png", scale=3)
    heat = save_router_heatmap(router, out / "router_heatmap.png", threshold=harmonica.controller(fast).threshold)
    diff = (images["stock"] - images["harmonica"]).abs()
    speedup = latency["stock"] / latency["harmonica"]
    print(f"pipeline   {args.pipeline} ({len(labels)} images, {args.steps} DDIM steps, CFG {args.guidance_scale})")
    print(f"router     {source}, threshold {harmonica.controller(fast).threshold:.4g}")
    print(f"latency    stock {latency['stock']:.2f} s, harmonica {latency['harmonica']:.2f} s "
          f"(median of {args.repeats}, interleaved) -> speedup {speedup:.2f}x")
    print(f"cache      usage {stats.cache_usage:.1%}, transformer MACs {stats.macs_speedup:.2f}x fewer")
    print(f"images     mean |stock - harmonica| {diff.mean().item():.4f} (pixels in [0, 1])")
    print(f"wrote      {grid} (left: stock, right: harmonica) and {heat}")
    return {"latency": latency, "speedup": speedup, "stats": stats}


if __name__ == "__main__":
    main()
