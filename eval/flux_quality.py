"""Class and colour accuracy of the embedded text-to-image model at full computation.

    python eval/flux_quality.py --per_class 100 --threads 1                  # 1,000 samples, shipped settings
    python eval/flux_quality.py --pipeline runs/flux/pipeline --shift 1 --shift 3 --cfg 2 --cfg 4

Samples held-out captions (harmonica_bench.embedded.flux_eval_set) with the stock FluxPipeline, true CFG,
the shipped step count unless --steps is given; every (--shift, --cfg, --steps) combination uses the
same seed. Class accuracy from pipelines/shapes-dit/judge; colour accuracy from
harmonica_bench.judge.colour_report ("both": shape and background colour right).
"""

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from harmonica.cli import HelpFormatter
from harmonica_bench.embedded import FLUX_PIPELINE, FLUX_STEPS, FLUX_TRUE_CFG, evaluate_flux, flux_scheduler_config
from harmonica_bench.judge import ShapesJudge

REPO = Path(__file__).resolve().parent.parent


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pipeline", default=str(FLUX_PIPELINE))
    p.add_argument("--judge", default=str(REPO / "pipelines" / "shapes-dit" / "judge"))
    p.add_argument("--per_class", type=int, default=20)
    p.add_argument("--shift", type=float, action="append", default=None, help="default: the pipeline's scheduler")
    p.add_argument("--cfg", type=float, action="append", default=None, help=f"true CFG scale (default {FLUX_TRUE_CFG})")
    p.add_argument("--steps", type=int, action="append", default=None, help=f"default {FLUX_STEPS}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON lines file to append the results to")
    p.add_argument("--grid", default=None, help="PNG grid of the first combination's samples")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = FluxPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    judge = ShapesJudge.from_pretrained(args.judge).eval()
    grid = itertools.product(args.shift or [pipe.scheduler.config.shift], args.cfg or [FLUX_TRUE_CFG],
                             args.steps or [FLUX_STEPS])
    for i, (shift, cfg, steps) in enumerate(grid):
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(**flux_scheduler_config(shift))
        t0 = time.time()
        with torch.no_grad():
            report = evaluate_flux(pipe, judge, per_class=args.per_class, seed=args.seed,
                                   out_png=args.grid if i == 0 else None, num_inference_steps=steps,
                                   true_cfg_scale=cfg)
        report.update(pipeline=args.pipeline, shift=shift, true_cfg_scale=cfg, steps=steps,
                      seconds=round(time.time() - t0, 1))
        print(json.dumps(report), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
