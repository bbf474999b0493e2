"""How far a router's record of the transformer weights moves under a cast, a fine-tune and a retraining.

A trained router records a summary of the weights it was trained on (harmonica.router.weights_summary);
enabling it on weights whose summary moved by more than the tolerance (distance > 1) warns. This prints
the distance for the same weights cast to fp16 / bf16 (must stay below 1), N(0, sigma) noise on every
weight (a fine-tune), every weight x1.1 and a fresh initialisation (a retrained model), and the time the
summary takes.

    python eval/weights_check.py [--pipeline pipelines/shapes-dit] [--noise 1e-3 1e-4]
"""

import argparse
import copy
import json
import time

import torch

from harmonica.cli import HelpFormatter
from harmonica_bench.embedded import EMBEDDED_PIPELINE
from harmonica.router import weights_distance, weights_summary


def variants(transformer, noise_levels, seed):
    yield "same weights (fp32)", transformer
    for dtype in ("float16", "bfloat16"):
        yield f"cast to {dtype}", copy.deepcopy(transformer).to(getattr(torch, dtype))
    for sigma in noise_levels:
        noisy = copy.deepcopy(transformer)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in noisy.parameters():
                p.add_(torch.randn(p.shape, generator=g) * sigma)
        yield f"N(0, {sigma:g}) on every weight", noisy
    scaled = copy.deepcopy(transformer)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(1.1)
    yield "every weight x1.1", scaled
    torch.manual_seed(seed)
    yield "fresh initialisation", type(transformer).from_config(transformer.config)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pipeline", default=str(EMBEDDED_PIPELINE), help="pipeline folder (its transformer/)")
    p.add_argument("--noise", type=float, nargs="+", default=[1e-3, 1e-4], help="noise levels sigma to try")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and of the fresh initialisation")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformer = diffusers.DiffusionPipeline.from_pretrained(args.pipeline).transformer
    start = time.perf_counter()
    record = weights_summary(transformer)
    seconds = time.perf_counter() - start
    params = sum(t.numel() for t in transformer.state_dict().values())
    print(f"{args.pipeline}: {params:,} weights in {len(record['stats'])} tensors; summary {seconds * 1e3:.0f} ms, "
          f"{len(json.dumps(record)):,} bytes of JSON")
    print("distance in units of the tolerance (> 1 warns)")
    rows = []
    for name, model in variants(transformer, args.noise, args.seed):
        distance, what = weights_distance(record, model)
        rows.append({"variant": name, "distance": distance, "largest_move": what})
        print(f"  {name:28s} summary {distance:9.3g}  {'warns' if distance > 1 else 'silent':6s}  largest move: {what}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"pipeline": args.pipeline, "weights": params, "summary_ms": seconds * 1e3, "rows": rows}, f,
                      indent=2)
    return rows


if __name__ == "__main__":
    main()
