"""Overhead of harmonica's hooks: the stock pipeline vs the same pipeline with an all-compute router.

An all-compute router runs exactly the stock computation (outputs are bit-identical), so any time
difference is the cost of the hooks themselves. Both pipelines run interleaved in one process,
after warm-up, and the ratio of median latencies is reported.

    python eval/hook_overhead.py [--pipeline pipelines/shapes-dit] [--batch 8] [--repeats 15]
"""

import argparse
import json

import torch

import harmonica
from harmonica_bench.benchmark import time_interleaved
from harmonica.cli import HelpFormatter
from harmonica_bench.embedded import DEFAULT_STEPS, EMBEDDED_PIPELINE


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pipeline", default=str(EMBEDDED_PIPELINE))
    p.add_argument("--batch", type=int, default=8, help="images per call (CFG doubles the transformer batch)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args()

    import diffusers
    from diffusers import DiTPipeline

    diffusers.utils.logging.set_verbosity_error()
    pipes = {}
    for name in ("stock", "all-compute router"):
        pipes[name] = DiTPipeline.from_pretrained(args.pipeline).to(args.device)
        pipes[name].set_progress_bar_config(disable=True)
    layout = harmonica.describe(pipes["all-compute router"])
    router = harmonica.HarmoniCaRouter.for_layout(layout, args.steps, init="compute")
    harmonica.enable(pipes["all-compute router"], router)
    labels = [i % 10 for i in range(args.batch)]

    def run(pipe):
        return lambda: pipe(labels, guidance_scale=1.5, num_inference_steps=args.steps,
                            generator=torch.Generator().manual_seed(0), output_type="latent")

    t = time_interleaved({k: run(v) for k, v in pipes.items()}, repeats=args.repeats, warmup=2,
                         device=args.device, progress=True)
    overhead = t["all-compute router"] / t["stock"] - 1
    result = {"pipeline": args.pipeline, "blocks": layout.num_blocks, "batch": args.batch, "steps": args.steps,
              "device": args.device, "threads": torch.get_num_threads(), "stock_s": t["stock"],
              "hooked_s": t["all-compute router"], "overhead": overhead}
    print(f"{layout.num_blocks}-block DiT, batch {args.batch} (CFG), {args.steps} steps on {args.device}: stock "
          f"{t['stock'] * 1e3:.1f} ms, with hooks {t['all-compute router'] * 1e3:.1f} ms -> overhead {overhead:+.2%} "
          f"(median of {args.repeats}, interleaved)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
