"""Peak memory of router training (SDT) at different step counts: it must not grow with the steps.

Runs train/train_router.py in a fresh process per step count (one trajectory each, so the peak is
the training's own) and prints the peak memory each reported.

    python eval/router_memory.py [--pipeline pipelines/shapes-dit] [--steps 10 50] [--batch_size 16]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from harmonica.cli import HelpFormatter
from harmonica_bench.embedded import EMBEDDED_PIPELINE

REPO = Path(__file__).resolve().parent.parent


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pipeline", default=str(EMBEDDED_PIPELINE))
    p.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    results = {}
    for steps in args.steps:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, str(REPO / "train" / "train_router.py"), "--pipeline", args.pipeline,
                   "--num_steps", str(steps), "--trajectories", "1", "--batch_size", str(args.batch_size),
                   "--lambda_every", "1000000", "--output_dir", out]
            subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
            summary = json.loads((Path(out) / "summary.json").read_text())
        results[steps] = summary["peak_memory_mb"]
        print(f"{steps:3d} steps: peak memory {summary['peak_memory_mb']:.0f} MB "
              f"({summary['iterations']} optimizer steps, batch {args.batch_size})")
    if args.json:
        Path(args.json).write_text(json.dumps({"pipeline": args.pipeline, "batch_size": args.batch_size,
                                               "peak_memory_mb": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
